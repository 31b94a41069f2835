"""`quatrix world collect | train | eval`: world-model data from gymnasium / MiniGrid
environments, training the world model on it (quatrix.train.world), and its evaluation."""

from __future__ import annotations

import argparse
import json

from quatrix.data.world import WorldData, collect
from quatrix.eval.world import evaluate_world
from quatrix.model import QuatrixLM
from quatrix.progress import Progress
from quatrix.train import world as world_stage
from quatrix.validation import int_at_least, nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="world_command", required=True)
    record = sub.add_parser("collect", help="record transitions of an environment, headless")
    record.add_argument("--env", required=True, help="a gymnasium id, e.g. MiniGrid-Empty-8x8-v0")
    record.add_argument("--episodes", type=positive_int, required=True)
    record.add_argument("--policy", choices=["random"], default="random")
    record.add_argument("--seed", type=nonnegative_int, default=0)
    record.add_argument("--image-size", type=int_at_least(8), default=64, help="frames are resized to this square")
    record.add_argument("--max-steps", type=positive_int, default=None, help="cut episodes at this many steps")
    record.add_argument("--out", required=True)
    world_stage.add_arguments(sub.add_parser("train", help="train the world model on a collection"))
    evaluate = sub.add_parser("eval", help="held-out error, inverse dynamics and the grounded probe (JSON)")
    evaluate.add_argument("--ckpt", required=True, help="a checkpoint with a world model")
    evaluate.add_argument("--data", required=True, help="the collection (its held-out episodes are used)")


def main(args: argparse.Namespace) -> int:
    if args.world_command == "train":
        return world_stage.main(args)
    if args.world_command == "eval":
        model = QuatrixLM.from_pretrained(args.ckpt)
        if model.world is None:
            raise ValueError(f"{args.ckpt} has no world model (train one with `quatrix world train`)")
        print(json.dumps(evaluate_world(model.world, WorldData(args.data)), indent=2))
        return 0
    progress = Progress("collect", 0, args.episodes, unit="episodes")
    manifest = collect(args.env, args.episodes, args.out, seed=args.seed, policy=args.policy,
                       image_size=args.image_size, max_steps=args.max_steps, progress=progress.update)
    progress.close()
    print(f"{args.env}: {manifest['episodes']} episodes, {manifest['transitions']:,} transitions in "
          f"{len(manifest['shards'])} shard(s) -> {args.out}")
    return 0
