"""`quatrix info`: the parameter breakdown of a preset or checkpoint and one forward pass."""

from __future__ import annotations

import argparse
import json
import time

import torch

from quatrix.config import MIXERS, PRESETS, preset
from quatrix.model import QuatrixLM
from quatrix.params import count_parameters, parameter_table
from quatrix.validation import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="berry-q0", choices=sorted(PRESETS))
    source.add_argument("--ckpt", help="checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--mixer", choices=MIXERS, help="override the preset's mixer")
    p.add_argument("--q-heads", type=positive_int, help="override the number of heads")
    p.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content (SAVO)")
    p.add_argument("--seq-len", type=positive_int, default=10, help="tokens in the test forward pass")
    p.add_argument("--json", action="store_true", help="print config and counts as JSON")


def main(args: argparse.Namespace) -> int:
    if args.ckpt:
        model = QuatrixLM.from_pretrained(args.ckpt)
        name = args.ckpt
    else:
        overrides = {k: v for k, v in (("mixer", args.mixer), ("q_heads", args.q_heads)) if v is not None}
        if args.savo:
            overrides["q_value_content"] = True
        model = QuatrixLM(preset(args.preset, **overrides))
        name = f"preset {args.preset}"
    cfg = model.config
    counts = count_parameters(model)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts}, indent=2))
    else:
        print(f"Quatrix model: {name} (mixer={cfg.mixer}, H={cfg.hidden_size}, r={cfg.q_rank}, "
              f"heads={cfg.q_heads}, layers={cfg.num_layers}, SAVO={cfg.q_value_content})")
        print(parameter_table(counts))
    line = forward_line(model, args.seq_len)
    if not args.json:
        print(line)
    return 0


@torch.no_grad()
def forward_line(model: QuatrixLM, seq_len: int) -> str:
    """One forward pass on random ids (and a random image where the model has vision), timed."""
    cfg = model.config
    model.eval()
    torch.manual_seed(0)
    input_ids = torch.randint(0, cfg.vocab_size, (1, seq_len))
    start = time.perf_counter()
    logits = model(input_ids)["logits"]
    line = (f"forward: text {tuple(input_ids.shape)} -> logits {tuple(logits.shape)} in "
            f"{(time.perf_counter() - start) * 1000:.0f} ms")
    if model.vision is not None:
        pixels = torch.randn(1, cfg.image_channels, cfg.image_size, cfg.image_size)
        start = time.perf_counter()
        logits = model(input_ids, pixel_values=pixels)["logits"]
        line += (f"; text + image {tuple(pixels.shape)} -> logits {tuple(logits.shape)} "
                 f"in {(time.perf_counter() - start) * 1000:.0f} ms")
    return line
