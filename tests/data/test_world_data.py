import json

import numpy as np
import pytest

from quatrix.cli import main
from quatrix.data.world import WorldData, collect

ENV = "MiniGrid-Empty-5x5-v0"


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    collect(ENV, 12, out, seed=3, image_size=32, max_steps=15, shard_episodes=5)
    return out


def test_collection_has_shards_a_manifest_and_true_agent_state(collected):
    manifest = json.loads((collected / "manifest.json").read_text())
    assert manifest["episodes"] == 12 and len(manifest["shards"]) == 3 and manifest["num_actions"] == 7
    data = WorldData(collected)
    assert len(data) == manifest["transitions"] <= 12 * 15  # each episode ends at the goal or is cut at 15 steps
    batch = data.batch(np.arange(len(data)))
    assert batch["frames"].shape == (len(data), 3, 32, 32) and batch["frames"].abs().max() <= 1.0
    # MiniGrid's actions act on the recorded state: turning left / right changes the direction by one
    left = batch["actions"] == 0
    assert ((batch["directions"][left] - 1) % 4 == batch["next_directions"][left]).all()
    right = batch["actions"] == 1
    assert ((batch["directions"][right] + 1) % 4 == batch["next_directions"][right]).all()
    moved = (batch["positions"] != batch["next_positions"]).any(1)
    assert (batch["actions"][moved] == 2).all()  # only "forward" moves the agent
    # frame t+1 of a step is frame t of the next step in the same episode
    assert (batch["next_frames"][0] == batch["frames"][1]).all()


def test_held_out_episodes_are_disjoint_and_collection_is_seeded(collected, tmp_path):
    data = WorldData(collected)
    train, held = data.split("train"), data.split("held_out")
    assert len(train) + len(held) == len(data) and not set(data.episode_of[train]) & set(data.episode_of[held])
    collect(ENV, 12, tmp_path, seed=3, image_size=32, max_steps=15, shard_episodes=5)
    again = WorldData(tmp_path)
    assert np.array_equal(again.frames, data.frames) and np.array_equal(again.actions, data.actions)


def test_damaged_or_incomplete_collections_are_refused(collected, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(collected, copy)
    shard = copy / "shard_00001.npz"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="shard_00001.npz is missing or does not match"):
        WorldData(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        WorldData(copy)


def test_bad_environment_and_policy_are_named(tmp_path):
    with pytest.raises(ValueError, match="did you mean"):
        collect("MiniGrid-Empty-8x8-v9", 1, tmp_path)
    with pytest.raises(ValueError, match="unknown policy"):
        collect(ENV, 1, tmp_path, policy="expert")


def test_cli_collects_any_minigrid_id(tmp_path, capsys):
    assert main(["world", "collect", "--env", "MiniGrid-DoorKey-6x6-v0", "--episodes", "2", "--max-steps", "5",
                 "--image-size", "16", "--out", str(tmp_path)]) == 0
    assert "2 episodes, 10 transitions" in capsys.readouterr().out
    assert main(["world", "collect", "--env", "NoSuchEnv-v0", "--episodes", "1", "--out", str(tmp_path)]) == 2
