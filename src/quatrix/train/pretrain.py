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
world model (quatrix.train.trainer.MixtureObjective); the validation loss is on held-out text.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from quatrix.config import MIXERS, PRESETS, QuatrixConfig, preset
from quatrix.data.images import ImageTextSource
from quatrix.data.mixture import Mixture, parse_mixture
from quatrix.data.pairs import PairLoader
from quatrix.data.speech import CORPORA as SPEECH_CORPORA
from quatrix.data.speech import AudioTextSource
from quatrix.data.text import CORPORA, DEFAULT_CORPUS, TokenLoader, text_tokens
from quatrix.data.world import WorldData, WorldLoader
from quatrix.engine import generate
from quatrix.eval.perplexity import evaluate_tokens
from quatrix.model import QuatrixLM
from quatrix.tokenizer import load_tokenizer
from quatrix.train import options
from quatrix.train.options import BatchConfig, default, option
from quatrix.train.trainer import MixtureObjective, Trainer
from quatrix.validation import int_at_least, nonnegative_int, positive_float, positive_int


@dataclass
class PretrainConfig(BatchConfig):
    preset: str = option("tiny", choices=tuple(sorted(PRESETS)))
    mixer: str | None = option(None, choices=MIXERS, help="override the preset's mixer")
    q_heads: int | None = option(None, parse=positive_int)
    hidden_size: int | None = option(None, parse=positive_int, help="override the preset's width H")
    num_layers: int | None = option(None, parse=positive_int, help="override the preset's depth")
    savo: bool = option(False, help="Q-Compass with Q-value content")
    data: list[str] | None = option(None, help=f"named corpus ({', '.join(CORPORA)}) or path; repeatable "
                                               f"(default: {DEFAULT_CORPUS})")
    image_data: str | None = option(None, help="image-text pairs: clevr, digits, a .jsonl or a folder (enables "
                                               "vision)")
    audio_data: str | None = option(None, help=f"audio-text pairs: {', '.join(SPEECH_CORPORA)} (optionally "
                                               f":n=CLIPS), a .jsonl of {{\"audio\", \"text\"}} or a folder of "
                                               ".wav/.flac with .txt transcripts (enables audio)")
    world_data: str | None = option(None, help="a `quatrix world collect` folder: world-model batches (enables "
                                               "the world model)")
    mixture: str | None = option(None, help="source weights per step, e.g. text=0.35,image=0.25,audio=0.2,world=0.2 "
                                            "(default: text=0.7 shared with each given --*-data source equally at "
                                            "0.3)")
    tokenizer: str = option("gpt2", help="'gpt2' or a trained tokenizer directory")
    seq_len: int = option(128, parse=int_at_least(2), help="tokens per sequence")
    steps: int = default("steps", 300)
    lr: float = default("lr", 3e-3)
    warmup: int = default("warmup", 20)
    eval_every: int = default("eval_every", 100)
    save_every: int = default("save_every", 100)
    out: str = default("out", "runs/pretrain")
    eval_batches: int = option(20, parse=positive_int)
    cache_dir: str | None = option(None, help="token cache (default: OUT/../.token_cache)")
    max_epochs: float | None = option(None, parse=positive_float, help="refuse a run that would pass over the text more often than this "
                                                 "(default: only warn past 4 passes)")
    sample_tokens: int = option(48, parse=nonnegative_int, help="generate this many tokens at the end (0: none)")


class PretrainTrainer(Trainer):
    stage = "pretrain"

    def __init__(self, config: PretrainConfig):
        super().__init__(config)
        self.weights = parse_mixture(config.mixture or default_mixture(config))
        for source, flag in (("image", "--image-data"), ("audio", "--audio-data"), ("world", "--world-data")):
            if source in self.weights and not getattr(config, flag[2:].replace("-", "_")):
                raise ValueError(f"--mixture uses {source} data: give {flag}")
        self.world = WorldData(config.world_data) if "world" in self.weights else None

    def setup(self) -> None:
        config = self.config
        self.tokenizer = load_tokenizer(config.tokenizer)
        model_config = build_config(config, self.tokenizer.vocab_size, self.weights, self.world)
        self.model = QuatrixLM(model_config).to(self.device)
        self.sources = set(self.weights)
        self.loader, self.val_tokens = build_data(config, self.tokenizer, model_config, self.weights, self.out, self.d,
                                                  self.world)

    def objective(self) -> torch.nn.Module:
        return MixtureObjective(self.model)

    def evaluate(self) -> dict:
        config = self.config
        val = evaluate_tokens(self.model, self.val_tokens, config.seq_len, config.batch_size,
                              max_batches=config.eval_batches, device=self.device)
        return {"val_loss": val["loss"], "val_perplexity": val["perplexity"]}

    def report(self) -> None:
        """Loss plot, summary.json, a one-line result and a sample from the model."""
        super().report()
        print(self.summary_line())
        if self.config.sample_tokens:
            print_sample(self.model, self.tokenizer, self.val_tokens, self.config.sample_tokens, self.config.seed)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p, PretrainConfig)


def main(args: argparse.Namespace) -> int:
    return PretrainTrainer(options.from_namespace(PretrainConfig, args)).run()


def default_mixture(config: PretrainConfig) -> str:
    """text=0.7 and the rest shared equally by the other sources given; text only without any."""
    given = [name for name, flag in (("image", config.image_data), ("audio", config.audio_data),
                                     ("world", config.world_data)) if flag]
    return ",".join(["text=0.7", *(f"{name}={0.3 / len(given)}" for name in given)]) if given else "text=1"


def build_config(options: PretrainConfig, vocab_size: int, weights: dict[str, float], world=None) -> QuatrixConfig:
    """The preset with the flags' overrides; each plugin is switched on by its data."""
    overrides = {"vocab_size": vocab_size, "use_gradient_checkpointing": options.grad_checkpointing}
    flags = {"mixer": options.mixer, "q_heads": options.q_heads, "hidden_size": options.hidden_size, "num_layers": options.num_layers}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if options.savo:
        overrides["q_value_content"] = True
    if "image" in weights:
        overrides["use_vision"] = True
    if "audio" in weights:
        overrides["use_audio"] = True
    if world is not None:
        overrides.update(use_world_model=True, world_image_size=world.manifest["image_size"],
                         world_num_actions=world.num_actions)
    config = preset(options.preset, **overrides)
    if options.seq_len > config.max_seq_len and not options.given("seq_len"):
        options.adapt("seq_len", config.max_seq_len, f"is longer than the preset's max_seq_len {config.max_seq_len}")
    if options.seq_len > config.max_seq_len:
        raise ValueError(f"--seq-len {options.seq_len} exceeds the preset's max_seq_len {config.max_seq_len}")
    return config


def build_data(options: PretrainConfig, tokenizer, config: QuatrixConfig, weights: dict[str, float], out: Path, d, world=None):
    """The step-wise mixture of sources, and the held-out text tokens."""
    sources = options.data or [DEFAULT_CORPUS]
    cache_dir = Path(options.cache_dir) if options.cache_dir else out.parent / ".token_cache"
    train_tokens, val_tokens = text_tokens(sources, tokenizer, cache_dir, d)
    check_epochs(options, weights, len(train_tokens), d.world_size)
    loaders = {"text": TokenLoader(train_tokens, options.seq_len, options.batch_size, options.seed, d.rank, d.world_size)}
    if "image" in weights:
        images = ImageTextSource(options.image_data, config.image_size, options.seed)
        loaders["image"] = PairLoader(images, tokenizer, options.seq_len, options.batch_size, options.seed, d.rank,
                                      d.world_size)
    if "audio" in weights:
        speech_cache = cache_dir.parent / ".speech_cache"
        if d.is_main:  # one process synthesizes the corpus; the others read the cache
            AudioTextSource(options.audio_data, config.sample_rate, config.audio_max_seconds, options.seed, speech_cache)
        d.barrier()
        clips = AudioTextSource(options.audio_data, config.sample_rate, config.audio_max_seconds, options.seed, speech_cache)
        loaders["audio"] = PairLoader(clips, tokenizer, options.seq_len, options.batch_size, options.seed, d.rank,
                                      d.world_size)
    if world is not None:
        loaders["world"] = WorldLoader(world, options.batch_size, options.seed, d.rank, d.world_size)
    return Mixture(loaders, weights, options.seed), val_tokens


def check_epochs(options: PretrainConfig, weights: dict[str, float], corpus: int, world_size: int) -> None:
    """Warn when the run reads its text more than 4 times over; refuse past --max-epochs."""
    share = weights.get("text", 0.0) / sum(weights.values())
    needed = options.steps * options.grad_accum * options.batch_size * world_size * options.seq_len * share
    epochs = needed / max(corpus, 1)
    line = f"{needed / 1e6:,.1f}M text tokens over a {corpus / 1e6:,.1f}M-token corpus = {epochs:,.1f} epochs"
    if options.max_epochs is not None and epochs > options.max_epochs:
        raise ValueError(f"{line}, more than --max-epochs {options.max_epochs:g}: prepare a larger corpus "
                         f"(quatrix data prepare) or raise --max-epochs")
    if epochs > 4:
        print(f"warning: {line}; the model will memorise rather than generalise", file=sys.stderr)


def print_sample(model, tokenizer, val_tokens, n: int, seed: int) -> None:
    """Continue the first line of held-out text, to see what the model learned."""
    prompt = [int(t) for t in val_tokens[:16]]
    n = min(n, model.config.max_seq_len - len(prompt))
    gen = generate(model, [prompt], n, temperature=0.8, top_k=50, generator=torch.Generator().manual_seed(seed),
                         stop_token_ids=[tokenizer.eot_id])
    print("sample:", repr(tokenizer.decode(prompt)), "->", repr(tokenizer.decode(gen.tokens[0])))
