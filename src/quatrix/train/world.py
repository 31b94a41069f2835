"""The world-model stage: train the QuatrixWorld plugin on collected transitions.

    quatrix world collect --env MiniGrid-Empty-8x8-v0 --episodes 200 --image-size 32 --out data/empty8
    quatrix world train --data data/empty8 --steps 600 --out runs/world-empty8
    quatrix world eval --ckpt runs/world-empty8/checkpoint --data data/empty8

The plugin lives in a QuatrixLM (`use_world_model=True`), as it does in joint training:
`--init` takes an existing checkpoint and trains its world model, or the `--preset` builds
one; either way the language model is frozen and only `model.world` learns. Frame size and
action count come from the collection. Checkpoints, exact resume, metrics, precision and
DDP are the other stages' (quatrix.train.common).
"""

from __future__ import annotations

import argparse
from pathlib import Path


from quatrix.config import PRESETS, preset
from quatrix.data.mixture import Mixture
from quatrix.data.world import WorldData, WorldLoader
from quatrix.eval.world import evaluate_world
from quatrix.model import QuatrixLM
from quatrix.tokenizer import has_tokenizer, load_model_and_tokenizer, load_tokenizer
from quatrix.train import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a JSON file of these options (command-line flags override it)")
    p.add_argument("--data", required=True, help="a collection made by `quatrix world collect`")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--init", help="a checkpoint whose world model to train (one is added if it has none)")
    source.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--tokenizer", default="gpt2", help="with --preset: the tokenizer saved beside the model")
    common.add_run_arguments(p, steps=600, batch_size=64, lr=1e-3, warmup=20, eval_every=200,
                             save_every=200, out="runs/world", batch_help="transitions per step per process")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: die here


def build_model(args, data: WorldData, device: str):
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


def main(args: argparse.Namespace) -> int:
    return common.run_stage(args, run)


def run(args: argparse.Namespace, d: common.Dist) -> int:
    out = Path(args.out)
    data = WorldData(args.data)
    device, checkpoint = common.prepare_run(args, d, out, "world")
    model, tokenizer = build_model(args, data, device)
    if d.is_main:
        common.write_run_config(out, args, model.config, tokenizer, d)
    loader = Mixture({"world": WorldLoader(data, args.batch_size, args.seed, d.rank, d.world_size)}, {"world": 1.0},
                     args.seed)
    optimizers = common.build_optimizers(model, args.optimizer, args.lr, args.weight_decay)
    start = common.restore(checkpoint, model, optimizers, loader, model.config) if checkpoint else 0
    train_model = common.wrap_model(common.MixtureObjective(model), args.compile, d, device)
    metrics = common.Metrics(out, resume_step=start if args.resume else None) if d.is_main else None

    def evaluate() -> dict:
        result = evaluate_world(model.world, data, device)
        return {"val_mse": result["mse"], "val_mse_copy_state": result["mse_copy_state"],
                "val_action_accuracy": result["action_accuracy"]}

    status = common.train_loop(args, d, device, out, model, train_model, tokenizer, optimizers, loader, metrics, start,
                               stage="world", evaluate=evaluate)
    if d.is_main:
        metrics.close()
        if status == 0 and args.stop_after is None:
            common.plot_metrics(out / common.METRICS_NAME, out / common.LOSS_PLOT_NAME, lines={"loss": "train loss"},
                                points={"val_mse": "held-out mse", "val_mse_copy_state": "copy-state mse"})
            common.write_summary(out, out / common.METRICS_NAME, device)
            print(f"world: {args.steps} steps; checkpoint {out / common.CHECKPOINT_DIR}; "
                  f"quatrix world eval --ckpt {out / common.CHECKPOINT_DIR} --data {args.data}")
    return status
