"""Spoken-digit transcription on voices never heard in training: pretrain on text and
audio-text pairs, finetune to the chat format, evaluate against baselines.

    python benchmarks/spoken_digits.py --out runs/spoken-digits

Stages (each skipped when its output exists, so a rerun only redoes what is missing):
  tokenizer quatrix tokenizer train --data shakespeare --vocab-size VOCAB (a small vocabulary
            makes a CPU step ~6x cheaper than GPT-2's 50k; --tokenizer gpt2 to use that)
  pretrain  quatrix pretrain --preset tiny --audio-data spoken-digits:n=CLIPS
            --mixture text=TEXT,audio=1-TEXT --steps PRETRAIN_STEPS
  sft       quatrix sft --init pretrain --audio-data spoken-digits --steps SFT_STEPS
then `quatrix eval --task transcribe:data=spoken-digits --n EVAL_N` on held-out voices:
exact match with its 95% interval, word and character error rates, beside the majority
transcript, a random training transcript, and the same model with the audio zeroed.
Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def quatrix(*argv: str) -> float:
    """Run a quatrix command; its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quatrix.cli", *argv], check=True)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/spoken-digits")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory or gpt2 (default: train one)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--clips", type=int, default=8000, help="synthesized training clips for pretraining")
    p.add_argument("--text-weight", type=float, default=0.2, help="share of pretraining steps on text")
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--sft-steps", type=int, default=600)
    p.add_argument("--eval-n", type=int, default=300)
    args = p.parse_args()
    out = Path(args.out)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    tokenizer = args.tokenizer or str(out / "tokenizer")
    if args.tokenizer is None and not (out / "tokenizer").is_dir():
        quatrix("tokenizer", "train", "--data", "shakespeare", "--vocab-size", str(args.vocab_size), "--out", tokenizer)
    if not (out / "pretrain" / "checkpoint").is_dir():
        results["pretrain_seconds"] = quatrix(
            "pretrain", "--preset", args.preset, "--tokenizer", tokenizer, "--audio-data", f"spoken-digits:n={args.clips}",
            "--mixture", f"text={args.text_weight},audio={1 - args.text_weight}", "--steps", str(args.pretrain_steps),
            "--warmup", str(min(20, args.pretrain_steps // 2)), "--batch-size", "16", "--seq-len", "128", "--eval-every", "500", "--save-every", "500",
            "--sample-tokens", "0", "--out", str(out / "pretrain"))
    if not (out / "sft" / "checkpoint").is_dir():
        results["sft_seconds"] = quatrix(
            "sft", "--init", str(out / "pretrain" / "checkpoint"), "--audio-data", "spoken-digits",
            "--steps", str(args.sft_steps), "--warmup", str(min(10, args.sft_steps // 2)), "--batch-size", "16", "--seq-len", "64", "--eval-every", "200",
            "--save-every", "200", "--sample-tokens", "0", "--out", str(out / "sft"))
    done = subprocess.run([sys.executable, "-m", "quatrix.cli", "eval", "--ckpt", str(out / "sft" / "checkpoint"),
                           "--task", "transcribe:data=spoken-digits", "--n", str(args.eval_n), "--max-new-tokens",
                           "12", "--batch-size", "50", "--json"], check=True, capture_output=True, text=True)
    results["eval"] = json.loads(done.stdout)
    results["args"] = vars(args)
    results_path.write_text(json.dumps(results, indent=2))
    e, b = results["eval"], results["eval"]["baselines"]
    print(f"| transcriber | exact match | WER | CER |\n|---|---|---|---|\n"
          f"| model (held-out voices) | {e['accuracy']:.3f} [{e['ci95'][0]:.3f}–{e['ci95'][1]:.3f}] | "
          f"{e['wer']:.3f} | {e['cer']:.3f} |\n"
          f"| same model, audio zeroed | {b['text_only_accuracy']:.3f} | {b['text_only_wer']:.3f} | "
          f"{b['text_only_cer']:.3f} |\n"
          f"| most frequent transcript | {b['majority_accuracy']:.3f} | {b['majority_wer']:.3f} | "
          f"{b['majority_cer']:.3f} |\n"
          f"| random training transcript | {b['chance_accuracy']:.3f} | {b['chance_wer']:.3f} | "
          f"{b['chance_cer']:.3f} |")
    for kind, accuracy in e.get("accuracy_by_kind", {}).items():
        print(f"  {kind}: {accuracy:.3f} (audio zeroed {b['text_only_by_kind'][kind]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
