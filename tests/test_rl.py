"""group_advantages and grpo_loss against a direct, loop-by-loop computation of the formulas."""

import math

import pytest
import torch

from quatrix.loss import token_logprobs
from quatrix.rl import clip_fraction, group_advantages, grpo_loss, k3_kl


def direct_advantages(rewards, G, scale):
    out = []
    values = rewards.tolist()
    mean_all = sum(values) / len(values)
    batch_std = math.sqrt(sum((v - mean_all) ** 2 for v in values) / (len(values) - 1))
    for g in range(len(values) // G):
        group = values[g * G : (g + 1) * G]
        mean = sum(group) / G
        std = math.sqrt(sum((v - mean) ** 2 for v in group) / (G - 1))  # Bessel
        for v in group:
            out.append((v - mean) / {"group": std + 1e-4, "batch": batch_std + 1e-4, "none": 1.0}[scale])
    return torch.tensor(out)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_the_formula(scale):
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.9, 0.1, 0.0])
    got = group_advantages(rewards, 4, scale)
    torch.testing.assert_close(got, direct_advantages(rewards, 4, scale), rtol=1e-5, atol=1e-6)
    assert got[4:8].abs().max() == 0  # a group of equal rewards teaches nothing


def test_group_advantages_refuse_bad_input():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(8), 3)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(8), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(8), 4, "std")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)


def direct_loss(lp, old, A, mask, ref, eps, eps_high, beta, loss_type, max_len):
    N, T = len(lp), len(lp[0])
    per_seq, total, count = [], 0.0, 0
    for i in range(N):
        seq_sum, seq_count = 0.0, 0
        for t in range(T):
            if mask[i][t] == 0:
                continue
            ratio = math.exp(lp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps_high)
            loss = -min(ratio * A[i], clipped * A[i])
            if beta:
                d = ref[i][t] - lp[i][t]
                loss += beta * (math.exp(d) - d - 1)
            seq_sum += loss
            seq_count += 1
        per_seq.append(seq_sum / max(seq_count, 1))
        total += seq_sum
        count += seq_count
    if loss_type == "grpo":
        return sum(per_seq) / N
    if loss_type == "dapo":
        return total / count
    return total / (N * max_len)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_grpo_loss_matches_the_formula(loss_type, beta, eps_high):
    g = torch.Generator().manual_seed(1)
    N, T = 5, 7
    lp = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    old = lp + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.8  # ratios well outside the clip
    ref = lp + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5)
    A = torch.randn(N, generator=g, dtype=torch.float64)
    mask = (torch.rand(N, T, generator=g) > 0.3).double()
    mask[2] = 0  # a sequence with no completion tokens (a masked truncation)
    got = grpo_loss(lp, old, A, mask, ref if beta else None, epsilon=0.2, epsilon_high=eps_high, beta=beta,
                    loss_type=loss_type, max_completion_length=10)
    want = direct_loss(lp.tolist(), old.tolist(), A.tolist(), mask.tolist(), ref.tolist(), 0.2,
                       0.2 if eps_high is None else eps_high, beta, loss_type, 10)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_grpo_loss_gradient_is_the_policy_gradient_at_ratio_one():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    A = torch.tensor([2.0])
    loss = grpo_loss(lp, lp.detach(), A, torch.ones(1, 3), loss_type="dapo")
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.full((1, 3), -2.0 / 3))  # -A / tokens


def test_dr_grpo_defaults_to_the_tensor_length_and_no_reference_is_needed_at_beta_zero():
    lp = torch.zeros(2, 4)
    A = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert grpo_loss(lp, lp, A, mask, loss_type="dr_grpo").item() == pytest.approx((-2 + 4) / (2 * 4))
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, lp, A, mask, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(lp, lp, A, mask, loss_type="ppo")
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo_loss(lp, lp, A[:1], mask)


def test_k3_is_non_negative_and_zero_at_equality():
    lp = torch.tensor([-1.0, -2.0])
    assert k3_kl(lp, lp).abs().max() == 0
    assert (k3_kl(lp, lp + torch.tensor([0.3, -0.7])) > 0).all()


def test_clip_fraction_counts_only_active_clips():
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 1.0]]))
    old = torch.zeros(1, 4)
    A = torch.tensor([1.0])
    # ratio 1.5 with A > 0 is clipped; ratio 0.5 with A > 0 is not (min picks the unclipped term)
    assert clip_fraction(lp, old, A, torch.ones(1, 4), 0.2).item() == pytest.approx(0.5)


def test_token_logprobs_at_a_temperature():
    logits = torch.randn(2, 3, 11)
    targets = torch.tensor([[1, -100, 4], [0, 2, 10]])
    lp, entropy = token_logprobs(logits, targets, temperature=0.5)
    want = torch.log_softmax(logits / 0.5, -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(lp, want * (targets != -100))
    assert lp[0, 1] == 0 and (entropy > 0).all()
