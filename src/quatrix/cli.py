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


def parse_token_ids(text: str, source: str) -> list[int]:
    """'15496 995' or '15496,995' -> [15496, 995] (until a tokenizer exists, prompts are ids)."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{source} must be token ids separated by spaces or commas, got {text[:60]!r}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a continuation of a token-id prompt from a checkpoint (or a random preset)."""
    from pathlib import Path

    import torch

    from quatrix.config import preset
    from quatrix.engine import stream
    from quatrix.model import QuatrixLM
    from quatrix.vision import load_image

    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        prompt = parse_token_ids(path.read_text(), str(path))
    else:
        prompt = parse_token_ids(args.prompt, "--prompt")
    torch.manual_seed(args.seed)
    model = QuatrixLM.from_pretrained(args.ckpt) if args.ckpt else QuatrixLM(preset(args.preset))
    pixels = None
    if args.image:
        if model.vision is None:
            raise ValueError("--image given but the model has no vision encoder (use_vision=False)")
        pixels = load_image(args.image, model.config.image_size)[None]
    steps = stream(
        model, [prompt], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        stop_token_ids=args.stop_id, num_samples=args.num_samples, pixel_values=pixels, truncate=args.truncate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    for tokens, active in steps:
        for i, (t, a) in enumerate(zip(tokens.tolist(), active.tolist())):
            if a and t not in args.stop_id:
                rows[i].append(t)
                if args.num_samples == 1:  # stream the single sample as it is made
                    print(t, end=" ", flush=True)
    if args.num_samples == 1:
        print()
    else:
        for i, row in enumerate(rows):
            print(f"[{i}] " + " ".join(map(str, row)))
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

    gen = sub.add_parser("generate", help="stream a continuation of a prompt (token ids for now)")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint directory")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a randomly initialised preset (smoke tests)")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="token ids, e.g. '15496 995'")
    prompt.add_argument("--prompt-file", help="a file of token ids")
    gen.add_argument("--image", help="an image file for models with vision")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--stop-id", type=int, action="append", default=[], help="stop token id (repeatable)")
    gen.add_argument("--num-samples", type=int, default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--truncate", action="store_true", help="keep the prompt's last tokens if it is too long")
    return parser


COMMANDS = {"info": cmd_info, "generate": cmd_generate}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"quatrix {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
