"""The Quatrix language model: token + position embeddings, pre-norm Q-Compass blocks,
final LayerNorm and a head tied to the token embedding (docs/design.md §2). Image and audio
tokens from the encoders are prepended to the text; the loss covers text only."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from quatrix.audio import QuatrixAudio
from quatrix.blocks import QuatrixBlock, init_weights
from quatrix.cache import ModelCache
from quatrix.checkpoint import WEIGHTS_NAME, load_state, read_checkpoint, write_checkpoint
from quatrix.config import QuatrixConfig
from quatrix.loss import head_loss, logits_loss, next_token_loss
from quatrix.media import MODALITIES
from quatrix.qcompass import routing_mask
from quatrix.validation import check_labels, check_same_shape, check_token_ids
from quatrix.vision import QuatrixVision
from quatrix.world import QuatrixWorld


class QuatrixLM(nn.Module):
    def __init__(self, config: QuatrixConfig):
        super().__init__()
        if not isinstance(config, QuatrixConfig):
            raise ValueError(f"QuatrixLM needs a QuatrixConfig, got {type(config).__name__}")
        self.config = config
        H = config.hidden_size
        self.token_emb = nn.Embedding(config.vocab_size, H)
        self.pos_emb = nn.Embedding(config.max_seq_len, H)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(QuatrixBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(H)
        self.head = nn.Linear(H, config.vocab_size, bias=False)
        init_weights(self, config.num_layers)
        if config.tie_embeddings:
            self.head.weight = self.token_emb.weight
        self.vision = QuatrixVision(config) if config.use_vision else None
        self.audio = QuatrixAudio(config) if config.use_audio else None
        self.world = QuatrixWorld(config) if config.use_world_model else None

    @property
    def cfg(self) -> QuatrixConfig:
        """Alias used by the original package."""
        return self.config

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        mel_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        loss_reduction: str = "mean",
        cache: ModelCache | None = None,
        check_values: bool = True,
        return_logits: bool | None = None,
        temperature: float | None = None,
        logits_to_keep: int | None = None,
    ) -> dict[str, Tensor | None]:
        """Next-token language model over [image tokens][audio tokens][text tokens].

        input_ids: [B, L] token ids. labels: [B, L] (-100 = ignored); the loss at position t
        predicts labels[t + 1]. attention_mask: [B, L], 1 for real tokens, 0 for (left)
        padding; positions then count real tokens only. pixel_values: [B, C, S, S] images;
        mel_values: [B, n_mels, F] log-mel (or [B, 1, n_mels, F]) or [B, T] waveforms.
        Returns {"logits": [B, L, V] (text positions only), "loss": scalar, or [B, L-1] per
        token with loss_reduction="none" (0 where ignored), or None without labels}.
        With labels the loss is computed chunk by chunk from the hidden states
        (quatrix.loss.head_loss) and "logits" is None unless return_logits=True; without
        labels the logits are always returned. temperature (with loss_reduction="none"):
        the loss is -log p of each label under logits / temperature, and "entropy" [B, L-1]
        of that distribution is added: GRPO's log-probabilities. logits_to_keep (without
        labels): the logits of the last k positions only, [B, k, V] (a prefill needs one; the
        whole [B, L, V] at a 5,120-token context is 1 GB in fp32).
        cache: a quatrix.cache.ModelCache (quatrix.engine.Cache); the new tokens are appended to it and routed over
        everything cached before (prefill, then one token per step).
        check_values: check that token ids and labels lie in the vocabulary. Each check
        costs a device-to-host sync, so loops whose inputs were checked at the boundary (the
        training stages, the engine's decode steps) pass False; shapes are always checked.
        """
        cfg = self.config
        if loss_reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {loss_reduction!r}")
        hidden = self.hidden_states(input_ids, pixel_values, mel_values, attention_mask, cache, check_values)
        if labels is None:
            if logits_to_keep is not None:
                if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 1:
                    raise ValueError(f"logits_to_keep must be a positive int, got {logits_to_keep!r}")
                hidden = hidden[:, max(0, hidden.shape[1] - logits_to_keep) :]
            return {"logits": self.head(hidden), "loss": None}
        check_labels(labels, input_ids, cfg.vocab_size, values=check_values)
        if return_logits:
            logits = self.head(hidden)  # [B, L, V]
            return {"logits": logits, **logits_loss(logits, labels, loss_reduction, temperature)}
        return {"logits": None, **head_loss(hidden, self.head.weight, labels, loss_reduction, temperature)}

    def hidden_states(self, input_ids: Tensor, pixel_values: Tensor | None = None, mel_values: Tensor | None = None,
                      attention_mask: Tensor | None = None, cache: ModelCache | None = None,
                      check_values: bool = True) -> Tensor:
        """The final (normed) hidden states of the text positions, [B, L, H]: what the output
        head reads. Arguments as `forward`'s."""
        cfg = self.config
        check_token_ids("input_ids", input_ids, cfg.vocab_size, cfg.max_seq_len, values=check_values)
        B, L = input_ids.shape
        prefix = self.encode_prefix(B, pixel_values, mel_values, check_values)  # [B, P, H]
        x, mask = self.embed(input_ids, attention_mask, prefix, cache)
        x = self.run_blocks(x, mask, cache)
        return self.norm(x[:, x.shape[1] - L :])

    def encode_prefix(self, batch: int, pixel_values: Tensor | None, mel_values: Tensor | None,
                      check_values: bool = True) -> Tensor | None:
        """Image then audio tokens, each [B, n, H], concatenated; None if neither is given."""
        parts = []
        for name, value in (("image", pixel_values), ("audio", mel_values)):
            if value is None:
                continue
            kind = MODALITIES[name]
            encoder = getattr(self, kind.encoder)
            if encoder is None:
                raise ValueError(f"{kind.model_input} given but this model has no {kind.encoder} encoder "
                                 f"({kind.config_flag}=False)")
            parts.append(encoder(value, check_values))
        for part in parts:
            if part.shape[0] != batch:
                raise ValueError(f"image/audio batch size {part.shape[0]} does not match input_ids batch size {batch}")
        return torch.cat(parts, dim=1) if parts else None

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None, prefix: Tensor | None,
              cache: ModelCache | None = None):
        """Token + position embeddings after the prefix, and the routing mask (None if unpadded).

        Positions count real tokens only, so a left-padded row embeds like the row alone."""
        B, L = input_ids.shape
        P = 0 if prefix is None else prefix.shape[1]
        if attention_mask is not None:
            check_same_shape("attention_mask", attention_mask, input_ids, "input_ids")
        if cache is not None:  # positions continue from what the cache has seen; it checks max_seq_len
            positions, mask = cache.extend(input_ids.shape[1] if attention_mask is None else attention_mask, P)
        elif attention_mask is None:
            positions, mask = torch.arange(L, device=input_ids.device).expand(B, L), None
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
            keys = torch.cat([attention_mask.bool().new_ones(B, P), attention_mask.bool()], dim=1)
            mask = routing_mask(keys, causal=True)  # [B, 1, P + L, P + L]
        x = self.token_emb(input_ids) + self.pos_emb(positions)  # [B, L, H]
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, P + L, H]
        return self.drop(x), mask

    def run_blocks(self, x: Tensor, mask: Tensor | None, cache: ModelCache | None = None) -> Tensor:
        if cache is not None:
            for block, layer_cache in zip(self.blocks, cache.layers):
                x = block(x, mask, layer_cache)
            return x
        recompute = self.config.use_gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, mask, use_reentrant=False) if recompute else block(x, mask)
        return x

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors into `directory`, each atomically."""
        write_checkpoint(self.state_dict(), self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "QuatrixLM":
        """The model a `save_pretrained` folder holds; every missing, unexpected or
        mis-shaped tensor is named if the weights and the config disagree."""
        config, state = read_checkpoint(directory)
        model = cls(config)
        load_state(model, state, source=str(Path(directory) / WEIGHTS_NAME))
        return model.to(map_location)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["QuatrixLM", "next_token_loss"]
