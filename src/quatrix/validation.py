"""Input checks shared by the models: bad input fails here with a message naming the
problem, never deep inside torch."""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor


def check_tensor(name: str, value, *, ndims: tuple[int, ...], floating: bool) -> Tensor:
    """Type, rank and dtype family of a model input."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() not in ndims:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not floating and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise ValueError(f"{name} must be an integer tensor (torch.long), got dtype {value.dtype}")
    return value


def check_finite(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def check_token_ids(name: str, ids: Tensor, vocab_size: int, max_len: int, values: bool = True) -> None:
    """[B, L] integer ids, not empty, at most max_len long; with `values`, every id in the
    vocabulary (a device-to-host sync)."""
    check_tensor(name, ids, ndims=(2,), floating=False)
    B, L = ids.shape
    if B == 0 or L == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)})")
    if L > max_len:
        raise ValueError(f"{name} has {L} tokens, longer than max_seq_len={max_len}; truncate the input")
    if not values:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains token id {bad}, outside the vocabulary [0, {vocab_size})")


def check_same_shape(name: str, value, like: Tensor, like_name: str) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but {like_name} has shape {tuple(like.shape)}")


def check_labels(labels, input_ids: Tensor, vocab_size: int, values: bool = True) -> None:
    """Same shape as input_ids; with `values`, each value a token id or -100 (ignored)."""
    check_same_shape("labels", labels, input_ids, "input_ids")
    check_tensor("labels", labels, ndims=(2,), floating=False)
    if not values:
        return
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bad.any():
        value = int(labels[bad][0])
        raise ValueError(f"labels contains {value}: each label must be a token id in [0, {vocab_size}) or -100")


def check_image(name: str, images: Tensor, channels: int, size: int, values: bool = True) -> None:
    """[B, C, S, S] floating; with `values`, finite (a device-to-host sync)."""
    check_tensor(name, images, ndims=(4,), floating=True)
    B, C, Hh, W = images.shape
    if C != channels:
        raise ValueError(f"{name} has {C} channels, expected {channels} (shape [B, {channels}, {size}, {size}])")
    if (Hh, W) != (size, size):
        raise ValueError(f"{name} is {Hh}x{W} pixels, expected {size}x{size}; resize it first")
    if values:
        check_finite(name, images)


# ---------------------------------------------------------------------- command-line flags
def int_at_least(minimum: int):
    """An argparse `type` for integers >= minimum; argparse reports a bad value by flag name."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    """An argparse `type` for finite floats in [low, high] (either end open on request)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
