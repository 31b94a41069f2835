import json

import pytest
import torch

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



class _Loader:
    """Random token batches from one source; its position is the number of batches served."""

    def __init__(self, vocab_size: int):
        self.vocab_size, self.served = vocab_size, 0

    def next_batch(self, step):
        self.served += 1
        ids = torch.randint(0, self.vocab_size, (2, 8), generator=torch.Generator().manual_seed(step))
        return "text", {"input_ids": ids, "labels": ids}

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]


class _Stage(trainer.Trainer):
    """The smallest stage: a tiny model, random batches, and a validation that reports how it was called."""

    stage = "probe"

    def setup(self):
        from quatrix.tokenizer import train_tokenizer

        self.tokenizer = train_tokenizer(["abc def " * 20], 300)
        self.model = QuatrixLM(tiny_config(vocab_size=self.tokenizer.vocab_size))
        self.loader = _Loader(self.tokenizer.vocab_size)
        self.calls = []

    def evaluate(self):
        self.calls.append((self.model.training, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return {"val_loss": 1.0}


def test_the_trainer_validates_in_eval_mode_without_gradients_under_the_runs_autocast(tmp_path):
    from quatrix.train.options import BatchConfig

    for precision, autocast in (("fp32", False), ("bf16", True)):
        config = BatchConfig(steps=3, eval_every=2, save_every=0, out=str(tmp_path / precision), device="cpu",
                           precision=precision)
        stage = _Stage(config)
        assert stage.run() == 0
        assert stage.calls == [(False, False, autocast)] * 2  # at step 2 and at the end
        assert stage.model.training  # back to training mode after each validation
        assert config.compute_precision == precision
        records = [json.loads(line) for line in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2, 3] and [("val_loss" in r) for r in records] == [False, True, True]
        assert (tmp_path / precision / "checkpoint" / "manifest.json").is_file()
        saved = json.loads((tmp_path / precision / "run_config.json").read_text())
        assert saved["precision"] == precision and saved["args"]["steps"] == 3


def test_the_end_of_stage_line_shows_each_sources_smoothed_loss_as_the_report_does(tmp_path):
    from quatrix.train.options import BatchConfig
    from quatrix.train.report import ends

    records = []
    for step in range(1, 41):
        source = "text" if step % 2 else "image"
        loss = (5.0 if source == "text" else 0.25) + step / 1000
        records.append({"step": step, "loss": loss, "source": source, f"{source}_loss": loss})
    records[-1].update(val_loss=4.5, val_perplexity=90.0)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stage = trainer.Trainer(BatchConfig(steps=40, out=str(tmp_path)))
    stage.stage = "pretrain"
    line = stage.summary_line()
    # 20 steps per source: the last 5% is one step of each, its last one
    assert "training loss image 0.290, text 5.039 (last 5% of steps, per source)" in line
    assert "validation loss 4.500 (perplexity 90.0)" in line
    assert f"{ends(records, 'loss')[1]:.3f}" == "5.039"  # the report's text loss is the same number
