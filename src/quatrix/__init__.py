"""Quatrix: language models whose sequence mixer is Q-Compass.

    from quatrix import QuatrixLM, QuatrixConfig
    model = QuatrixLM(QuatrixConfig(use_vision=True))
    out = model(input_ids, pixel_values=pixel_values)   # {"logits": [B, L, V], "loss": ...}
"""

from quatrix.attention import MultiHeadAttention
from quatrix.audio import AudioEncoder, QuatrixAudio
from quatrix.blocks import QuatrixBlock
from quatrix.config import PRESETS, QuatrixConfig, preset
from quatrix.engine import generate
from quatrix.legacy import load_legacy_state_dict
from quatrix.model import QuatrixLM
from quatrix.params import count_parameters, parameter_table
from quatrix.qcompass import QCompass, QCompassBi
from quatrix.vision import QuatrixVision, VisionEncoder
from quatrix.world import QuatrixWorld, WorldModel

__version__ = "0.3.0"

__all__ = [
    "AudioEncoder", "MultiHeadAttention", "PRESETS", "QCompass", "QCompassBi", "QuatrixAudio",
    "QuatrixBlock", "QuatrixConfig", "QuatrixLM", "QuatrixVision", "QuatrixWorld", "VisionEncoder",
    "WorldModel", "count_parameters", "generate", "load_legacy_state_dict", "parameter_table", "preset",
]
