"""Image-text data: built-in CLEVR-style scenes and scikit-learn's digits, or the user's
pairs; served as (input_ids, labels, pixel_values) batches in a seeded, resumable order.

  clevr   shapes of known colour, size and position drawn with Pillow, with a caption or a
          question/answer pair whose answer is known exactly (visual QA is measurable)
  digits  scikit-learn's 1,797 bundled 8x8 handwritten digits, upscaled, "a handwritten 7"
  PATH    a .jsonl of {"image": path, "text": caption} (paths relative to the file), or a
          folder of images each with a same-named .txt caption
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quatrix.data.pairs import read_pairs
from quatrix.media import image_to_tensor, load_image

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (150, 60, 190), "cyan": (40, 200, 210)}
SHAPES = ("circle", "square", "triangle")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class Shape:
    shape: str
    colour: str
    large: bool
    x: float  # centre, fraction of the width
    y: float

    def words(self) -> str:
        return f"{'large' if self.large else 'small'} {self.colour} {self.shape}"


def clevr_scene(rng: np.random.Generator, max_shapes: int = 4) -> list[Shape]:
    """1..max_shapes shapes, distinct (shape, colour) pairs, spread over the canvas."""
    n = int(rng.integers(1, max_shapes + 1))
    pairs = rng.permutation(len(SHAPES) * len(COLOURS))[:n]
    colours = list(COLOURS)
    xs = (rng.permutation(4)[:n] + rng.uniform(0.25, 0.75, n)) / 4  # one shape per column band
    return [Shape(SHAPES[p % len(SHAPES)], colours[p // len(SHAPES)], bool(rng.integers(2)), float(x),
                  float(rng.uniform(0.25, 0.75))) for p, x in zip(pairs, xs)]


def draw_scene(shapes: list[Shape], size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        r = size * (0.12 if s.large else 0.07)
        cx, cy = s.x * size, s.y * size
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif s.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def describe(shapes: list[Shape], rng: np.random.Generator) -> str:
    """A caption, or a question with its exact answer."""
    ordered = sorted(shapes, key=lambda s: s.x)  # left to right
    kind = int(rng.integers(4))
    if kind == 0 or len(shapes) == 1:
        return "From left to right: " + ", ".join(f"a {s.words()}" for s in ordered) + "."
    if kind == 1:
        return f"Question: how many shapes are there? Answer: {len(shapes)}."
    if kind == 2:
        s = shapes[int(rng.integers(len(shapes)))]
        return f"Question: what colour is the {s.shape} on the {'left' if s.x < 0.5 else 'right'} half? " \
               f"Answer: {s.colour}." if sum(t.shape == s.shape for t in shapes) == 1 else \
               f"Question: what shape is the {s.colour} object? Answer: {s.shape}."
    a, b = (shapes[i] for i in rng.permutation(len(shapes))[:2])
    return f"Question: is the {a.colour} {a.shape} left of the {b.colour} {b.shape}? Answer: {'yes' if a.x < b.x else 'no'}."


class ImageTextSource:
    """example(i) -> ([3, S, S] image, text), deterministic in (seed, i); `size` examples
    (None: endless, generated)."""

    key = "pixel_values"  # the model's keyword for this medium
    stack = staticmethod(torch.stack)

    def __init__(self, name_or_path: str, image_size: int, seed: int = 0):
        self.image_size, self.seed = image_size, seed
        self.size: int | None
        if name_or_path == "clevr":
            self.kind, self.size = "clevr", None
        elif name_or_path == "digits":
            self.kind = "digits"
            from sklearn.datasets import load_digits

            digits = load_digits()
            self.images, self.labels = digits.images, digits.target  # [N, 8, 8] in 0..16
            self.size = len(self.labels)
        else:
            self.kind = "pairs"
            self.pairs = read_image_pairs(Path(name_or_path))
            self.size = len(self.pairs)

    def example(self, index: int) -> tuple[torch.Tensor, str]:
        from PIL import Image

        if self.kind == "clevr":
            rng = np.random.default_rng([self.seed, index])
            shapes = clevr_scene(rng)
            return image_to_tensor(draw_scene(shapes, self.image_size), self.image_size), describe(shapes, rng)
        if self.kind == "digits":
            gray = (self.images[index] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(gray).resize((self.image_size, self.image_size), Image.Resampling.NEAREST)
            return image_to_tensor(image, self.image_size), f"A handwritten digit {self.labels[index]}."
        path, text = self.pairs[index]
        return load_image(path, self.image_size), text


def read_image_pairs(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs from a folder of images with .txt captions or a .jsonl."""
    return read_pairs(Path(path), "image", IMAGE_SUFFIXES, "caption", "clevr, digits")
