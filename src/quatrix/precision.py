"""Numeric precision of the forward passes: fp32, or bf16 autocast where the hardware
computes bf16 natively. Weights, optimizer state, the loss and softmax statistics stay fp32."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str) -> bool:
    """Whether the device computes bf16 natively: a CUDA GPU with bf16, or a CPU with AMX or
    AVX-512-BF16 (elsewhere bf16 is emulated, slower than fp32)."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_precision(precision: str, device: str) -> str:
    """"auto" -> "bf16" where the device has native bf16, else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_context(device: str, precision: str = "fp32"):
    """bf16 autocast for "bf16" (matmuls in bf16; weights, optimizer state, the loss and the
    softmax statistics stay fp32); nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
