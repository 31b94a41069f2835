"""`QuatrixConfig`: every size and switch of a Quatrix model, as plain data.

Field names follow the published quick start (`hidden_size`, `num_layers`, `q_rank`,
`use_vision`, ...), so configs written for the original package keep working. Choices are
strings, so a config saves as JSON next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from quatrix.io import atomic_write_text

MIXERS = ("qcompass", "mha", "mha_rank")


@dataclass
class QuatrixConfig:
    # --- language model ---
    vocab_size: int = 50257  # V: tokenizer vocabulary (GPT-2 BPE by default)
    hidden_size: int = 512  # H: residual-stream width
    num_layers: int = 7  # N: number of QuatrixBlocks
    max_seq_len: int = 5120  # longest text sequence (learned positions; prefixes have their own)
    q_rank: int = 64  # r: width of the state/action projections W_s, W_a in R^{H x r}
    ffn_ratio: int = 4  # FFN hidden width = ffn_ratio * H; 0: no MLP, the identity (Zoology's recall studies)
    dropout: float = 0.0  # dropout on embeddings, routing weights and FFN outputs
    tie_embeddings: bool = True  # output head shares the token-embedding matrix
    use_vision: bool = False  # build QuatrixVision; images become prefix tokens
    use_audio: bool = False  # build QuatrixAudio; audio becomes prefix tokens
    use_world_model: bool = False  # build the QuatrixWorld plugin (model.world)
    q_heads: int = 1  # h: Q-Compass heads (r and H split into h groups, no extra weights)
    q_value_content: bool = False  # SAVO: gather each token's Q-value state*action, not x
    use_gradient_checkpointing: bool = False  # recompute blocks in backward to save memory
    mixer: str = "qcompass"  # sequence mixer: "qcompass" | "mha" (full rank) | "mha_rank" (rank r)

    # --- QuatrixVision (docs/design.md §2) ---
    image_size: int = 224  # square input images, pixels
    patch_size: int = 16  # Conv2d patch size (224/16 -> 196 patches)
    image_channels: int = 3  # RGB
    vision_hidden_size: int = 384  # encoder width
    vision_q_rank: int = 32  # encoder Q-Compass rank
    vision_layers: int = 3  # Q-Compass-Bi blocks

    # --- QuatrixAudio ---
    sample_rate: int = 16000  # Hz; waveforms must already be at this rate
    n_mels: int = 80  # mel bins of the log-mel frontend
    audio_patch_size: int = 16  # time-frequency patches (frames x mel bins)
    audio_max_seconds: float = 10.0  # longest clip the encoder has positions for
    audio_hidden_size: int = 384  # encoder width
    audio_q_rank: int = 32  # encoder Q-Compass rank
    audio_layers: int = 3  # Q-Compass-Bi blocks

    # --- QuatrixWorld ---
    world_image_size: int = 64  # frames are resized to this square size by the caller
    world_patch_size: int = 8  # frame patch size (64/8 -> 64 patch tokens)
    world_hidden_size: int = 256  # D: state-token width
    world_q_rank: int = 32  # Q-Compass rank in the world model
    world_layers: int = 2  # Q-Compass-Bi blocks in the state encoder and in the transition
    world_state_tokens: int = 4  # S: learned query tokens -> S state tokens per frame
    world_num_actions: int = 7  # discrete actions (MiniGrid has 7)
    world_reward_head: bool = True  # also predict the reward of a transition

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        positive = [f.name for f in fields(self)
                    if f.type in ("int", int) and not f.name.startswith("use_") and f.name != "ffn_ratio"]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"QuatrixConfig.{name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"QuatrixConfig.{name} must be positive, got {value}")
        if isinstance(self.ffn_ratio, bool) or not isinstance(self.ffn_ratio, int) or self.ffn_ratio < 0:
            raise ValueError(f"QuatrixConfig.ffn_ratio must be an int >= 0 (0: no MLP), got {self.ffn_ratio!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"QuatrixConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.audio_max_seconds > 0:
            raise ValueError(f"QuatrixConfig.audio_max_seconds must be positive, got {self.audio_max_seconds}")
        if self.mixer not in MIXERS:
            raise ValueError(f"QuatrixConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.q_value_content and self.mixer != "qcompass":
            raise ValueError("q_value_content (SAVO) is a Q-Compass variant; it needs mixer='qcompass'")
        _divisible("q_rank", self.q_rank, "q_heads", self.q_heads)
        _divisible("hidden_size", self.hidden_size, "q_heads", self.q_heads)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.world_image_size % self.world_patch_size:
            raise ValueError(
                f"world_image_size {self.world_image_size} must be a multiple of "
                f"world_patch_size {self.world_patch_size}"
            )
        if self.n_mels % self.audio_patch_size:
            raise ValueError(f"n_mels {self.n_mels} must be a multiple of audio_patch_size {self.audio_patch_size}")
        if self.audio_max_frames < self.audio_patch_size:
            raise ValueError("audio_max_seconds is shorter than one audio patch")

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_rank(self) -> int:
        """r/h: routing width per head."""
        return self.q_rank // self.q_heads

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def audio_hop_length(self) -> int:
        """10 ms hop: 160 samples at 16 kHz."""
        return self.sample_rate // 100

    @property
    def audio_max_frames(self) -> int:
        return int(math.floor(self.audio_max_seconds * 100))

    @property
    def num_audio_tokens_max(self) -> int:
        return (self.n_mels // self.audio_patch_size) * (self.audio_max_frames // self.audio_patch_size)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuatrixConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QuatrixConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "QuatrixConfig":
        """Parse JSON text (a string starting with "{"), or read a JSON file."""
        if isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{"):
            text, where = text_or_path, "<string>"
        else:
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            text, where = path.read_text(), str(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object of config fields")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "QuatrixConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by:
        raise ValueError(f"QuatrixConfig.{name} ({value}) must be divisible by {by_name} ({by})")


# Named presets, plain data. `tiny` trains in minutes on a CPU; `berry-q0` is the
# published ~50M multimodal configuration.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=50257, hidden_size=128, num_layers=4, max_seq_len=256, q_rank=32,
        image_size=64, patch_size=16, vision_hidden_size=96, vision_q_rank=16, vision_layers=2,
        audio_hidden_size=96, audio_q_rank=16, audio_layers=2, audio_max_seconds=4.0,
        world_hidden_size=64, world_q_rank=16, world_layers=1,
    ),
    "small": dict(
        vocab_size=50257, hidden_size=384, num_layers=6, max_seq_len=1024, q_rank=48,
    ),
    "berry-q0": dict(
        vocab_size=50257, hidden_size=512, num_layers=7, max_seq_len=5120, q_rank=64, use_vision=True,
    ),
}


def preset(name: str, **overrides: Any) -> QuatrixConfig:
    """Build the named preset, with any fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return QuatrixConfig(**{**PRESETS[name], **overrides})
