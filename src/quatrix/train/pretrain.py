"""Stage 1 of the Berry recipe: pretrain a Quatrix language model from scratch on text.

Reads in order: arguments -> set-up (devices, processes, seed) -> tokenizer and model ->
data -> resume -> loop -> save. Runs on a CPU with the `tiny` preset in minutes, and on one
or many GPUs through torchrun (DistributedDataParallel, each rank its own data shard):

    quatrix pretrain --preset tiny --steps 300 --out runs/tiny
    torchrun --nproc_per_node=8 -m quatrix.cli pretrain --preset berry-q0 --data shakespeare ...

Joint training (the paper's recipe) adds image-text, audio-text and world-model batches:

    quatrix pretrain --image-data clevr --audio-data spoken-digits --world-data data/empty8 \
        --mixture text=0.35,image=0.25,audio=0.2,world=0.2

Each step's whole batch comes from one source (quatrix.data.mixture); each source's loss is
logged on its own (`text_loss`, `image_loss`, ...) and plotted. A world batch trains the
world model (common.MixtureObjective); the validation loss is on held-out text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from quatrix.config import MIXERS, PRESETS, QuatrixConfig, preset
from quatrix.data.images import ImageTextSource
from quatrix.data.mixture import Mixture, parse_mixture
from quatrix.data.pairs import PairLoader
from quatrix.data.speech import CORPORA as SPEECH_CORPORA
from quatrix.data.speech import AudioTextSource
from quatrix.data.text import CORPORA, DEFAULT_CORPUS, TokenLoader, load_tokens, prepare_tokens
from quatrix.data.world import WorldData, WorldLoader
from quatrix.eval.perplexity import evaluate_tokens
from quatrix.model import QuatrixLM
from quatrix.tokenizer import load_tokenizer
from quatrix.train import common
from quatrix.validation import nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--mixer", choices=MIXERS, help="override the preset's mixer")
    p.add_argument("--q-heads", type=positive_int)
    p.add_argument("--hidden-size", type=positive_int, help="override the preset's width H")
    p.add_argument("--num-layers", type=positive_int, help="override the preset's depth")
    p.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content")
    p.add_argument("--data", action="append", help=f"named corpus ({', '.join(CORPORA)}) or path; repeatable "
                                                   f"(default: {DEFAULT_CORPUS})")
    p.add_argument("--image-data", help="image-text pairs: clevr, digits, a .jsonl or a folder (enables vision)")
    p.add_argument("--audio-data", help=f"audio-text pairs: {', '.join(SPEECH_CORPORA)} (optionally :n=CLIPS), a "
                                        ".jsonl of {\"audio\", \"text\"} or a folder of .wav/.flac with .txt "
                                        "transcripts (enables audio)")
    p.add_argument("--world-data", help="a `quatrix world collect` folder: world-model batches (enables the world "
                                        "model)")
    p.add_argument("--mixture", help="source weights per step, e.g. text=0.35,image=0.25,audio=0.2,world=0.2 "
                                     "(default: text=0.7 shared with each given --*-data source equally at 0.3)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a trained tokenizer directory")
    common.add_run_arguments(p, steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup=20, eval_every=100,
                             save_every=100, out="runs/pretrain")
    p.add_argument("--eval-batches", type=positive_int, default=20)
    p.add_argument("--cache-dir", default=None, help="token cache (default: OUT/../.token_cache)")
    p.add_argument("--sample-tokens", type=nonnegative_int, default=48,
                   help="generate this many tokens at the end (0: none)")
    p.add_argument("--stop-after", type=positive_int, default=None, help=argparse.SUPPRESS)  # tests: die here


def main(args: argparse.Namespace) -> int:
    return common.run_stage(args, run)


def run(args: argparse.Namespace, d: common.Dist) -> int:
    # ---------------------------------------------------------------- set-up
    out = Path(args.out)
    weights = parse_mixture(args.mixture or default_mixture(args))
    for source, flag in (("image", "--image-data"), ("audio", "--audio-data"), ("world", "--world-data")):
        if source in weights and not getattr(args, flag[2:].replace("-", "_")):
            raise ValueError(f"--mixture uses {source} data: give {flag}")
    world = WorldData(args.world_data) if "world" in weights else None
    device, checkpoint = common.prepare_run(args, d, out, "pretrain")

    # ---------------------------------------------------------------- tokenizer and model
    tokenizer = load_tokenizer(args.tokenizer)
    config = model_config(args, tokenizer.vocab_size, weights, world)
    model = QuatrixLM(config).to(device)
    common.freeze_unused_plugins(model, weights)
    if d.is_main:
        common.write_run_config(out, args, config, tokenizer, d)

    # ---------------------------------------------------------------- data
    loader, val_tokens = build_data(args, tokenizer, config, weights, out, d, world)

    # ---------------------------------------------------------------- optimizer, resume
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    start = common.restore(checkpoint, model, optimizers, loader, config) if checkpoint else 0
    train_model = common.wrap_model(common.MixtureObjective(model), args.compile, d, device,
                                    find_unused=common.uneven_plugins(model, weights))
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None

    # ---------------------------------------------------------------- loop
    def evaluate() -> dict:
        val = evaluate_tokens(model, val_tokens, args.seq_len, args.batch_size, max_batches=args.eval_batches,
                              device=device)
        return {"val_loss": val["loss"], "val_perplexity": val["perplexity"]}

    status = common.train_loop(args, d, device, out, model, train_model, tokenizer, optimizers, loader, metrics, start,
                               stage="pretrain", evaluate=evaluate)

    # ---------------------------------------------------------------- save
    if d.is_main:
        metrics.close()
        if status == 0 and args.stop_after is None:
            report(args, out, model, tokenizer, val_tokens, metrics.path, device)
    return status


def default_mixture(args) -> str:
    """text=0.7 and the rest shared equally by the other sources given; text only without any."""
    given = [name for name, flag in (("image", args.image_data), ("audio", args.audio_data),
                                     ("world", args.world_data)) if flag]
    return ",".join(["text=0.7", *(f"{name}={0.3 / len(given)}" for name in given)]) if given else "text=1"


def model_config(args, vocab_size: int, weights: dict[str, float], world=None) -> QuatrixConfig:
    """The preset with the flags' overrides; each plugin is switched on by its data."""
    overrides = {"vocab_size": vocab_size, "use_gradient_checkpointing": args.grad_checkpointing}
    flags = {"mixer": args.mixer, "q_heads": args.q_heads, "hidden_size": args.hidden_size, "num_layers": args.num_layers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.savo:
        overrides["q_value_content"] = True
    if "image" in weights:
        overrides["use_vision"] = True
    if "audio" in weights:
        overrides["use_audio"] = True
    if world is not None:
        overrides.update(use_world_model=True, world_image_size=world.manifest["image_size"],
                         world_num_actions=world.num_actions)
    config = preset(args.preset, **overrides)
    if args.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the preset's max_seq_len {config.max_seq_len}")
    return config


def build_data(args, tokenizer, config: QuatrixConfig, weights: dict[str, float], out: Path, d: common.Dist,
               world=None):
    """The step-wise mixture of sources, and the held-out text tokens."""
    sources = args.data or [DEFAULT_CORPUS]
    cache_dir = Path(args.cache_dir) if args.cache_dir else out.parent / ".token_cache"
    if d.is_main:  # one process tokenizes; the others wait, then read the same files
        prepare_tokens(sources, tokenizer, cache_dir)
    d.barrier()
    paths = prepare_tokens(sources, tokenizer, cache_dir)
    train_tokens, val_tokens = (load_tokens(paths[s], tokenizer.vocab_size) for s in ("train", "val"))
    loaders = {"text": TokenLoader(train_tokens, args.seq_len, args.batch_size, args.seed, d.rank, d.world_size)}
    if "image" in weights:
        images = ImageTextSource(args.image_data, config.image_size, args.seed)
        loaders["image"] = PairLoader(images, tokenizer, args.seq_len, args.batch_size, args.seed, d.rank,
                                      d.world_size)
    if "audio" in weights:
        speech_cache = cache_dir.parent / ".speech_cache"
        if d.is_main:  # one process synthesizes the corpus; the others read the cache
            AudioTextSource(args.audio_data, config.sample_rate, config.audio_max_seconds, args.seed, speech_cache)
        d.barrier()
        clips = AudioTextSource(args.audio_data, config.sample_rate, config.audio_max_seconds, args.seed, speech_cache)
        loaders["audio"] = PairLoader(clips, tokenizer, args.seq_len, args.batch_size, args.seed, d.rank,
                                      d.world_size)
    if world is not None:
        loaders["world"] = WorldLoader(world, args.batch_size, args.seed, d.rank, d.world_size)
    return Mixture(loaders, weights, args.seed), val_tokens


def report(args, out: Path, model, tokenizer, val_tokens, metrics_path: Path, device: str) -> None:
    """Loss plot, summary.json, a one-line result and a sample from the model."""
    common.plot_losses(metrics_path, out / common.LOSS_PLOT_NAME)
    common.write_summary(out, metrics_path, device)
    last = common.read_metrics(metrics_path)[-1]
    print(f"pretrain: {args.steps} steps, train loss {last['loss']:.3f}, val loss {last.get('val_loss', float('nan')):.3f} "
          f"(perplexity {last.get('val_perplexity', float('nan')):.1f}); checkpoint {out / common.CHECKPOINT_DIR}")
    if args.sample_tokens:
        print_sample(model, tokenizer, val_tokens, args.sample_tokens, args.seed)


def print_sample(model, tokenizer, val_tokens, n: int, seed: int) -> None:
    """Continue the first line of held-out text, to see what the model learned."""
    prompt = [int(t) for t in val_tokens[:16]]
    n = min(n, model.config.max_seq_len - len(prompt))
    gen = model.generate([prompt], n, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(seed),
                         stop_token_ids=[tokenizer.eot_id])
    print("sample:", repr(tokenizer.decode(prompt)), "->", repr(tokenizer.decode(gen.tokens[0])))
