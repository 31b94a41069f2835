import pytest
import torch
from torch.testing import assert_close

from conftest import MIXER_VARIANTS, tiny_config
from quatrix import QuatrixLM
from quatrix import static_decode
from quatrix.engine import Cache, StaticCache, cache_floats_per_token, generate, left_pad, sample_next, Sampling, stream

PROMPTS = [[5, 17, 3, 44, 9, 2, 81, 60], [7, 7, 12], [90, 1, 33, 4, 4]]


def cached_logits(model, prompts, continuation, pixels=None, chunk=1, mel=None):
    """Prefill the prompts, then feed `continuation` through the cache `chunk` tokens at a time."""
    ids, mask = left_pad(prompts)
    cache = Cache(model, ids.shape[0], ids.shape[1] + continuation.shape[1])
    out = [model(ids, attention_mask=mask, pixel_values=pixels, mel_values=mel, cache=cache)["logits"]]
    for t in range(0, continuation.shape[1], chunk):
        out.append(model(continuation[:, t : t + chunk], cache=cache)["logits"])
    return torch.cat(out, dim=1), torch.cat([mask, torch.ones_like(continuation)], dim=1), cache


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("prefix", [None, "image", "audio", "image+audio"])
def test_cached_decoding_equals_full_recomputation(name, overrides, rows, prefix):
    model = QuatrixLM(tiny_config(use_vision=True, use_audio=True, **overrides)).eval()
    prompts = PROMPTS[:rows]
    continuation = torch.randint(0, 97, (rows, 6))
    pixels = torch.randn(rows, 3, 32, 32) if prefix and "image" in prefix else None
    mel = torch.randn(rows, 4000) if prefix and "audio" in prefix else None
    with torch.no_grad():
        cached, mask, _ = cached_logits(model, prompts, continuation, pixels, mel=mel)
        ids, _ = left_pad(prompts)
        full = model(torch.cat([ids, continuation], 1), attention_mask=mask, pixel_values=pixels,
                     mel_values=mel)["logits"]
    real = mask.bool()
    assert_close(cached[real], full[real], rtol=1e-4, atol=1e-5)


FULL_CONTEXT = 5120  # berry-q0's max_seq_len


@pytest.mark.parametrize("name, overrides", [v for v in MIXER_VARIANTS if v[0] in ("qcompass", "savo", "mha")])
def test_the_whole_5120_token_context_decodes_as_it_recomputes(name, overrides):
    """A prompt plus max_new_tokens filling berry-q0's context exactly: the cached logits at
    every position equal one forward pass over all 5,120 tokens, and greedy generation to
    the last position picks what the recomputation picks."""
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config(max_seq_len=FULL_CONTEXT, **overrides)).eval()
    new = 16
    prompt = torch.randint(0, 97, (1, FULL_CONTEXT - new))
    continuation = torch.randint(0, 97, (1, new))
    with torch.no_grad():
        cached, _, cache = cached_logits(model, prompt.tolist(), continuation)
        full = model(torch.cat([prompt, continuation], 1))["logits"]
        assert cached.shape[1] == full.shape[1] == FULL_CONTEXT
        assert_close(cached, full, rtol=1e-4, atol=1e-4)
        generated = generate(model, prompt.tolist(), new, temperature=0).tokens[0]
        assert len(generated) == new  # the context is full: prompt + new == max_seq_len
        whole = torch.tensor([prompt[0].tolist() + generated[:-1]])
        assert model(whole)["logits"][0, -new:].argmax(-1).tolist() == generated


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
def test_multi_token_steps_through_the_cache(name, overrides):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    continuation = torch.randint(0, 97, (3, 6))
    with torch.no_grad():
        one, _, _ = cached_logits(model, PROMPTS, continuation, chunk=1)
        three, _, _ = cached_logits(model, PROMPTS, continuation, chunk=3)
    assert_close(one, three, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, floats",
    [(dict(), 32 + 16), (dict(q_value_content=True), 2 * 16), (dict(q_heads=4), 32 + 16),
     (dict(q_heads=4, q_value_content=True), 2 * 16), (dict(mixer="mha", q_heads=4), 2 * 32),
     (dict(mixer="mha_rank", q_heads=4), 2 * 16)],
)
def test_cache_floats_per_token(overrides, floats):
    cfg = tiny_config(**overrides)  # H=32, r=16
    assert cache_floats_per_token(cfg) == floats
    model = QuatrixLM(cfg)
    with torch.no_grad():
        _, _, cache = cached_logits(model, PROMPTS, torch.randint(0, 97, (3, 2)))
    slots = cache.key_mask.shape[1]
    assert cache.nbytes == floats * 4 * cfg.num_layers * 3 * slots


def test_published_cache_sizes():
    from quatrix import preset

    assert cache_floats_per_token(preset("berry-q0")) == 512 + 64
    assert cache_floats_per_token(preset("berry-q0", q_value_content=True)) == 2 * 64
    assert cache_floats_per_token(preset("berry-q0", mixer="mha", q_heads=8)) == 2 * 512


@pytest.fixture
def model():
    return QuatrixLM(tiny_config()).eval()


def test_greedy_is_deterministic_and_top_k_1_is_greedy(model):
    a = generate(model, PROMPTS, 10, temperature=0)
    assert a.tokens == generate(model, PROMPTS, 10, temperature=0).tokens
    assert a.tokens == generate(model, PROMPTS, 10, temperature=1.3, top_k=1).tokens
    assert a.finish_reasons == ["length"] * 3 and all(len(t) == 10 for t in a.tokens)


def test_batched_rows_match_each_prompt_alone(model):
    batch = generate(model, PROMPTS, 8, temperature=0).tokens
    assert batch == [generate(model, [p], 8, temperature=0).tokens[0] for p in PROMPTS]


def test_seed_reproduces_sampling(model):
    sample = lambda seed: generate(model, PROMPTS, 12, temperature=1.0, top_p=0.9,  # noqa: E731
                                   generator=torch.Generator().manual_seed(seed)).tokens
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_num_samples_share_one_prefill(model):
    greedy = generate(model, PROMPTS[:2], 6, temperature=0).tokens
    copies = generate(model, PROMPTS[:2], 6, temperature=0, num_samples=3).tokens
    assert copies == [greedy[0]] * 3 + [greedy[1]] * 3
    sampled = generate(model, PROMPTS[:1], 8, num_samples=4, generator=torch.Generator().manual_seed(0)).tokens
    assert len(sampled) == 4 and len({tuple(t) for t in sampled}) > 1


def test_each_row_stops_on_its_own(model):
    free = generate(model, PROMPTS, 10, temperature=0).tokens
    stop_token = max(free[0], key=free[0].index)  # the token of row 0 that appears last for the first time
    out = generate(model, PROMPTS, 10, temperature=0, stop_token_ids=[stop_token])
    for row, ref, reason in zip(out.tokens, free, out.finish_reasons):
        if stop_token in ref:
            cut = ref.index(stop_token)
            assert row == ref[:cut] and reason == "stop"
        else:
            assert row == ref and reason == "length"
    assert out.finish_reasons[0] == "stop"


def test_streaming_yields_token_by_token(model):
    steps = list(stream(model, PROMPTS, 5, temperature=0))
    assert len(steps) == 5
    tokens = torch.stack([t for t, _ in steps], dim=1).tolist()
    assert tokens == generate(model, PROMPTS, 5, temperature=0).tokens
    assert all(active.all() for _, active in steps)


def test_model_generate_with_image_prefix():
    model = QuatrixLM(tiny_config(use_vision=True)).eval()
    pixels = torch.randn(2, 3, 32, 32)
    out = generate(model, PROMPTS[:2], 4, temperature=0, pixel_values=pixels, num_samples=2)
    assert len(out.tokens) == 4 and out.tokens[0] == out.tokens[1]


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, Sampling(1.0, top_k=2), g)) for _ in range(200)}
    assert draws == {1, 3}
    assert {int(sample_next(logits, Sampling(1.0, top_p=1e-6), g)) for _ in range(50)} == {1}
    draws = {int(sample_next(logits, Sampling(5.0, top_p=0.999), g)) for _ in range(400)}
    assert draws == {0, 1, 2, 3, 4}  # a high temperature flattens, top_p near 1 keeps all


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(top_k=-1), "top_k must be an int >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be a positive int"),
        (dict(num_samples=0), "num_samples must be a positive int"),
        (dict(prompts=[[1, 2], []]), "empty prompt"),
        (dict(prompts=[]), "no prompts"),
        (dict(prompts=[list(range(60))], max_new_tokens=10), "prompt has 60 tokens; with max_new_tokens=10 at most 54"),
        (dict(prompts=[[1, 2, 500]]), "token id 500, outside the vocabulary"),
    ],
)
def test_bad_generation_input(model, kwargs, message):
    args = dict(prompts=PROMPTS, max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, args.pop("prompts"), args.pop("max_new_tokens"), **args)


def test_truncation_keeps_the_last_tokens(model):
    long = list(range(1, 61))
    out = generate(model, [long], 10, temperature=0, truncate=True)
    assert out.tokens == generate(model, [long[-54:]], 10, temperature=0).tokens


def test_a_long_prefill_keeps_only_the_last_logits_and_generates_the_same(monkeypatch):
    """Past quatrix.loss.CHUNK_BYTES of prefill logits the engine keeps the last position's
    only (logits_to_keep=1): the same greedy tokens, without the [B, L, V] tensor."""
    import quatrix.loss as loss

    torch.manual_seed(0)
    model = QuatrixLM(tiny_config()).eval()
    with torch.no_grad():
        ids = torch.tensor([PROMPTS[0]])
        full = model(ids)["logits"]
        assert_close(model(ids, logits_to_keep=1)["logits"], full[:, -1:], rtol=1e-5, atol=1e-6)
        assert_close(model(ids, logits_to_keep=3)["logits"], full[:, -3:], rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="logits_to_keep must be a positive int"):
            model(ids, logits_to_keep=0)
    plain = generate(model, PROMPTS, 6, temperature=0).tokens
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("logits_to_keep"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr(loss, "CHUNK_BYTES", 16)  # every prompt is "long"
    assert generate(model, PROMPTS, 6, temperature=0).tokens == plain
    assert seen[0] == 1


def static_decode_logits(model, prompts, continuation):
    """Prefill through the dynamic Cache, then feed `continuation` one token per step through
    a StaticCache (eager): the logits of every step, [B, n, V]."""
    ids, mask = left_pad(prompts)
    cache = Cache(model, ids.shape[0], ids.shape[1] + continuation.shape[1] + 5)  # spare slots stay masked
    model(ids, attention_mask=mask, cache=cache)
    static, out = StaticCache(cache), []
    for t in range(continuation.shape[1]):
        out.append(model(continuation[:, t : t + 1], cache=static)["logits"])
        static.advance()
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("name, overrides", MIXER_VARIANTS)
@pytest.mark.parametrize("rows", [1, 3])
def test_the_static_decode_step_equals_the_growing_cache(name, overrides, rows):
    model = QuatrixLM(tiny_config(**overrides)).eval()
    continuation = torch.randint(0, 97, (rows, 6))
    with torch.no_grad():
        dynamic, _, _ = cached_logits(model, PROMPTS[:rows], continuation)
        static = static_decode_logits(model, PROMPTS[:rows], continuation)
    assert_close(static, dynamic[:, -6:], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_decode_gives_the_eager_tokens():
    import warnings

    torch.manual_seed(0)
    model = QuatrixLM(tiny_config(num_layers=1)).eval()
    eager = generate(model, PROMPTS, 12, temperature=0).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compiler failure (the eager fallback) fails the test
        assert generate(model, PROMPTS, 12, temperature=0, compile=True).tokens == eager
        assert generate(model, PROMPTS[:1], 30, temperature=0, compile=True).tokens == \
            generate(model, PROMPTS[:1], 30, temperature=0).tokens
        compiled = vars(model)[static_decode.COMPILED_ATTR][1]
        assert compiled is not None  # still the compiled step
        # the weights are frozen into the graph: changed weights (an optimizer step, a load)
        # compile afresh instead of decoding with the old ones
        with torch.no_grad():
            model.head.weight.mul_(-1.0)
        assert generate(model, PROMPTS, 12, temperature=0, compile=True).tokens == \
            generate(model, PROMPTS, 12, temperature=0).tokens != eager
        assert vars(model)[static_decode.COMPILED_ATTR][1] is not compiled
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        assert generate(model, PROMPTS, 4, temperature=0, compile=True).tokens == \
            generate(model, PROMPTS, 4, temperature=0).tokens
        # every model's _Step shares one compiled code object: another model of the same shapes
        # gets its own graph, not the first one's frozen weights
        other = QuatrixLM(tiny_config(num_layers=1)).eval()
        assert generate(other, PROMPTS, 12, temperature=0, compile=True).tokens == \
            generate(other, PROMPTS, 12, temperature=0).tokens != generate(model, PROMPTS, 12, temperature=0).tokens
        assert generate(model, PROMPTS, 12, temperature=0, compile=True).tokens == \
            generate(model, PROMPTS, 12, temperature=0).tokens
    assert static_decode.COMPILED_ATTR not in model.state_dict() and \
        static_decode.COMPILED_ATTR not in dict(model.named_modules())


def test_a_compiler_that_fails_falls_back_to_the_same_step(monkeypatch):
    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config()).eval()
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C compiler"):
        tokens = generate(model, PROMPTS, 8, temperature=0, compile=True).tokens
    assert tokens == generate(model, PROMPTS, 8, temperature=0).tokens


def test_a_failing_cpp_gemm_template_compiles_without_it(monkeypatch):
    """The C++ GEMM template is tried first on a CPU; where it fails, plain freezing, not eager."""
    calls = []

    def picky(module, **kwargs):
        def run(tokens, cache):
            calls.append(dict(torch._inductor.config.get_config_copy()))
            if torch._inductor.config.max_autotune:
                raise RuntimeError("template failed")
            return module(tokens, cache)
        return run

    monkeypatch.setattr(torch, "compile", picky)
    assert static_decode.inductor_options(torch.device("cpu"), torch.float32, 1)[0]["max_autotune"]
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config()).eval()
    with pytest.warns(RuntimeWarning, match="max_autotune_gemm_backends.*template failed.*compiling with") as caught:
        tokens = generate(model, PROMPTS, 8, temperature=0, compile=True).tokens
    assert tokens == generate(model, PROMPTS, 8, temperature=0).tokens
    assert len(caught) == 1 and vars(model)[static_decode.COMPILED_ATTR][1] is not None  # compiled, not eager
    # the settings are patched around the calls that may compile: the template's, then freezing's alone
    assert calls[0]["freezing"] and calls[0]["max_autotune"] and calls[1]["freezing"] and not calls[1]["max_autotune"]
    assert len(calls) == 8  # the failed call and the 7 decode steps


def test_compiled_steps_after_the_first_check_only_the_guards_that_tell_graphs_apart(monkeypatch):
    """The first compiled step may compile, so dynamo checks every guard; the later ones run
    the graph it found under skip_guard_eval_unsafe, unless the caller set a stance of its own."""
    seen = []

    def recording(module, **kwargs):
        def run(tokens, cache):
            stance = torch._dynamo.eval_frame._stance
            seen.append((stance.stance, stance.skip_guard_eval_unsafe))
            return module(tokens, cache)
        return run

    monkeypatch.setattr(torch, "compile", recording)
    torch.manual_seed(0)
    model = QuatrixLM(tiny_config()).eval()
    tokens = generate(model, PROMPTS, 5, temperature=0, compile=True).tokens
    assert tokens == generate(model, PROMPTS, 5, temperature=0).tokens
    assert seen == [("default", False)] + [("default", True)] * 3  # 4 decode steps after the prefill
    assert not torch._dynamo.eval_frame._stance.skip_guard_eval_unsafe  # restored after each step
    seen.clear()
    with torch.compiler.set_stance("eager_on_recompile"):
        generate(model, PROMPTS, 5, temperature=0, compile=True)
    assert seen == [("eager_on_recompile", False)] * 4


def test_bf16_weights_take_images_and_waveforms():
    """--dtype bf16: the log-mel front end still runs in fp32, the encoders take fp32 media."""
    model = QuatrixLM(tiny_config(use_vision=True, use_audio=True)).eval().to(torch.bfloat16)
    out = generate(model, [[1, 2, 3]], 4, temperature=0, pixel_values=torch.randn(1, 3, 32, 32),
                   mel_values=torch.randn(1, 4000))
    assert len(out.tokens[0]) == 4


def test_a_static_cache_refuses_anything_but_one_token_per_row():
    model = QuatrixLM(tiny_config()).eval()
    ids, mask = left_pad(PROMPTS)
    cache = Cache(model, ids.shape[0], ids.shape[1] + 4)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
    with pytest.raises(ValueError, match="decode steps only"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=StaticCache(cache))
