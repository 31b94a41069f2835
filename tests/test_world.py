import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from quatrix import QuatrixWorld, WorldModel


def batch(B=4):
    return torch.rand(B, 3, 16, 16), torch.randint(0, 7, (B,)), torch.rand(B, 3, 16, 16), torch.rand(B)


def test_outputs_and_baselines():
    assert WorldModel is QuatrixWorld
    world = QuatrixWorld(tiny_config())
    frames, actions, nxt, rewards = batch()
    out = world(frames, actions, nxt, rewards)
    assert out["state"].shape == out["pred_next_state"].shape == (4, 4, 24)
    assert out["action_logits"].shape == (4, 7) and out["pred_reward"].shape == (4,)
    assert_close(out["mse_copy_state"], ((out["state"] - out["target_state"]) ** 2).mean())
    target = out["target_state"]
    assert_close(out["mse_predict_mean"], ((target - target.mean(0)) ** 2).mean())
    assert_close(out["loss"], out["mse"] + out["action_ce"] + out["variance_hinge"] + out["reward_mse"])
    assert not out["target_state"].requires_grad  # stop-gradient target


def test_transition_mixes_state_and_action_tokens():
    world = QuatrixWorld(tiny_config()).eval()
    frames, actions, _, _ = batch()
    state = world.state_encoder(frames)
    a = world.transition(state, actions)
    b = world.transition(state, (actions + 1) % 7)
    assert not torch.allclose(a, b)  # the action token reaches every state token through routing
    assert world.transition.blocks[0].mixer.causal is False


def train_world(seed: int, steps: int = 100) -> tuple[float, dict]:
    """Adam on 8 noise frames from seed: the first loss and the last step's outputs."""
    torch.manual_seed(seed)
    world = QuatrixWorld(tiny_config())
    frames, actions, nxt, rewards = batch(8)
    opt = torch.optim.Adam(world.parameters(), lr=1e-3)
    first = world(frames, actions, nxt, rewards)["loss"].item()
    for _ in range(steps):
        out = world(frames, actions, nxt, rewards)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return first, out


def test_training_reduces_the_loss_without_collapse():
    """Three seeds of four must train without collapse. One float ulp can decide it on this tiny
    encoder: seed 0 collapsed on one thread (the mean-predicting baseline read 0.001) and not on
    two (0.638), the only collapse in seeds 0-7 at either thread count."""
    trained = 0
    for seed in range(4):
        first, out = train_world(seed)
        # a collapsed encoder maps every frame to one state: the predict-mean baseline would read 0
        no_collapse = out["mse_predict_mean"] > 0.05 and out["variance_hinge"] < 0.2
        trained += bool(out["loss"].item() < 0.5 * first and no_collapse)
    assert trained >= 3


@pytest.mark.parametrize(
    "frames, actions, message",
    [
        (torch.rand(2, 3, 20, 20), torch.tensor([0, 1]), "20x20 pixels, expected 16x16"),
        (torch.rand(2, 3, 16, 16), torch.tensor([0, 9]), "actions must be"),
        (torch.rand(2, 3, 16, 16), torch.tensor([0.5, 1.0]), "integer tensor"),
        (torch.rand(2, 3, 16, 16), torch.tensor([0, 1, 2]), "matching the batch"),
    ],
)
def test_bad_world_input(frames, actions, message):
    with pytest.raises(ValueError, match=message):
        QuatrixWorld(tiny_config())(frames, actions)
