"""Does a checkpoint look at its images? Caption loss on CLEVR-style scenes with the real
image, with the image zeroed, and with another example's image. A model that reads its
images has a clearly lower loss with the real one; equal losses mean the image prefix is
ignored. Also the spread of the encoder's output tokens, and how much they differ from one
image to the next.

    python benchmarks/vision_probe.py runs/vqa/pretrain/checkpoint [more checkpoints]
"""

from __future__ import annotations

import argparse

import torch

from quatrix.data.images import ImageTextSource
from quatrix.data.pairs import PairLoader
from quatrix.pretrained import load_model_and_tokenizer


@torch.no_grad()
def probe(checkpoint: str, batch: int, seed: int) -> dict[str, float]:
    model, tokenizer = load_model_and_tokenizer(checkpoint)
    if model.vision is None:
        raise SystemExit(f"{checkpoint}: no vision encoder")
    model.eval()
    source = ImageTextSource("clevr", model.config.image_size, seed=seed)
    b = PairLoader(source, tokenizer, 64, batch, seed=seed).next_batch()
    images = {"real": b["pixel_values"], "zeroed": torch.zeros_like(b["pixel_values"]),
              "another example's": b["pixel_values"].roll(1, 0)}
    loss = {name: model(b["input_ids"], labels=b["labels"], pixel_values=px)["loss"].item()
            for name, px in images.items()}
    tokens = model.vision(b["pixel_values"])  # [B, N, H]
    loss["token_std"] = tokens.std().item()
    loss["between_images"] = (tokens - tokens.roll(1, 0)).abs().mean().item()
    return loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=123, help="scenes the training runs (seed 0) never drew")
    args = p.parse_args()
    print("| checkpoint | caption loss, real image | zeroed | another example's image | image tokens: std | "
          "mean abs difference between images |")
    print("|---|---:|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        real, zeroed, other, std, between = probe(checkpoint, args.batch, args.seed).values()
        print(f"| {checkpoint} | {real:.3f} | {zeroed:.3f} | {other:.3f} | {std:.3f} | {between:.3f} |")


if __name__ == "__main__":
    main()
