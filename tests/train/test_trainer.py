import pytest

from conftest import tiny_config
from quatrix import QuatrixLM
from quatrix.train import optim, trainer


def test_due_and_schedule():
    assert [s for s in range(1, 11) if trainer.due(s, 3, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if trainer.due(s, 0, 10)] == [10]
    assert optim.lr_factor(0, 4, 100) == pytest.approx(0.25)
    assert optim.lr_factor(4, 4, 100) == pytest.approx(1.0)
    assert optim.lr_factor(100, 4, 100) == pytest.approx(0.1)
    assert optim.lr_factor(0, 0, 100) == pytest.approx(1.0)


def test_unused_plugins_are_frozen_and_skipped_by_the_optimizer():
    model = QuatrixLM(tiny_config(use_vision=True, use_world_model=True))
    trainer.freeze_unused_plugins(model, {"text": 1.0})
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p.requires_grad for p in model.world.parameters())
    optimized = {id(p) for opt in optim.build_optimizers(model, "adamw", 1e-3, 0.1)
                 for group in opt.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.vision.parameters()}
    model = QuatrixLM(tiny_config(use_vision=True))
    trainer.freeze_unused_plugins(model, {"text": 0.5, "image": 0.5})
    assert all(p.requires_grad for p in model.vision.parameters())


def test_final_lr_sets_where_the_cosine_ends():
    assert optim.lr_factor(100, 4, 100, final=0.5) == pytest.approx(0.5)
    assert optim.lr_factor(60, 4, 100, final=1.0) == pytest.approx(1.0)

