"""How well a world model predicts, on held-out episodes, beside baselines that cannot be
gamed by an encoder that ignores what changes:

  mse, mse_copy_state, mse_predict_mean   latent next-state error, and the errors of copying
                                          the current state and of predicting the mean state
  action_accuracy                         inverse dynamics: the action read off (s_t, s_t+1)
  probe_*                                 a linear probe fitted on training states to read the
                                          agent's true position and direction, applied to the
                                          *predicted* next state, to the copied current state,
                                          and to the encoded true next state (its ceiling)
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def encode(world, data, indices, batch_size: int = 256, device: str = "cpu") -> dict[str, np.ndarray]:
    """States, predicted next states and encoded next states (each [N, S_tok * D]), action
    logits and the per-batch latent errors, over the given transitions, in eval mode."""
    was_training = world.training
    world.eval()
    parts: dict[str, list] = {k: [] for k in ("state", "pred", "target", "logits")}
    try:
        for start in range(0, len(indices), batch_size):
            b = data.batch(indices[start : start + batch_size])
            out = world(b["frames"].to(device), b["actions"].to(device), b["next_frames"].to(device))
            for key, value in (("state", out["state"]), ("pred", out["pred_next_state"]),
                               ("target", out["target_state"]), ("logits", out["action_logits"])):
                parts[key].append(value.flatten(1).float().cpu().numpy())
    finally:
        world.train(was_training)
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_world(world, data, device: str = "cpu", probe_samples: int = 4000, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    held = data.split("held_out")
    if len(held) == 0:
        raise ValueError("the collection has no held-out episodes (collect at least 1 + held_out_every episodes)")
    test = encode(world, data, held, device=device)
    pred, target, state = test["pred"], test["target"], test["state"]
    result = {
        "transitions": int(len(held)),
        "mse": float(((pred - target) ** 2).mean()),
        "mse_copy_state": float(((state - target) ** 2).mean()),
        "mse_predict_mean": float(((target.mean(0, keepdims=True) - target) ** 2).mean()),
        "action_accuracy": float((test["logits"].argmax(1) == data.actions[held]).mean()),
        "action_chance": float(np.bincount(data.actions[held]).max() / len(held)),
    }
    t = data.frame_index[held]
    truth = {"position": _cells(data.positions[t + 1]), "direction": data.directions[t + 1]}
    if (data.directions[t] < 0).all():
        return result  # the environment exposes no agent state: no probe
    rng = np.random.default_rng(seed)
    train = data.split("train")
    train = rng.choice(train, size=min(probe_samples, len(train)), replace=False)
    fit = encode(world, data, train, device=device)["state"]
    t_train = data.frame_index[train]
    labels = {"position": _cells(data.positions[t_train]), "direction": data.directions[t_train]}
    scaler = StandardScaler().fit(fit)
    for name in ("position", "direction"):
        probe = LogisticRegression(max_iter=2000).fit(scaler.transform(fit), labels[name])
        for source, features in (("predicted", pred), ("copy", state), ("true_next", target)):
            result[f"probe_{name}_{source}"] = float((probe.predict(scaler.transform(features)) == truth[name]).mean())
    changed = (data.positions[t] != data.positions[t + 1]).any(1) | (data.directions[t] != data.directions[t + 1])
    result["changed_share"] = float(changed.mean())
    return result


def _cells(positions: np.ndarray) -> np.ndarray:
    return positions[:, 0] * 1000 + positions[:, 1]
