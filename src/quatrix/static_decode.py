"""The static-shape decode step: a prefilled `quatrix.engine.Cache` seen through fixed
shapes (`StaticCache`), and `decode_step`, which runs it eagerly or compiled with
`torch.compile` (docs/design.md §3). Kept apart from the engine's growing cache, which it
wraps without importing."""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor


class StaticLayerCache:
    """One layer of a StaticCache: writes the step's token at the slot tensor, returns every slot."""

    def __init__(self, layer, slot: Tensor):
        self.keys, self.contents, self.slot = layer.keys, layer.contents, slot

    def append(self, keys: Tensor, contents: Tensor) -> tuple[Tensor, Tensor]:
        self.keys.index_copy_(2, self.slot, keys)
        self.contents.index_copy_(2, self.slot, contents)
        return self.keys, self.contents


class StaticCache:
    """A prefilled Cache seen through fixed shapes, for a compiled decode step (a
    quatrix.cache.ModelCache taking one token per row and step).

    The dynamic Cache hands each step views of the slots filled so far, so every step has new
    shapes and torch.compile would compile again at every token. This one shares the Cache's
    buffers but keeps the next slot as a tensor: a step writes its token at that slot
    (index_copy_) and routes over all slots with the empty ones masked off, so every step
    has one shape and one graph (what CUDA graphs need too). Each query routes over the same
    keys as in the dynamic Cache: equal up to floating-point summation order. The engine
    checks max_seq_len before decoding; `advance()` moves to the next slot after a step."""

    def __init__(self, cache):
        if not cache.layers:
            raise ValueError("a StaticCache wraps a prefilled Cache")
        self.slot = torch.tensor([cache.length], device=cache.device)  # the next free slot
        self.key_mask, self.text_len = cache.key_mask, cache.text_len
        self.layers = [StaticLayerCache(layer, self.slot) for layer in cache.layers]

    def extend(self, text_mask: Tensor | int, prefix_len: int) -> tuple[Tensor, Tensor]:
        if prefix_len or not isinstance(text_mask, int) or text_mask != 1:
            raise ValueError("a StaticCache takes decode steps only: one real text token per row")
        positions = self.text_len[:, None].clone()  # [B, 1]
        self.text_len.add_(1)
        self.key_mask.index_fill_(1, self.slot, True)
        return positions, self.key_mask[:, None, None, :]  # [B, 1, 1, slots]

    def advance(self) -> None:
        self.slot.add_(1)


STATIC_BUCKET = 128  # a compiled decode sizes its cache in multiples of this, so a few graphs serve every length


def _decode_logits(model, tokens: Tensor, cache) -> Tensor:
    """One decode step: [B] tokens -> [B, V] logits of the next position."""
    return model(tokens[:, None], cache=cache, check_values=False)["logits"][:, -1]


class _Step(torch.nn.Module):
    """The decode step as a module that owns the model, so that torch.compile sees the
    weights as the module's own parameters: with Inductor's `freezing` they become constants
    of the graph, prepacked for the CPU's matmul kernels (`inductor_options`). A batch-1 step
    is a chain of matrix-vector products, and on a CPU the plain [out, in] weights are read
    far below the memory bandwidth (docs/results.md, "Decoding against the memory-bandwidth
    bound")."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, cache) -> Tensor:
        return _decode_logits(self.model, tokens, cache).float()  # exact (decode_step's docstring)


COMPILED_ATTR = "_quatrix_compiled_decode"  # on the model: (weights' identity, compiled step or None)


FROZEN = {"freezing": True}
CPP_GEMM = {"max_autotune": True, "max_autotune_gemm_backends": "CPP"}
CONCAT_LINEAR = {"cpp.enable_concat_linear": True}  # frozen projections of one input as one GEMM


def inductor_options(device: torch.device, dtype: torch.dtype, batch: int) -> list[dict]:
    """The Inductor settings a compiled decode step tries, best first; the next is used where
    one fails to compile. They are patched around every call that may compile a graph (the
    first, a new shape): in torch 2.13 `torch.compile(options=...)` does not reach freezing.

    Always `freezing`: the weights become constants of the graph, prepacked once. On a CPU,
    also Inductor's C++ GEMM template (`CPP_GEMM`, its only GEMM backend, so no kernel is
    chosen by timing and the kernels do not change between runs): its micro-kernels, fused
    with their epilogues, read a batch-1 step's weights far closer to the memory bandwidth
    than MKL's packed sgemm and oneDNN. On a 2-core AMD EPYC it made the batch-1 step
    1.6-2.4x faster in fp32 and bf16 and the batch-8 step 2.1-2.5x in fp32, but not the
    batch-8 step in bf16, which keeps oneDNN (docs/results.md, "Inductor's C++ GEMM
    template"; `benchmarks/decode.py --steps frozen,cpp`). Also on a CPU, frozen matmuls of
    one input are concatenated into one (`CONCAT_LINEAR`): attention's q, k and v
    projections become one GEMM, as Q-Compass's W_s and W_a already are (`QCompass.project`),
    so that the baselines are compiled on equal terms: 14 GEMMs per berry-q0 `mha` step
    instead of 28 (`benchmarks/decode.py --profile --variant mha --step cpp`), the same tokens."""
    if device.type != "cpu":
        return [FROZEN]
    if dtype == torch.float32 or batch == 1:
        return [FROZEN | CONCAT_LINEAR | CPP_GEMM, FROZEN]
    return [FROZEN | CONCAT_LINEAR, FROZEN]


def _weights_key(model) -> tuple:
    """What the frozen graph baked in: every parameter's storage, version and dtype. A change
    through the parameters (an optimizer step, `load_state_dict`, a dtype cast) compiles
    afresh; one through `.data`, which autograd does not count either, is not seen."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in model.parameters())


ANCHOR_GUARD = "self._modules['model']._modules['token_emb']._parameters['weight']"  # tells models apart


def _weight_guards_off(guards) -> list[bool]:
    """Which of dynamo's guards to keep: all but the identity of every parameter and the
    emptiness of every module's hook dicts, several hundred checks that dynamo would run
    before every token (its "TorchDynamo Cache Lookup" is still 0.26 ms of a 4-5 ms bf16
    step at berry-q0 without them: `benchmarks/decode.py --profile`). `_compiled_step`
    already keys the step on every parameter's storage, version and dtype, so those guards
    repeat it; one parameter's identity is kept, because the compiled code is shared by
    every model's `_Step` and that guard is what sends each model to its own graph (tested)."""
    return [not ((g.guard_type == "ID_MATCH" and "._parameters[" in g.name and g.name != ANCHOR_GUARD)
                 or g.guard_type == "EMPTY_NN_MODULE_HOOKS_DICT") for g in guards]


def _compiled_step(model):
    """The model's compiled step, compiled again when its weights changed; None where the
    compiler failed (the step then runs eagerly). Kept in the model's own __dict__ (not a
    submodule, not in its state), so that it lives and dies with the model. A change of
    weights resets torch._dynamo: every process-wide compiled graph is dropped and compiles
    again on its next call (rare: a model is not trained while it decodes)."""
    key = _weights_key(model)
    entry = vars(model).get(COMPILED_ATTR)
    if entry is None or entry[0] != key:
        if entry is not None:  # dynamo guards on the parameters' identity, not their values: its
            torch._dynamo.reset()  # graph with the old weights frozen in would still match
        step = torch.compile(_Step(model), dynamic=False, options={"guard_filter_fn": _weight_guards_off})
        entry = vars(model)[COMPILED_ATTR] = (key, step)
    return entry[1]


def _known_graph():
    """Around every compiled step after the first: dynamo runs only the guards that tell its
    graphs apart (`skip_guard_eval_unsafe`), since the step's inputs are those of the step
    before, the same StaticCache and a new [B] token tensor, so the graph the first step
    found or compiled is the one to run. What remains of dynamo's guards (`_weight_guards_off`)
    is still checked in full before every step without it: at berry-q0 on a 2-core AMD EPYC
    the step ran 0.98-1.08x (median 1.03x) as fast with it as with every guard checked,
    round by round (docs/results.md; `benchmarks/decode.py --steps guarded,compiled`). A
    caller's own stance (`torch.compiler.set_stance`) is left alone. The stance is
    process-wide while the step runs: a thread compiling something else meanwhile would see it."""
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)  # private in torch 2.13: guarded
    if stance is None or stance.stance != "default" or stance.skip_guard_eval_unsafe or stance.backend is not None:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)


def decode_step(model, cache, compile: bool = False):
    """The step function `stream` calls once per new token: [B] tokens -> [B, V] logits.

    Eager by default: the model's forward over the growing Cache. compile=True runs
    `torch.compile` over a StaticCache (one shape for the whole generation, so one graph,
    reused by later calls of the same shapes), with the weights frozen into the graph and
    prepacked (`_Step`, `inductor_options`): it fuses the small per-token ops and runs the
    matrix-vector products as prepacked GEMMs (on a 2-core AMD EPYC, 3.1-3.9x the eager step at
    batch 1; docs/results.md). The first call compiles (tens of seconds on a small CPU;
    benchmarks/decode.py), and so does the first call after the weights change; where the
    compiler fails (no C compiler, an unsupported platform) it warns, tries the next of
    `inductor_options`, and after the last runs the same static step eagerly. Each batch
    size, cache bucket and dtype is its own graph; past torch._dynamo's recompile_limit (8
    graphs by default) dynamo warns and runs the step eagerly. The step returns fp32 logits
    (an exact cast of bf16 ones, fused into the head's GEMM: argmax over bf16 is slower)."""
    if not compile:
        return lambda tokens: _decode_logits(model, tokens, cache)
    static = StaticCache(cache)
    fn = _compiled_step(model)
    options = inductor_options(static.slot.device, next(model.parameters()).dtype, static.key_mask.shape[0])
    steady = False  # a compiled step has run: every later one has its inputs' shapes, so its graph

    def step(tokens: Tensor) -> Tensor:
        nonlocal fn, options, steady
        while fn is not None:
            try:
                with _known_graph() if steady else torch._inductor.config.patch(**options[0]):
                    logits = fn(tokens, static)
                steady = True
                static.advance()
                return logits
            except Exception as e:  # noqa: BLE001 - a compiler failure tries the next settings, then eager
                failure = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
                if len(options) > 1:
                    warnings.warn(f"torch.compile with {options[0]} failed ({failure}); compiling with "
                                  f"{options[1]}", RuntimeWarning, stacklevel=2)
                    options = options[1:]
                    continue
                warnings.warn(f"torch.compile failed ({failure}); decoding without it", RuntimeWarning,
                              stacklevel=2)
                fn = None
                vars(model)[COMPILED_ATTR] = (_weights_key(model), None)
        logits = _decode_logits(model, tokens, static)
        static.advance()
        return logits

    return step
