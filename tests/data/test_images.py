import json

import numpy as np
import pytest
import torch
from PIL import Image

from quatrix.data.images import ImageTextSource, clevr_scene, describe, draw_scene
from quatrix.data.pairs import PairLoader
from quatrix.data.mixture import Mixture, parse_mixture
from quatrix.data.text import TokenLoader
from quatrix.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Question: how many shapes are there? Answer: 3. a small red circle " * 20], 300)


def test_clevr_answers_are_exact():
    rng = np.random.default_rng(0)
    for _ in range(50):
        shapes = clevr_scene(rng)
        text = describe(shapes, rng)
        if "how many shapes" in text:
            assert text.endswith(f"Answer: {len(shapes)}.")
        if text.startswith("Question: is the"):
            a, b = [s for s in shapes if f"the {s.colour} {s.shape}" in text][:2]
            first = text.index(f"{a.colour} {a.shape}") < text.index(f"{b.colour} {b.shape}")
            left, right = (a, b) if first else (b, a)
            assert text.endswith("yes.") == (left.x < right.x)


def test_clevr_pixels_show_the_described_colours():
    rng = np.random.default_rng(1)
    shapes = clevr_scene(rng)
    image = np.asarray(draw_scene(shapes, 64))
    for s in shapes:
        px = image[int(s.y * 64), int(s.x * 64)]  # the centre of each shape has its colour
        from quatrix.data.images import COLOURS
        assert tuple(px) == COLOURS[s.colour]


@pytest.mark.parametrize("name", ["clevr", "digits"])
def test_builtin_sources_are_deterministic(name):
    a, b = ImageTextSource(name, 32, seed=3), ImageTextSource(name, 32, seed=3)
    img, text = a.example(5)
    assert img.shape == (3, 32, 32) and -1 <= img.min() and img.max() <= 1
    img2, text2 = b.example(5)
    assert torch.equal(img, img2) and text == text2
    if name == "digits":
        assert a.size == 1797 and text.startswith("A handwritten digit")


def test_user_pairs_from_jsonl_and_folder(tmp_path):
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "red.txt").write_text("a red image\n")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "red.png", "text": "red!"}) + "\n")
    img, text = ImageTextSource(str(tmp_path / "pairs.jsonl"), 16).example(0)
    assert text == "red!" and img.shape == (3, 16, 16) and img[0].mean() > 0.9 and img[1].mean() < -0.9
    assert ImageTextSource(str(tmp_path), 16).example(0)[1] == "a red image"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"pairs.jsonl": '{"image": "gone.png", "text": "x"}\n'}, "pairs.jsonl:1: image not found"),
        ({"pairs.jsonl": '{"img": "a.png"}\n'}, "pairs.jsonl:1: expected"),
        ({"pairs.jsonl": "\n"}, "holds no image-text pairs"),
    ],
)
def test_bad_pairs(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ImageTextSource(str(tmp_path / "pairs.jsonl"), 16)


def test_unreadable_image_and_missing_caption(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "broken.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="could not read image .*broken.png"):
        ImageTextSource(str(tmp_path / "pairs.jsonl"), 16).example(0)
    with pytest.raises(ValueError, match="has no caption file broken.txt"):
        ImageTextSource(str(tmp_path), 16)


def test_image_loader_batches_and_resume(tokenizer):
    loader = PairLoader(ImageTextSource("digits", 16), tokenizer, seq_len=40, batch_size=4, seed=0)
    batch = loader.next_batch()
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids"].shape == (4, 40)
    eot = tokenizer.eot_id
    row, labels = batch["input_ids"][0], batch["labels"][0]
    text = tokenizer.decode(row[labels != -100].tolist())
    assert text.startswith("<|endoftext|>A handwritten digit") and text.endswith("<|endoftext|>")
    assert (labels[labels == -100].numel() == 0) or (row[labels == -100] == eot).all()
    state = loader.state_dict()
    after = loader.next_batch()
    again = PairLoader(ImageTextSource("digits", 16), tokenizer, seq_len=40, batch_size=4, seed=0)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch()["pixel_values"], after["pixel_values"])


def test_mixture_picks_sources_by_weight_and_step(tokenizer):
    text = TokenLoader(np.arange(5000, dtype=np.uint16) % 300, 16, 2)
    images = PairLoader(ImageTextSource("clevr", 16), tokenizer, 16, 2)
    mix = Mixture({"text": text, "image": images}, parse_mixture("text=0.7,image=0.3"), seed=0)
    names = [mix.next_batch(step)[0] for step in range(200)]
    assert 0.6 < names.count("text") / 200 < 0.8
    again = Mixture({"text": text, "image": images}, parse_mixture("text=0.7,image=0.3"), seed=0)
    assert [again.next_batch(step)[0] for step in range(200)] == names  # depends on (seed, step) only
    name, batch = mix.next_batch(0)
    assert set(batch) >= {"input_ids", "labels"}


@pytest.mark.parametrize("spec, message", [("text=1,video=1", "NAME in"), ("text=1,text=2", "twice"), ("text", "NAME=WEIGHT"),
                                           ("text=x", "not a number"), ("text=0", "sum to zero"),
                                           ("text=-1,image=2", "non-negative"), ("text=1,image=inf", "finite")])
def test_bad_mixture(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_mixture(spec)
