"""Quatrix: language models whose sequence mixer is Q-Compass.

    from quatrix import QuatrixLM, QuatrixConfig
    model = QuatrixLM(QuatrixConfig(use_vision=True))
    out = model(input_ids, pixel_values=pixel_values)   # {"logits": [B, L, V], "loss": ...}
"""

# Each name is imported on first use (PEP 562), so `import quatrix.tokenizer` or a
# `quatrix data prepare` worker does not pay for torch.
_EXPORTS = {
    "MultiHeadAttention": "quatrix.attention", "AudioEncoder": "quatrix.audio", "QuatrixAudio": "quatrix.audio",
    "QuatrixBlock": "quatrix.blocks", "PRESETS": "quatrix.config", "QuatrixConfig": "quatrix.config",
    "preset": "quatrix.config", "generate": "quatrix.engine", "load_legacy_state_dict": "quatrix.legacy",
    "QuatrixLM": "quatrix.model", "count_parameters": "quatrix.params", "parameter_table": "quatrix.params",
    "QCompass": "quatrix.qcompass", "QCompassBi": "quatrix.qcompass", "QuatrixVision": "quatrix.vision",
    "VisionEncoder": "quatrix.vision", "QuatrixWorld": "quatrix.world", "WorldModel": "quatrix.world",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'quatrix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__version__ = "0.3.0"

__all__ = [
    "AudioEncoder", "MultiHeadAttention", "PRESETS", "QCompass", "QCompassBi", "QuatrixAudio",
    "QuatrixBlock", "QuatrixConfig", "QuatrixLM", "QuatrixVision", "QuatrixWorld", "VisionEncoder",
    "WorldModel", "count_parameters", "generate", "load_legacy_state_dict", "parameter_table", "preset",
]
