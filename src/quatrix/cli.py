"""The `quatrix` command: one entry point, a dict from subcommand to function."""

from __future__ import annotations

import argparse
import json
import sys
import time

from quatrix.config import PRESETS


def cmd_info(args: argparse.Namespace) -> int:
    """Parameter breakdown of a preset (or checkpoint) and one forward pass on random input."""
    import torch

    from quatrix.config import preset
    from quatrix.model import QuatrixLM
    from quatrix.params import count_parameters, parameter_table

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
    model.eval()
    torch.manual_seed(0)
    input_ids = torch.randint(0, cfg.vocab_size, (1, args.seq_len))
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(input_ids)["logits"]
        text_s = time.perf_counter() - start
        line = f"forward: text {tuple(input_ids.shape)} -> logits {tuple(logits.shape)} in {text_s * 1000:.0f} ms"
        if model.vision is not None:
            pixels = torch.randn(1, cfg.image_channels, cfg.image_size, cfg.image_size)
            start = time.perf_counter()
            logits = model(input_ids, pixel_values=pixels)["logits"]
            line += (f"; text + image {tuple(pixels.shape)} -> logits {tuple(logits.shape)} "
                     f"in {(time.perf_counter() - start) * 1000:.0f} ms")
    if not args.json:
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quatrix", description="Q-Compass language models")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="parameter breakdown and a forward pass of a preset or checkpoint")
    source = info.add_mutually_exclusive_group()
    source.add_argument("--preset", default="berry-q0", choices=sorted(PRESETS))
    source.add_argument("--ckpt", help="checkpoint directory (config.json + model.safetensors)")
    info.add_argument("--mixer", choices=["qcompass", "mha", "mha_rank"], help="override the preset's mixer")
    info.add_argument("--q-heads", type=int, help="override the number of heads")
    info.add_argument("--savo", action="store_true", help="Q-Compass with Q-value content (SAVO)")
    info.add_argument("--seq-len", type=int, default=10, help="tokens in the test forward pass")
    info.add_argument("--json", action="store_true", help="print config and counts as JSON")
    info.set_defaults(func=cmd_info)
    return parser


COMMANDS = {"info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"quatrix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
