"""Stage 2 of the Berry recipe: supervised finetuning on conversations.

    quatrix sft --init runs/tiny/checkpoint --data task:chain_sum --data chitchat --weights 0.8,0.2 --out runs/sft

Starts from a checkpoint (its tokenizer comes with it) and trains on the loss-masked tokens
of the one chat format (quatrix.chat): assistant content and the end of each assistant
turn. Sources and their batches are quatrix.data.sft's; each step draws its batch from one
source, chosen with --weights as pretraining's mixture does. Checkpoints, exact resume,
metrics, precision and DistributedDataParallel are pretraining's (quatrix.train.common).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from quatrix.chat import END
from quatrix.data.mixture import Mixture
from quatrix.data.sft import ConversationSource, SFTLoader, collate
from quatrix.tokenizer import has_tokenizer, load_model_and_tokenizer
from quatrix.train import common
from quatrix.validation import nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--init", required=True, help="checkpoint to start from (with its tokenizer): a pretraining run's "
                                                 "OUT/checkpoint")
    p.add_argument("--data", action="append", default=[],
                   help="conversations: a .jsonl of {\"messages\": [...]}, chitchat, or task:NAME[:key=value,...] "
                        "(a task's worked solutions or answers); repeatable")
    p.add_argument("--audio-data", help="speech to transcribe: spoken-digits, spoken-numbers, spoken-sentences or a "
                                        "folder / .jsonl of clips with transcripts (the source task:transcribe:data=X,"
                                        " after the --data sources)")
    p.add_argument("--weights", help="comma-separated weights of the --data sources (then --audio-data), in order "
                                     "(default: equal)")
    common.add_run_arguments(p, steps=200, batch_size=16, seq_len=256, lr=1e-3, warmup=10, eval_every=50,
                             save_every=50, out="runs/sft", batch_help="conversations per step per process")
    p.add_argument("--eval-n", type=positive_int, default=64, help="held-out conversations per source to validate on")
    p.add_argument("--sample-tokens", type=nonnegative_int, default=48,
                   help="answer one held-out prompt with this many tokens at the end (0: none)")
    p.add_argument("--stop-after", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests: die here


def main(args: argparse.Namespace) -> int:
    sources = args.data + ([transcribe_spec(args.audio_data)] if args.audio_data else [])
    if not sources:
        raise ValueError("give at least one --data source (or --audio-data)")
    return common.run_stage(args, run, source_weights(sources, args.weights))


def transcribe_spec(audio_data: str) -> str:
    """--audio-data spoken-digits:max_digits=2 -> task:transcribe:data=spoken-digits,max_digits=2."""
    from quatrix.data.speech import parse_audio_spec

    name, options = parse_audio_spec(audio_data)
    return ",".join([f"task:transcribe:data={name}", *(f"{k}={v}" for k, v in options.items())])


def source_weights(sources: list[str], spec: str | None) -> dict[str, float]:
    if len(set(sources)) != len(sources):
        raise ValueError("--data: a source is given twice")
    if spec is None:
        return {s: 1.0 for s in sources}
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"--weights: expected comma-separated numbers, got {spec!r}") from None
    if len(values) != len(sources):
        raise ValueError(f"--weights gives {len(values)} weight(s) for {len(sources)} --data source(s)")
    if any(not v >= 0 or v == float("inf") for v in values) or sum(values) <= 0:
        raise ValueError("--weights must be finite, non-negative and not all zero")
    return {s: v for s, v in zip(sources, values) if v > 0}


def load_init(path: str, device: str):
    """The starting model and its tokenizer, checked against each other."""
    if not has_tokenizer(path):
        raise FileNotFoundError(f"--init {path}: no tokenizer saved beside the model (use a training run's checkpoint)")
    return load_model_and_tokenizer(path, map_location=device)  # refuses a tokenizer of another vocabulary


def run(args: argparse.Namespace, d: common.Dist, weights: dict[str, float]) -> int:
    # ---------------------------------------------------------------- set-up, model, data
    out = Path(args.out)
    device, checkpoint = common.prepare_run(args, d, out, "sft")
    model, tokenizer = load_init(args.init, device)
    config = model.config
    if args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
    log = print if d.is_main else (lambda *a, **k: None)
    sources = {spec: ConversationSource(spec, tokenizer, args.seq_len, args.seed, log=log, config=config)
               for spec in weights}
    media = {spec: s.media() for spec, s in sources.items()}
    for spec, carried in media.items():
        for key, flag, encoder in (("image", "use_vision", "vision"), ("audio", "use_audio", "audio")):
            if key in carried and not getattr(config, flag):
                raise ValueError(f"--data {spec} carries {key}, but the --init model has no {encoder} encoder")
    loaders = {spec: SFTLoader(s, args.batch_size, tokenizer.eot_id, config, args.seed, d.rank, d.world_size)
               for spec, s in sources.items()}
    loader = Mixture(loaders, weights, args.seed)
    fed = set().union(*media.values())
    common.freeze_unused_plugins(model, fed)
    if d.is_main:
        common.write_run_config(out, args, config, tokenizer, d)

    # ---------------------------------------------------------------- optimizer, resume
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    start = common.restore(checkpoint, model, optimizers, loader, config) if checkpoint else 0
    train_model = common.wrap_model(model, args.compile, d, device, find_unused=bool(fed) and len(weights) > 1)
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None
    validation = [e for s in sources.values() for e in s.validation(args.eval_n)]

    def evaluate() -> dict:
        return {"val_loss": masked_loss(model, validation, tokenizer.eot_id, config, args.batch_size,
                                        device, args.precision_resolved)}

    def skipped() -> dict:
        return {"skipped": sum(ld.skipped for ld in loaders.values())}

    status = common.train_loop(args, d, device, out, model, train_model, tokenizer, optimizers, loader, metrics, start,
                               stage="sft", evaluate=evaluate, extra=skipped)
    if d.is_main:
        metrics.close()
        if status == 0 and args.stop_after is None:
            report(args, out, model, tokenizer, sources, device)
    return status


@torch.no_grad()
def masked_loss(model, examples, pad_id: int, config, batch_size: int, device: str, precision: str) -> float:
    """Mean next-token loss over the loss-masked tokens of `examples` (in batches, eval mode)."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        with common.autocast_context(device, precision):
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate(chunk, pad_id, config).items()}
                total += model(**batch, loss_reduction="sum", check_values=False)["loss"].double()
                count += int((batch["labels"][:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return float(total) / max(count, 1)


def report(args, out: Path, model, tokenizer, sources, device: str) -> None:
    common.plot_losses(out / common.METRICS_NAME, out / common.LOSS_PLOT_NAME)
    common.write_summary(out, out / common.METRICS_NAME, device)
    last = common.read_metrics(out / common.METRICS_NAME)[-1]
    print(f"sft: {args.steps} steps, train loss {last['loss']:.3f}, val loss {last.get('val_loss', float('nan')):.3f}; "
          f"checkpoint {out / common.CHECKPOINT_DIR}")
    if args.sample_tokens:
        print_sample(model, tokenizer, next(iter(sources.values())), args.sample_tokens)


def print_sample(model, tokenizer, source: ConversationSource, n: int) -> None:
    """Answer one held-out prompt greedily (up to its first assistant turn), to see what the
    model learned."""
    example = source.validation(1)[0] if source.task is not None else (source.val or source.train)[0]
    if example.image is not None or example.audio is not None:
        return
    prompt = example.ids[: example.ids.index(tokenizer.token_id("<|assistant|>")) + 1]
    n = min(n, model.config.max_seq_len - len(prompt) - 1)
    if n < 1:
        return
    out = model.generate([prompt], n, temperature=0.0, stop_token_ids=[tokenizer.token_id(END)])
    print("sample:", repr(tokenizer.decode(prompt[-40:])), "->", repr(tokenizer.decode(out.tokens[0])))
