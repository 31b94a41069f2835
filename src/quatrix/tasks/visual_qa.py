"""Visual question answering on the built-in CLEVR-style scenes: five question types whose
answers are read exactly off the scene record, so accuracy is measurable per type.

  count     how many shapes are there?                       -> "3"
  colour    what colour is the circle?                       -> "red"
  shape     what shape is the blue object?                   -> "square"
  exists    is there a green triangle?                       -> "yes" / "no"
  position  is the red circle left of the blue square?       -> "yes" / "no"
"""

from __future__ import annotations

import numpy as np

from quatrix.data.images import COLOURS, SHAPES, Shape, clevr_scene, draw_scene
from quatrix.tasks.base import Item, Task
from quatrix.media import image_to_tensor

KINDS = ("count", "colour", "shape", "exists", "position")
_SPLITS = {"train": 0, "eval": 1}


class VisualQATask(Task):
    name = "visual_qa"
    media = ("image",)

    def __init__(self, seed: int = 0, image_size: int = 64, max_shapes: int = 4, kinds=KINDS):
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"task visual_qa: unknown question kind(s) {unknown}; choose from {', '.join(KINDS)}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"task visual_qa: image_size must be an int >= 8, got {image_size!r}")
        self.seed, self.image_size, self.max_shapes, self.kinds = seed, image_size, max_shapes, tuple(kinds)

    def generate(self, split: str, index: int) -> Item:
        rng = np.random.default_rng([self.seed, _SPLITS[split], index, 11])
        shapes = clevr_scene(rng, self.max_shapes)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        kind, question, answer = ask(kind, shapes, rng)
        scene = ";".join(f"{s.words()}@{s.x:.3f},{s.y:.3f}" for s in shapes)
        image = image_to_tensor(draw_scene(shapes, self.image_size), self.image_size)
        return Item(question=question, answer=answer, image=image, kind=kind, key=f"{question}|{scene}")

    def score(self, answer: str | None, item: Item) -> float:
        return float(answer is not None and normalise(answer) == normalise(item.answer))


def normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def ask(kind: str, shapes: list[Shape], rng: np.random.Generator) -> tuple[str, str, str]:
    """(kind, question, exact answer) about the scene. A kind the scene cannot support (a
    position question about one shape, the colour of a shape that appears twice) becomes a
    shape question, and says so."""
    if kind == "count":
        return kind, "How many shapes are there?", str(len(shapes))
    if kind == "exists":
        colour, shape = list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
        if rng.random() < 0.5:  # half the time ask about a shape that is there
            s = shapes[int(rng.integers(len(shapes)))]
            colour, shape = s.colour, s.shape
        there = any(s.colour == colour and s.shape == shape for s in shapes)
        return kind, f"Is there a {colour} {shape}?", "yes" if there else "no"
    if kind == "position" and len(shapes) >= 2:
        a, b = (shapes[i] for i in rng.permutation(len(shapes))[:2])
        return kind, f"Is the {a.colour} {a.shape} left of the {b.colour} {b.shape}?", "yes" if a.x < b.x else "no"
    s = shapes[int(rng.integers(len(shapes)))]
    if kind == "colour" and sum(t.shape == s.shape for t in shapes) == 1:
        return kind, f"What colour is the {s.shape}?", s.colour
    return "shape", f"What shape is the {s.colour} object?", s.shape  # (shape, colour) pairs are distinct in a scene
