"""Stage 2 of the Berry recipe: supervised finetuning on conversations.

    quatrix sft --init runs/tiny/checkpoint --data task:chain_sum --data chitchat --weights 0.8,0.2 --out runs/sft
    quatrix sft --init ... --data task:chain_sum --data text:shakespeare --weights 0.85,0.15

Starts from a checkpoint (its tokenizer comes with it) and trains on the loss-masked tokens
of the one chat format (quatrix.chat): assistant content and the end of each assistant
turn. Sources and their batches are quatrix.data.sft's; each step draws its batch from one
source, chosen with --weights as pretraining's mixture does. A `text:CORPUS` source (any
pretraining --data: a corpus, files, a prepared folder) adds plain-text windows trained on
every token, as in pretraining, so that finetuning keeps the language model it started
from; its held-out windows are validated on their own (`val_text_loss`). Checkpoints, exact resume,
metrics, precision and DistributedDataParallel are the Trainer's (quatrix.train.trainer).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from quatrix.chat import END
from quatrix.data.mixture import Mixture
from quatrix.data.sft import TEXT, ConversationSource, SFTLoader, collate
from quatrix.data.speech import parse_audio_spec
from quatrix.data.text import TokenLoader, text_tokens
from quatrix.engine import generate
from quatrix.eval.perplexity import evaluate_tokens
from quatrix.media import check_encoder
from quatrix.train import options
from quatrix.train.options import BatchConfig, default, option
from quatrix.train.trainer import Trainer, load_init
from quatrix.validation import int_at_least, nonnegative_int, positive_int


@dataclass
class SFTConfig(BatchConfig):
    init: str | None = option(required=True, help="checkpoint to start from (with its tokenizer): a pretraining "
                                                  "run's OUT/checkpoint")
    data: list[str] = option(default_factory=list,
                             help="conversations: a .jsonl of {\"messages\": [...]}, chitchat, or "
                                  "task:NAME[:key=value,...] (a task's worked solutions or answers); or plain text "
                                  "to keep the language model: text:CORPUS (a pretraining --data source); repeatable")
    audio_data: str | None = option(None, help="speech to transcribe: spoken-digits, spoken-numbers, "
                                               "spoken-sentences or a folder / .jsonl of clips with transcripts "
                                               "(the source task:transcribe:data=X, after the --data sources)")
    weights: str | None = option(None, help="comma-separated weights of the --data sources (then --audio-data), "
                                            "in order (default: equal)")
    seq_len: int = option(256, parse=int_at_least(2), help="tokens per conversation (longer ones are skipped)")
    steps: int = default("steps", 200)
    batch_size: int = option(16, parse=positive_int, help="conversations per step per process (before "
                                                          "accumulation)")
    warmup: int = default("warmup", 10)
    out: str = default("out", "runs/sft")
    eval_n: int = option(64, parse=positive_int, help="held-out conversations per source to validate on")
    sample_tokens: int = option(48, parse=nonnegative_int,
                                help="answer one held-out prompt with this many tokens at the end (0: none)")

    def sources(self) -> dict[str, float]:
        """Each source (the --data ones, then --audio-data's transcription) and its weight."""
        sources = self.data + ([transcribe_spec(self.audio_data)] if self.audio_data else [])
        if not sources:
            raise ValueError("give at least one --data source (or --audio-data)")
        return source_weights(sources, self.weights)


class SFTTrainer(Trainer):
    stage = "sft"

    def __init__(self, config: SFTConfig):
        super().__init__(config)
        self.weights = config.sources()

    def setup(self) -> None:
        config = self.config
        self.model, self.tokenizer = load_init(config.init, self.device)
        model_config = self.model.config
        if config.seq_len > model_config.max_seq_len and not config.given("seq_len"):
            config.adapt("seq_len", model_config.max_seq_len,
                         f"is longer than the model's max_seq_len {model_config.max_seq_len}")
        if config.seq_len > model_config.max_seq_len:
            raise ValueError(f"--seq-len {config.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len}")
        self.conversations = {spec: ConversationSource(spec, self.tokenizer, config.seq_len, config.seed, log=self.log,
                                                       config=model_config)
                              for spec in self.weights if not spec.startswith(TEXT)}
        media = {spec: s.media() for spec, s in self.conversations.items()}
        for spec, carried in media.items():
            for name in carried:
                check_encoder(model_config, name, f"--data {spec}")
        self.loaders = {spec: SFTLoader(s, config.batch_size, self.tokenizer.eot_id, model_config, config.seed,
                                        self.d.rank, self.d.world_size) for spec, s in self.conversations.items()}
        cache_dir = Path(config.out).parent / ".token_cache"  # pretraining's default cache: the same corpus is reused
        self.text_validation = {}
        for spec in (s for s in self.weights if s.startswith(TEXT)):
            train, self.text_validation[spec] = text_tokens([spec[len(TEXT):]], self.tokenizer, cache_dir, self.d)
            self.loaders[spec] = TokenLoader(train, config.seq_len, config.batch_size, config.seed, self.d.rank,
                                             self.d.world_size)
        self.loader = Mixture(self.loaders, self.weights, config.seed)
        self.sources = set().union(*media.values())
        self.validation = []
        for spec, source in self.conversations.items():
            held_out = source.validation(config.eval_n, at_most=not config.given("eval_n"))
            if source.task is not None and len(held_out) < config.eval_n:
                self.log(f"note: --eval-n {config.eval_n} (the default): {spec} has {len(held_out)} held-out "
                         f"conversations that fit; validating on those")
            self.validation += held_out

    def find_unused_parameters(self) -> bool:
        return bool(self.sources) and len(self.weights) > 1

    def step_extra(self) -> dict:
        return {"skipped": sum(loader.skipped for loader in self.loaders.values() if isinstance(loader, SFTLoader))}

    def evaluate(self) -> dict:
        """The masked loss on held-out conversations; with text sources, also the loss on
        their held-out windows (about --eval-n of them), as pretraining validates."""
        config = self.config
        result = {}
        if self.validation:
            result["val_loss"] = masked_loss(self.model, self.validation, self.tokenizer.eot_id, self.model.config,
                                             config.batch_size, self.device)
        if self.text_validation:  # the mean over the text sources, each on its first --eval-n windows
            batches = -(-config.eval_n // config.batch_size)
            losses = [evaluate_tokens(self.model, tokens, config.seq_len, config.batch_size, max_batches=batches,
                                      device=self.device)["loss"] for tokens in self.text_validation.values()]
            result["val_text_loss"] = sum(losses) / len(losses)
        return result

    def report(self) -> None:
        super().report()
        print(self.summary_line())
        if self.config.sample_tokens and self.conversations:
            print_sample(self.model, self.tokenizer, next(iter(self.conversations.values())),
                         self.config.sample_tokens)


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p, SFTConfig)


def main(args: argparse.Namespace) -> int:
    return SFTTrainer(options.from_namespace(SFTConfig, args)).run()


def transcribe_spec(audio_data: str) -> str:
    """--audio-data spoken-digits:max_digits=2 -> task:transcribe:data=spoken-digits,max_digits=2."""
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


@torch.no_grad()
def masked_loss(model, examples, pad_id: int, config, batch_size: int, device: str) -> float:
    """Mean next-token loss over the loss-masked tokens of `examples`, in batches (the
    Trainer calls it in eval mode, under the run's autocast)."""
    if not examples:
        return float("nan")
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id, config).items()}
        total += model(**batch, loss_reduction="sum", check_values=False)["loss"].double()
        count += int((batch["labels"][:, 1:] != -100).sum())
    return float(total) / max(count, 1)


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
    out = generate(model, [prompt], n, temperature=0.0, stop_token_ids=[tokenizer.token_id(END)])
    print("sample:", repr(tokenizer.decode(prompt[-40:])), "->", repr(tokenizer.decode(out.tokens[0])))
