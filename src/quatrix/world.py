"""QuatrixWorld: a latent world model built from Q-Compass-Bi blocks (docs/design.md §2).

  StateEncoder     frame [B, C, S, S] -> S learned query tokens + patch tokens -> Q-Compass-Bi
                   -> the query tokens' outputs: state [B, S_tok, D]
  TransitionModel  [state tokens; action token] -> Q-Compass-Bi -> next state [B, S_tok, D].
                   It routes over a real sequence of S_tok + 1 tokens: routing over a single
                   token would be a no-op (softmax over one key is 1).
  ActionHead       inverse dynamics: (state_t, state_t+1) -> action logits: states must
                   carry what the action changed.
  RewardHead       optional: (state_t, action, predicted state_t+1) -> reward.

Training target: MSE between the predicted next state and a stop-gradient encoding of the
next frame, always reported beside two baselines: predicting the batch-mean target state,
and copying the current state. With a stop-gradient target alone the encoder can collapse
to a constant (MSE and both baselines then read 0), so the loss adds the inverse-dynamics
cross-entropy and VICReg's variance hinge on the states.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from quatrix.blocks import QuatrixBlock, encoder_config, init_weights
from quatrix.config import QuatrixConfig
from quatrix.validation import check_image, check_tensor


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class StateEncoder(nn.Module):
    def __init__(self, c: QuatrixConfig):
        super().__init__()
        D, p = c.world_hidden_size, c.world_patch_size
        self.image_size, self.channels = c.world_image_size, c.image_channels
        self.patch_embed = nn.Conv2d(c.image_channels, D, p, stride=p)
        self.pos_emb = nn.Embedding((c.world_image_size // p) ** 2, D)
        self.queries = nn.Parameter(torch.randn(c.world_state_tokens, D) * 0.02)
        block_cfg = encoder_config(c, D, c.world_q_rank)
        self.blocks = nn.ModuleList(QuatrixBlock(block_cfg, causal=False) for _ in range(c.world_layers))
        self.norm = nn.LayerNorm(D)

    def forward(self, frames: Tensor) -> Tensor:
        """frames: [B, C, S, S] -> state tokens [B, S_tok, D]."""
        check_image("frames", frames, self.channels, self.image_size)
        x = self.patch_embed(frames.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # [B, N, D]
        x = x + self.pos_emb.weight
        n_q = self.queries.shape[0]
        x = torch.cat([self.queries.expand(x.shape[0], -1, -1), x], dim=1)  # [B, S_tok + N, D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, :n_q])  # [B, S_tok, D]


class TransitionModel(nn.Module):
    def __init__(self, c: QuatrixConfig):
        super().__init__()
        D = c.world_hidden_size
        self.action_emb = nn.Embedding(c.world_num_actions, D)
        self.slot_emb = nn.Embedding(c.world_state_tokens + 1, D)  # which token is which
        block_cfg = encoder_config(c, D, c.world_q_rank)
        self.blocks = nn.ModuleList(QuatrixBlock(block_cfg, causal=False) for _ in range(c.world_layers))
        self.norm = nn.LayerNorm(D)
        self.delta = nn.Linear(D, D)

    def forward(self, state: Tensor, actions: Tensor) -> Tensor:
        """state [B, S_tok, D], actions [B] -> predicted next state [B, S_tok, D] (residual)."""
        x = torch.cat([state, self.action_emb(actions)[:, None]], dim=1) + self.slot_emb.weight  # [B, S_tok + 1, D]
        for block in self.blocks:
            x = block(x)
        return state + self.delta(self.norm(x[:, : state.shape[1]]))


class QuatrixWorld(nn.Module):
    def __init__(self, config: QuatrixConfig):
        super().__init__()
        c = config
        D, A = c.world_hidden_size, c.world_num_actions
        self.num_actions = A
        self.state_encoder = StateEncoder(c)
        self.transition = TransitionModel(c)
        self.action_head = _mlp(2 * D, 2 * D, A)
        self.reward_head = _mlp(2 * D + D, D, 1) if c.world_reward_head else None
        init_weights(self, c.world_layers)

    def forward(
        self, frames: Tensor, actions: Tensor, next_frames: Tensor | None = None, rewards: Tensor | None = None,
        check_values: bool = True,
    ) -> dict[str, Tensor]:
        """One transition batch. frames, next_frames: [B, C, S, S]; actions: [B] ints; rewards: [B].

        Returns state, pred_next_state, and (when the reward head exists) pred_reward; with
        next_frames also target_state, action_logits, the losses (mse, action_ce,
        variance_hinge, reward_mse; loss = their sum) and the baseline MSEs mse_predict_mean and mse_copy_state.
        check_values=False skips the action-range check (a host sync) for inputs checked at load.
        """
        check_tensor("actions", actions, ndims=(1,), floating=False)
        if actions.shape[0] != frames.shape[0] or (
                check_values and not (0 <= int(actions.min()) and int(actions.max()) < self.num_actions)):
            raise ValueError(f"actions must be [B] ids in [0, {self.num_actions}) matching the batch of frames")
        state = self.state_encoder(frames)  # [B, S_tok, D]
        pred = self.transition(state, actions)  # [B, S_tok, D]
        out = {"state": state, "pred_next_state": pred}
        if self.reward_head is not None:
            summary = torch.cat([state.mean(1), pred.mean(1), self.transition.action_emb(actions)], dim=-1)
            out["pred_reward"] = self.reward_head(summary).squeeze(-1)  # [B]
        if next_frames is None:
            return out
        if next_frames.shape != frames.shape:
            raise ValueError(f"next_frames has shape {tuple(next_frames.shape)}, frames {tuple(frames.shape)}")
        next_state = self.state_encoder(next_frames)
        target = next_state.detach()  # stop-gradient target
        out["target_state"] = target
        out["mse"] = F.mse_loss(pred, target)
        out["action_logits"] = self.action_head(torch.cat([state.mean(1), next_state.mean(1)], dim=-1))
        out["action_ce"] = F.cross_entropy(out["action_logits"], actions)
        out["variance_hinge"] = variance_hinge(state) if state.shape[0] > 1 else state.new_zeros(())
        loss = out["mse"] + out["action_ce"] + out["variance_hinge"]
        if rewards is not None and self.reward_head is not None:
            out["reward_mse"] = F.mse_loss(out["pred_reward"], rewards.to(out["pred_reward"].dtype))
            loss = loss + out["reward_mse"]
        out["loss"] = loss
        with torch.no_grad():
            out["mse_predict_mean"] = F.mse_loss(target.mean(0, keepdim=True).expand_as(target), target)
            out["mse_copy_state"] = F.mse_loss(state.detach(), target)
        return out


def variance_hinge(state: Tensor) -> Tensor:
    """VICReg's variance term (Bardes et al., 2022): mean over features of relu(1 - std over
    the batch). Zero while states are spread; grows as they collapse to one point."""
    flat = state.flatten(1)  # [B, S_tok * D]
    return F.relu(1.0 - torch.sqrt(flat.var(dim=0) + 1e-4)).mean()


WorldModel = QuatrixWorld  # the original package's name
