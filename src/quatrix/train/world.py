"""The world-model stage: train the QuatrixWorld plugin on collected transitions.

    quatrix world collect --env MiniGrid-Empty-8x8-v0 --episodes 200 --image-size 32 --out data/empty8
    quatrix world train --data data/empty8 --steps 600 --out runs/world-empty8
    quatrix world eval --ckpt runs/world-empty8/checkpoint --data data/empty8

The plugin lives in a QuatrixLM (`use_world_model=True`), as it does in joint training:
`--init` takes an existing checkpoint and trains its world model, or the `--preset` builds
one; either way the language model is frozen and only `model.world` learns. Frame size and
action count come from the collection. Checkpoints, exact resume, metrics, precision and
DDP are the Trainer's (quatrix.train.trainer).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from quatrix.config import PRESETS, preset
from quatrix.data.mixture import Mixture
from quatrix.data.world import WorldData, WorldLoader
from quatrix.eval.world import evaluate_world
from quatrix.model import QuatrixLM
from quatrix.pretrained import has_tokenizer, load_model_and_tokenizer
from quatrix.tokenizer import load_tokenizer
from quatrix.train.metrics import LOSS_PLOT_NAME, plot_metrics, write_summary
from quatrix.train import options
from quatrix.train.options import BatchConfig, default, option
from quatrix.train.trainer import MixtureObjective, Trainer
from quatrix.validation import positive_int


@dataclass
class WorldConfig(BatchConfig):
    data: str | None = option(required=True, help="a collection made by `quatrix world collect`")
    init: str | None = option(None, group="model", help="a checkpoint whose world model to train (one is added if "
                                                        "it has none)")
    preset: str = option("tiny", group="model", choices=tuple(sorted(PRESETS)))
    tokenizer: str = option("gpt2", help="with --preset: the tokenizer saved beside the model")
    steps: int = default("steps", 600)
    batch_size: int = option(64, parse=positive_int, help="transitions per step per process (before accumulation)")
    warmup: int = default("warmup", 20)
    eval_every: int = default("eval_every", 200)
    save_every: int = default("save_every", 200)
    out: str = default("out", "runs/world")


class WorldTrainer(Trainer):
    stage = "world"

    def __init__(self, config: WorldConfig):
        super().__init__(config)
        self.data = WorldData(config.data)

    def setup(self) -> None:
        self.model, self.tokenizer = build_model(self.config, self.data, self.device)
        self.sources = {"world"}
        self.loader = Mixture({"world": WorldLoader(self.data, self.config.batch_size, self.config.seed, self.d.rank,
                                                    self.d.world_size)}, {"world": 1.0}, self.config.seed)

    def objective(self) -> torch.nn.Module:
        return MixtureObjective(self.model)

    def find_unused_parameters(self) -> bool:
        return False

    def evaluate(self) -> dict:
        result = evaluate_world(self.model.world, self.data, self.device)
        return {"val_mse": result["mse"], "val_mse_copy_state": result["mse_copy_state"],
                "val_action_accuracy": result["action_accuracy"]}

    def report(self) -> None:
        plot_metrics(self.metrics_path, self.out / LOSS_PLOT_NAME, lines={"loss": "train loss"},
                     points={"val_mse": "held-out mse", "val_mse_copy_state": "copy-state mse"})
        write_summary(self.out, self.metrics_path, self.device)
        print(f"world: {self.config.steps} steps; checkpoint {self.out / 'checkpoint'}; "
              f"quatrix world eval --ckpt {self.out / 'checkpoint'} --data {self.config.data}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_arguments(p, WorldConfig)


def main(args: argparse.Namespace) -> int:
    return WorldTrainer(options.from_namespace(WorldConfig, args)).run()


def build_model(args: WorldConfig, data: WorldData, device: str):
    """The LM holding the world model (frozen apart from it) and the tokenizer saved beside it."""
    sizes = {"use_world_model": True, "world_image_size": data.manifest["image_size"],
             "world_num_actions": data.num_actions}
    if args.init:
        if not has_tokenizer(args.init):
            raise FileNotFoundError(f"--init {args.init}: no tokenizer saved beside the model")
        base, tokenizer = load_model_and_tokenizer(args.init)
        model = QuatrixLM(base.config.replace(**sizes))
        state = {k: v for k, v in base.state_dict().items() if not k.startswith("world.")}
        model.load_state_dict(state, strict=False)  # a world model of other sizes starts afresh
    else:
        tokenizer = load_tokenizer(args.tokenizer)
        model = QuatrixLM(preset(args.preset, vocab_size=tokenizer.vocab_size, **sizes))
    if data.manifest["image_size"] % model.config.world_patch_size:
        raise ValueError(f"frames of {data.manifest['image_size']} px do not split into "
                         f"{model.config.world_patch_size}-px patches; collect with another --image-size")
    model.requires_grad_(False)
    model.world.requires_grad_(True)
    return model.to(device), tokenizer
