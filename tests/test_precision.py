import pytest
import torch

from quatrix import precision


def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    for amx, avx512_bf16, expected in [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve_precision("fp8", "cpu")


def test_autocast_context():
    with precision.autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_the_inference_dtype_is_bf16_only_where_the_device_has_it_unless_told(monkeypatch):
    monkeypatch.delenv(precision.DTYPE_ENV, raising=False)
    for native, expected in [(False, torch.float32), (True, torch.bfloat16)]:
        monkeypatch.setattr(precision, "native_bf16", lambda device, v=native: v)
        assert precision.resolve_dtype(None, "cpu") == precision.resolve_dtype("auto", "cpu") == expected
        assert precision.resolve_dtype("fp32", "cpu") == torch.float32
        assert precision.resolve_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setenv(precision.DTYPE_ENV, "fp32")  # the default of commands not given --dtype
    assert precision.resolve_dtype(None, "cpu") == torch.float32
    assert precision.resolve_dtype("bf16", "cpu") == torch.bfloat16  # an explicit --dtype wins
    monkeypatch.setenv(precision.DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=r"unknown \$QUATRIX_DTYPE 'fp8'"):
        precision.resolve_dtype(None, "cpu")
    with pytest.raises(ValueError, match="unknown --dtype 'half'"):
        precision.resolve_dtype("half", "cpu")
