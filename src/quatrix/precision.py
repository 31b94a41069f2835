"""Numeric precision: of the forward passes (fp32, or bf16 autocast where the hardware
computes bf16 natively; weights, optimizer state, the loss and softmax statistics stay fp32),
and of the weights at inference (`--dtype`: fp32 or bf16 weights, half the bytes to read per
token)."""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = ("auto", "fp32", "bf16")  # inference weights
DTYPE_ENV = "QUATRIX_DTYPE"  # the --dtype of commands not given one (the tests pin fp32 with it)
DTYPE_HELP = (f"weights dtype for inference (default: ${DTYPE_ENV}, else auto: bf16 where the device computes "
              f"bf16 natively, else fp32)")


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


def resolve_dtype(dtype: str | None, device) -> torch.dtype:
    """The inference weights' dtype: `dtype` ("auto", "fp32", "bf16"), or when None the
    $QUATRIX_DTYPE environment variable, else "auto" (bf16 where `native_bf16(device)`)."""
    name = dtype or os.environ.get(DTYPE_ENV) or "auto"
    if name not in DTYPES:
        source = "--dtype" if dtype else f"${DTYPE_ENV}"
        raise ValueError(f"unknown {source} {name!r}; choose from {', '.join(DTYPES)}")
    if name == "auto":
        name = "bf16" if native_bf16(str(device)) else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def inference_dtype(model: torch.nn.Module, dtype: str | None) -> torch.nn.Module:
    """`model` with its weights in the resolved inference dtype (see resolve_dtype), in place."""
    device = next(model.parameters()).device
    return model.to(resolve_dtype(dtype, device))
