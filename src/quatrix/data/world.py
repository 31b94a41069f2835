"""Transitions from real gymnasium environments for the world model, collected headless.

    collect("MiniGrid-Empty-8x8-v0", episodes=200, out="data/empty8", seed=0)
    data = WorldData("data/empty8"); batch = data.batch(data.split("train")[:64])

Any registered gymnasium id with discrete actions and `render_mode="rgb_array"` works
(every MiniGrid id among them, once `minigrid` is imported). Each step records
(frame_t, action_t, reward, frame_t+1, done) and, where the environment exposes them (MiniGrid
does), the agent's true position and direction at t and t+1: the ground truth a probe reads
back from the model's states. Frames are resized to `image_size` and stored as uint8.

On disk: `shard_NNNNN.npz` files of whole episodes (frames of an episode are stored once,
contiguous: frame_t+1 of a step is the frame after frame_t), each written atomically, then
`manifest.json`, written last, with every shard's size and SHA-256: a collection without a
manifest is incomplete, and a shard that does not match it is refused by name. Episodes
whose index is a multiple of HELD_OUT_EVERY form the held-out split.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import numpy as np
import torch

from quatrix.data.order import EpochOrder

from quatrix.io import atomic_path, atomic_write_json, sha256_file

MANIFEST = "manifest.json"
HELD_OUT_EVERY = 10  # episode i is held out when i % 10 == 0
POLICIES = ("random",)


def make_env(env_id: str):
    """A headless gymnasium environment (MiniGrid ids are registered on import)."""
    import gymnasium as gym

    try:
        import minigrid  # noqa: F401 (registers the MiniGrid ids)
    except ImportError:
        pass
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (MiniGrid ids need `pip install minigrid`)"
        raise ValueError(f"unknown environment {env_id!r}{hint}")
    env = gym.make(env_id, render_mode="rgb_array")
    if not hasattr(env.action_space, "n"):
        raise ValueError(f"{env_id}: the world model takes discrete actions; this one has {env.action_space}")
    return env


def _frame(env, size: int) -> np.ndarray:
    from PIL import Image

    frame = env.render()
    if frame.shape[:2] != (size, size):
        frame = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))
    return frame.astype(np.uint8)


def _agent(env) -> tuple[tuple[int, int], int]:
    """The agent's (x, y) and direction, or (-1, -1) and -1 where the environment has none."""
    inner = env.unwrapped
    pos, direction = getattr(inner, "agent_pos", None), getattr(inner, "agent_dir", None)
    if pos is None or direction is None:
        return (-1, -1), -1
    return (int(pos[0]), int(pos[1])), int(direction)


def collect(env_id: str, episodes: int, out: str | Path, *, seed: int = 0, policy: str = "random",
            image_size: int = 64, max_steps: int | None = None, shard_episodes: int = 50, progress=None) -> dict:
    """Run `episodes` episodes with `policy` and write them under `out`; returns the manifest."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if episodes < 1 or image_size < 8 or (max_steps is not None and max_steps < 1):
        raise ValueError("episodes must be >= 1, image_size >= 8 and max_steps >= 1")
    env = make_env(env_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the collection is incomplete until the manifest is back
    rng = np.random.default_rng(seed)
    shards, buffer = [], []
    for episode in range(episodes):
        buffer.append(_episode(env, episode, seed, rng, image_size, max_steps))
        if progress:
            progress(episode + 1)
        if len(buffer) == shard_episodes or episode == episodes - 1:
            shards.append(_write_shard(out, len(shards), buffer))
            buffer = []
    env.close()
    manifest = {"env": env_id, "episodes": episodes, "seed": seed, "policy": policy, "image_size": image_size,
                "num_actions": int(env.action_space.n), "held_out_every": HELD_OUT_EVERY,
                "transitions": sum(s["transitions"] for s in shards), "shards": shards}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _episode(env, index: int, seed: int, rng: np.random.Generator, size: int, max_steps: int | None) -> dict:
    env.reset(seed=seed * 1_000_003 + index)
    frames, positions, directions = [_frame(env, size)], [], []
    actions, rewards, dones = [], [], []
    pos, direction = _agent(env)
    positions.append(pos)
    directions.append(direction)
    while True:
        action = int(rng.integers(env.action_space.n))
        _, reward, terminated, truncated, _ = env.step(action)
        frames.append(_frame(env, size))
        pos, direction = _agent(env)
        positions.append(pos)
        directions.append(direction)
        actions.append(action)
        rewards.append(float(reward))
        done = bool(terminated or truncated or (max_steps is not None and len(actions) >= max_steps))
        dones.append(terminated or truncated)
        if done:
            break
    return {"index": index, "frames": np.stack(frames), "actions": np.array(actions, np.int64),
            "rewards": np.array(rewards, np.float32), "dones": np.array(dones, bool),
            "positions": np.array(positions, np.int64), "directions": np.array(directions, np.int64)}


def _write_shard(out: Path, number: int, episodes: list[dict]) -> dict:
    name = f"shard_{number:05d}.npz"
    arrays = {key: np.concatenate([e[key] for e in episodes]) for key in
              ("frames", "actions", "rewards", "dones", "positions", "directions")}
    arrays["episode"] = np.array([e["index"] for e in episodes], np.int64)
    arrays["steps"] = np.array([len(e["actions"]) for e in episodes], np.int64)
    with atomic_path(out / name) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return {"file": name, "episodes": len(episodes), "transitions": int(arrays["steps"].sum()),
            "bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}


class WorldData:
    """A collection on disk, checked against its manifest, as transitions.

    `split(name)` gives the transition indices of the "train" or "held_out" episodes;
    `batch(indices)` the tensors QuatrixWorld trains on: frames and next_frames [B, 3, S, S]
    in [-1, 1], actions [B], rewards [B], and positions [B, 2] / directions [B] at t and t+1."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {MANIFEST}; collect the data first (an interrupted collection "
                                    "has none)")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg})") from None
        parts = {key: [] for key in ("frames", "actions", "rewards", "dones", "positions", "directions")}
        self.frame_index, self.episode_of = [], []
        offset = 0
        for shard in self.manifest["shards"]:
            file = directory / shard["file"]
            if not file.is_file() or file.stat().st_size != shard["bytes"] or sha256_file(file) != shard["sha256"]:
                raise ValueError(f"{file} is missing or does not match {path} (truncated or altered); collect again")
            with np.load(file) as data:
                for key in parts:
                    parts[key].append(data[key])
                for episode, steps in zip(data["episode"].tolist(), data["steps"].tolist()):
                    self.frame_index += range(offset, offset + steps)  # frame t of each step; t+1 follows it
                    self.episode_of += [episode] * steps
                    offset += steps + 1
        self.frames, self.positions, self.directions = (np.concatenate(parts[k]) for k in ("frames", "positions",
                                                                                           "directions"))
        self.actions, self.rewards, self.dones = (np.concatenate(parts[k]) for k in ("actions", "rewards", "dones"))
        self.frame_index, self.episode_of = np.array(self.frame_index), np.array(self.episode_of)
        self.num_actions = int(self.manifest["num_actions"])

    def __len__(self) -> int:
        return len(self.actions)

    def split(self, name: str) -> np.ndarray:
        held = self.episode_of % self.manifest["held_out_every"] == 0
        if name not in ("train", "held_out"):
            raise ValueError(f"unknown split {name!r}; use train or held_out")
        return np.flatnonzero(held if name == "held_out" else ~held)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices)
        t = self.frame_index[indices]

        def image(i):
            return torch.from_numpy(self.frames[i].astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0

        return {"frames": image(t), "next_frames": image(t + 1), "actions": torch.from_numpy(self.actions[indices]),
                "rewards": torch.from_numpy(self.rewards[indices]),
                "positions": torch.from_numpy(self.positions[t]), "next_positions": torch.from_numpy(self.positions[t + 1]),
                "directions": torch.from_numpy(self.directions[t]),
                "next_directions": torch.from_numpy(self.directions[t + 1])}


class WorldLoader:
    """Batches of training transitions in a seeded order, reshuffled every epoch; rank r
    takes its rows of each global batch; the position is plain data."""

    def __init__(self, data: WorldData, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.data = data
        self.indices = data.split("train")
        if len(self.indices) < batch_size * world_size:
            raise ValueError(f"{len(self.indices)} training transitions: fewer than one batch of "
                             f"{batch_size * world_size}; collect more episodes")
        self.order = EpochOrder(len(self.indices), batch_size, seed, rank, world_size)

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.data.batch(self.indices[self.order.next()])
        return {k: batch[k] for k in ("frames", "actions", "next_frames", "rewards")}

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
