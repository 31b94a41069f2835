"""`quatrix export hf`: a checkpoint as a folder that `transformers` loads (the [hf] extra)."""

from __future__ import annotations

import argparse

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="export_format", required=True)
    hf = sub.add_parser("hf", help="a folder that transformers loads (AutoModelForCausalLM, trust_remote_code=True); "
                                   "needs the [hf] extra")
    hf.add_argument("--ckpt", required=True, help="checkpoint directory (with its tokenizer)")
    hf.add_argument("--out", required=True, help="the folder to write (an earlier export there is replaced)")
    hf.add_argument("--dtype", choices=[*DTYPE_NAMES, "float32", "bfloat16", "float16"], default="fp32",
                    help="weights dtype in model.safetensors (fp32 keeps the trained weights exactly; bf16 halves "
                         "the file and the bytes read per token)")


def main(args: argparse.Namespace) -> int:
    try:
        from quatrix.hf.export import export_hf
    except ImportError as e:
        raise ValueError(f"export hf needs transformers: pip install 'quatrix[hf]' ({e})") from None
    out = export_hf(args.ckpt, args.out, dtype=DTYPE_NAMES.get(args.dtype, args.dtype))
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
