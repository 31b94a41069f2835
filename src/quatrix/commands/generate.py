"""`quatrix generate`: stream a continuation of a prompt, as text when the checkpoint carries
a tokenizer, as token ids otherwise (or with --ids; a random preset has no tokenizer)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from quatrix.chat import END, render
from quatrix.config import PRESETS, preset
from quatrix.detokenize import IncrementalDecoder
from quatrix.engine import stream
from quatrix.media import MODALITIES, load_media, model_inputs, modality
from quatrix.model import QuatrixLM
from quatrix.precision import DTYPE_HELP, DTYPES, PRECISIONS, autocast_context, inference_dtype, resolve_precision
from quatrix.pretrained import has_tokenizer, load_model_and_tokenizer
from quatrix.tasks.transcribe import INSTRUCTION
from quatrix.validation import float_in, nonnegative_float, nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint directory")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a randomly initialised preset (smoke tests)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text (or token ids such as '15496 995' without a tokenizer); optional "
                                         "with --image or --audio")
    prompt.add_argument("--prompt-file", help="a file holding the prompt")
    p.add_argument("--ids", action="store_true", help="the prompt is token ids even if a tokenizer exists")
    p.add_argument("--image", help="an image file for models with vision")
    p.add_argument("--audio", help="an audio file (WAV, FLAC, any rate) for models with audio: with no --prompt, "
                                   "the model transcribes it")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user turn of the chat format and print the assistant's answer "
                        "(for finetuned models)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=nonnegative_float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1.0 = off")
    p.add_argument("--stop-id", type=nonnegative_int, action="append", default=[], help="stop token id (repeatable)")
    p.add_argument("--num-samples", type=positive_int, default=1)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--truncate", action="store_true", help="keep the prompt's last tokens if it is too long")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16 autocast for the forward passes (auto: where the device has native bf16)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help=DTYPE_HELP)
    p.add_argument("--compile", action="store_true",
                   help="decode with a torch.compile'd static-shape step: faster per token, after a compile of tens "
                        "of seconds (worth it for long generations)")


def parse_token_ids(text: str, source: str) -> list[int]:
    """'15496 995' or '15496,995' -> [15496, 995]."""
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"{source} must be token ids separated by spaces or commas, got {text[:60]!r}") from None


def main(args: argparse.Namespace) -> int:
    text = read_prompt(args)
    torch.manual_seed(args.seed)
    tokenizer = None
    if args.ckpt and has_tokenizer(args.ckpt):
        model, tokenizer = load_model_and_tokenizer(args.ckpt)
    else:
        model = QuatrixLM.from_pretrained(args.ckpt) if args.ckpt else QuatrixLM(preset(args.preset))
    inference_dtype(model, args.dtype)
    if args.chat and (args.ids or tokenizer is None):
        raise ValueError("--chat needs a checkpoint with a tokenizer (and text, not --ids)")
    as_text = tokenizer is not None and not args.ids
    prompt, stops = prompt_ids(args, text, tokenizer if as_text else None)
    given = [name for name in MODALITIES if getattr(args, name)]
    for name in given:
        encoder = modality(name).encoder
        if getattr(model, encoder) is None:
            raise ValueError(f"--{name} given but the model has no {encoder} encoder "
                             f"({modality(name).config_flag}=False)")
    media = {name: load_media(name, getattr(args, name), model.config)[None] for name in given}
    steps = stream(model, [prompt], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, stop_token_ids=stops, num_samples=args.num_samples, truncate=args.truncate,
                   generator=torch.Generator().manual_seed(args.seed), compile=args.compile, **model_inputs(media))
    rows: list[list[int]] = [[] for _ in range(args.num_samples)]
    decoder = IncrementalDecoder(tokenizer) if as_text and args.num_samples == 1 else None
    device = str(next(model.parameters()).device)
    with autocast_context(device, resolve_precision(args.precision, device)):
        for tokens, active in steps:
            for i, (t, a) in enumerate(zip(tokens.tolist(), active.tolist())):
                if a and t not in stops:
                    rows[i].append(t)
                    if decoder is not None:
                        print(decoder.push(t), end="", flush=True)

    def show(ids: list[int]) -> str:
        return tokenizer.decode(ids) if as_text else " ".join(map(str, ids)) + " "

    if decoder is not None:
        print(decoder.flush())
    elif args.num_samples == 1:
        print(show(rows[0]))
    else:
        for i, row in enumerate(rows):
            print(f"[{i}] " + show(row))
    return 0


def read_prompt(args) -> str | None:
    text = args.prompt
    if text is None and not args.prompt_file and not (args.image or args.audio):
        raise ValueError("give --prompt or --prompt-file (or --image / --audio)")
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        text = path.read_text()
    return text


def prompt_ids(args, text: str | None, tokenizer) -> tuple[list[int], list[int]]:
    """The prompt's ids and the stop ids: token ids as given without a tokenizer; with --chat
    one user turn of the chat format (with the media slots), ready for the answer; else, as
    in pretraining, [media] <|endoftext|> caption or transcript."""
    if tokenizer is None:
        return parse_token_ids(text, "--prompt-file" if args.prompt_file else "--prompt"), list(args.stop_id)
    if args.chat:
        if text is None:
            text = INSTRUCTION if args.audio else "Describe the image."
        media = {name: getattr(args, name) for name in MODALITIES if getattr(args, name)}
        prompt = render([{"role": "user", "content": text, **media}], tokenizer, add_generation_prompt=True)[0]
        return prompt, [*args.stop_id, tokenizer.token_id(END)]
    prompt = ([tokenizer.eot_id] if args.image or args.audio else []) + tokenizer.encode(text or "")
    return prompt, [*args.stop_id, tokenizer.eot_id]
