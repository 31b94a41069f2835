"""Weights saved by the original `quatrix` 0.1/0.2 package, loaded into today's QuatrixLM.

Its own module (not quatrix.checkpoint) because it builds a model, and the checkpoint
format sits below the model class."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from quatrix.checkpoint import load_state
from quatrix.config import QuatrixConfig
from quatrix.model import QuatrixLM

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def load_legacy_state_dict(source: Any, config: QuatrixConfig | None = None, **overrides: Any):
    """A QuatrixLM holding weights saved by the original `quatrix` 0.1/0.2 package.

    `source`: a state dict, or a path to one (`torch.save` file or `.safetensors`). Its keys
    (`token_emb`, `pos_emb`, `blocks.N.norm1`, `blocks.N.compass.{state,action,out}_proj`,
    `blocks.N.ffn.{0,3}`, `norm`, `head`, `vision.*`) map onto ours with `compass` renamed
    `mixer`; DDP's `module.` and torch.compile's `_orig_mod.` prefixes are dropped. Without
    `config`, the sizes are read off the tensor shapes; fields that shapes cannot reveal
    (`q_heads`, `dropout`, ...) come from `overrides`.
    """
    state = _read_state_dict(source)
    state = {_modern_key(k): v for k, v in state.items()}
    if config is None:
        config = infer_legacy_config(state, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    model = QuatrixLM(config)
    load_state(model, state, source=str(source) if not isinstance(source, dict) else "<state dict>")
    return model


def _read_state_dict(source: Any) -> dict[str, Tensor]:
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"legacy checkpoint not found: {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch and safetensors raise many types for a bad file
            raise ValueError(f"{path} could not be read as a state dict: {e}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("legacy checkpoint is not a state dict of tensors")
    return state


def _modern_key(key: str) -> str:
    key = re.sub(r"^(module\.|_orig_mod\.)+", "", key)
    return key.replace(".compass.", ".mixer.")


def infer_legacy_config(state: dict[str, Tensor], **overrides: Any) -> QuatrixConfig:
    """Read a config off a (renamed) legacy state dict's tensor shapes."""
    if "token_emb.weight" not in state or "blocks.0.mixer.state_proj.weight" not in state:
        raise ValueError("not a Quatrix language-model state dict: token_emb / blocks.0.compass weights are missing")
    V, H = state["token_emb.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    fields: dict[str, Any] = dict(
        vocab_size=V,
        hidden_size=H,
        num_layers=len(layers),
        max_seq_len=state["pos_emb.weight"].shape[0],
        q_rank=state["blocks.0.mixer.state_proj.weight"].shape[0],
        ffn_ratio=state["blocks.0.ffn.0.weight"].shape[0] // H,
        q_value_content="blocks.0.mixer.content_proj.weight" in state,
        tie_embeddings="head.weight" not in state or torch.equal(state["head.weight"], state["token_emb.weight"]),
    )
    if "vision.patch_embed.weight" in state:
        Hv, C, p, _ = state["vision.patch_embed.weight"].shape
        n_patches = state["vision.pos_emb.weight"].shape[0]
        vision_layers = {int(m.group(1)) for k in state if (m := re.match(r"vision\.blocks\.(\d+)\.", k))}
        fields.update(
            use_vision=True, vision_hidden_size=Hv, image_channels=C, patch_size=p,
            image_size=round(n_patches**0.5) * p, vision_layers=len(vision_layers),
            vision_q_rank=state["vision.blocks.0.mixer.state_proj.weight"].shape[0],
        )
    fields.update(overrides)
    return QuatrixConfig(**fields)
