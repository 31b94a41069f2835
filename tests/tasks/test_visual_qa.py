import pytest
import torch

from quatrix.tasks import load_task


def test_visual_qa_items_carry_an_image_and_an_exact_answer():
    task = load_task("visual_qa", image_size=32)
    items = task.eval_items(60)
    assert {i.kind for i in items} == {"count", "colour", "shape", "exists", "position"}
    for item in items:
        assert item.image.shape == (3, 32, 32) and item.image.dtype == torch.float32
        assert task.score(item.answer.upper() + ".", item) == 1.0 and task.score("maybe", item) == 0.0
        assert task.prompt(item)[1]["image"] is item.image
    with pytest.raises(ValueError, match="unknown question kind"):
        load_task("visual_qa", kinds=["size"])
