"""Checkpoint I/O, the one home of a model folder's format: `config.json` +
`model.safetensors`, written atomically, read back with clear errors.

It knows configs and tensors, not the model class: `QuatrixLM.from_pretrained` builds
itself from what `read_checkpoint` returns and loads it with `load_state`, so this module
sits below the model (docs/design.md, "Layers"). Weights of the original `quatrix` 0.1/0.2
package are read by quatrix.legacy."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from quatrix.config import QuatrixConfig
from quatrix.io import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------- Quatrix checkpoints
def write_checkpoint(state: dict[str, Tensor], config: QuatrixConfig, directory: str | Path) -> Path:
    """Write `directory/model.safetensors` then `directory/config.json`, each atomically.
    With tied embeddings the head (the same tensor as token_emb) is stored once."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if config.tie_embeddings:
        state.pop("head.weight", None)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "library": "quatrix"})
    config.to_json(directory / CONFIG_NAME)
    return directory


def read_checkpoint(directory: str | Path) -> tuple[QuatrixConfig, dict[str, Tensor]]:
    """The config and the tensors of a `write_checkpoint` folder, failing clearly on a
    missing folder or file, a bad config or a corrupt weights file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a Quatrix checkpoint: {name} is missing")
    try:
        config = QuatrixConfig.from_json(directory / CONFIG_NAME)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{directory / CONFIG_NAME} is not a valid Quatrix config: {e}") from None
    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{directory / WEIGHTS_NAME} is corrupt or not a safetensors file: {e}") from None
    return config, state


def load_state(model, state: dict[str, Tensor], source: str) -> None:
    """Strictly load `state` into `model` (a tied head may be absent), or raise a ValueError
    listing the missing, unexpected and mis-shaped tensors."""
    expected = model.state_dict()
    state = dict(state)
    if model.config.tie_embeddings:
        expected.pop("head.weight", None)
        state.pop("head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ValueError(f"checkpoint {source} does not match the model config: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
