"""Images and audio on their way into the model: the one table of modalities, and the one
reading and preprocessing of each, for training and inference alike.

    MODALITIES["image"].model_input      # "pixel_values", the QuatrixLM keyword
    load_media("image", "cat.png", config)   # [3, S, S] in [-1, 1], at the model's image size
    batch_media("audio", clips, config)      # [B, T_max] waveforms, each padded with silence
    check_encoder(config, "audio", "--data spoken.jsonl")   # refuses a model without the encoder

A modality's name ("image", "audio") is the key a chat message, a task item, an SFT example
and a mixture source use; everything else about it (the model keyword, the config switch,
the encoder) is read from `MODALITIES`, so a third one is one row here. The readers give
clear errors for a missing, unreadable, empty, too short or too long file.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Modality:
    name: str  # the key in messages, task items, examples and mixtures: "image" / "audio"
    model_input: str  # the QuatrixLM.forward keyword: "pixel_values" / "mel_values"
    config_flag: str  # the QuatrixConfig switch: "use_vision" / "use_audio"
    encoder: str  # the QuatrixLM attribute holding the encoder: "vision" / "audio"
    noun: str  # how errors call one: "image" / "audio clip"

    @property
    def a_noun(self) -> str:
        return f"{'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun}"


MODALITIES: dict[str, Modality] = {
    "image": Modality("image", "pixel_values", "use_vision", "vision", "image"),
    "audio": Modality("audio", "mel_values", "use_audio", "audio", "audio clip"),
}


def modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")
    return MODALITIES[name]


def check_encoder(config, name: str, what: str) -> None:
    """Refuse `what` (a data source, a task, a request) carrying `name` media for a model
    configured without that encoder."""
    m = modality(name)
    if not getattr(config, m.config_flag):
        raise ValueError(f"{what} carries {name}, but the model has no {m.encoder} encoder ({m.config_flag}=False)")


def load_media(name: str, value, config) -> Tensor:
    """One item's image or clip as the model takes it: a path (or, for audio, a file object)
    is read at the model's image size / sample rate; a tensor is checked and passed on."""
    if name == "image":
        return value if isinstance(value, Tensor) else load_image(value, config.image_size)
    if name == "audio":
        if isinstance(value, Tensor):
            return check_clip(value, config.sample_rate, config.audio_max_seconds)
        return read_audio(value, config.sample_rate, config.audio_max_seconds)
    raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")


def batch_media(name: str, values: list, config=None) -> Tensor:
    """Items' images -> [B, 3, S, S]; clips -> [B, T_max], each followed by silence."""
    tensors = [load_media(name, v, config) if config is not None else v for v in values]
    return torch.stack(tensors) if name == "image" else pad_waves(tensors)


def model_inputs(media: dict[str, Tensor]) -> dict[str, Tensor]:
    """{"image": t, "audio": u} -> {"pixel_values": t, "mel_values": u}."""
    return {modality(name).model_input: value for name, value in media.items()}


# ---------------------------------------------------------------------- images
def load_image(path: str | Path, size: int) -> Tensor:
    """An image file -> [3, size, size] float tensor in [-1, 1] (see `image_to_tensor`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image_to_tensor(image, size)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read image {path}: {e}") from None


def image_to_tensor(image, size: int) -> Tensor:
    """A PIL image -> [3, size, size] in [-1, 1]: RGB, bicubic resize, x / 127.5 - 1. The one
    preprocessing QuatrixVision sees, in training and at inference."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0


# ---------------------------------------------------------------------- audio
def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> Tensor:
    """[T] at from_rate -> float32 tensor at to_rate (polyphase, anti-aliased)."""
    if from_rate != to_rate:
        from scipy.signal import resample_poly

        ratio = Fraction(to_rate, from_rate)
        wave = resample_poly(wave, ratio.numerator, ratio.denominator)
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def read_audio(path: str | Path | BinaryIO, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
               name: str | None = None) -> Tensor:
    """An audio file (WAV, FLAC, anything libsndfile reads), or its bytes as a file object
    (named `name` in errors) -> [T] float32 mono at `sample_rate`. Clear errors for a
    missing, unreadable, empty, too short (under one 25 ms window) or too long file."""
    import soundfile

    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        source = str(path)
    else:
        source, path = path, name or "audio"
    try:
        wave, rate = soundfile.read(source, dtype="float32", always_2d=True)  # [T, channels]
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"could not read audio {path}: {e}") from None
    if wave.shape[0] == 0:
        raise ValueError(f"audio {path} is empty (no samples)")
    seconds = wave.shape[0] / rate
    if max_seconds is not None and seconds > max_seconds:
        raise ValueError(f"audio {path} is {seconds:.2f} s long; the model's audio encoder takes at most "
                         f"{max_seconds} s (config.audio_max_seconds): cut the clip")
    return check_clip(resample(wave.mean(axis=1), rate, sample_rate), sample_rate, max_seconds or float("inf"),
                      str(path))


def check_clip(wave: Tensor, sample_rate: int, max_seconds: float, name: str = "audio") -> Tensor:
    """A clip the encoder can take: at least one 25 ms window, at most max_seconds."""
    if wave.numel() < int(0.025 * sample_rate):
        raise ValueError(f"{name} has {wave.numel()} samples, shorter than one 25 ms window")
    if wave.numel() > max_seconds * sample_rate:
        raise ValueError(f"{name} is {wave.numel() / sample_rate:.2f} s long; the model's audio encoder takes at "
                         f"most {max_seconds} s (config.audio_max_seconds)")
    return wave


def pad_waves(waves: list[Tensor]) -> Tensor:
    """[B, T_max] with each clip followed by silence (the batch's longest clip sets T_max)."""
    out = torch.zeros(len(waves), max(w.numel() for w in waves))
    for i, w in enumerate(waves):
        out[i, : w.numel()] = w
    return out
