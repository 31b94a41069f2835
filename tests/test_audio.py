import math

import pytest
import torch
from torch.testing import assert_close

from conftest import tiny_config
from quatrix import AudioEncoder, QuatrixAudio
from quatrix.audio import LogMel, mel_filterbank


def test_filterbank_shape_and_coverage():
    fb = mel_filterbank(80, 400, 16000)
    assert fb.shape == (80, 201)
    assert (fb >= 0).all() and (fb.sum(dim=1) > 0).all()  # no empty filter
    centers = fb.argmax(dim=1)
    assert (centers[1:] >= centers[:-1]).all()  # filters ascend in frequency


def test_a_tone_lights_up_its_mel_band():
    mel = LogMel(16000, 80)
    t = torch.arange(16000) / 16000
    low, high = (torch.sin(2 * math.pi * f * t)[None] for f in (300.0, 3000.0))
    band_low, band_high = (mel(w)[0].mean(-1).argmax().item() for w in (low, high))
    fb = mel_filterbank(80, 400, 16000)
    hz = lambda band: fb[band].argmax().item() * 8000 / 200  # noqa: E731
    assert abs(hz(band_low) - 300) < 100 and abs(hz(band_high) - 3000) < 300
    assert mel(low).shape == (1, 80, 101)  # 1 + 16000 // 160 frames


def test_waveform_and_mel_inputs_agree():
    enc = QuatrixAudio(tiny_config()).eval()
    assert AudioEncoder is QuatrixAudio
    wave = torch.randn(2, 8000)
    tokens = enc(wave)
    mel = enc.log_mel(wave)  # [2, 80, 51] -> padded to 64 frames -> 4 time x 5 freq patches
    assert tokens.shape == (2, 4 * 5, 32)
    assert_close(enc(mel), tokens)
    assert_close(enc(mel[:, None]), tokens)


@pytest.mark.parametrize(
    "audio, message",
    [
        (torch.randn(1, 16000 * 2), "audio is 2.00 s long; the encoder supports at most 1.0 s"),
        (torch.randn(1, 80, 150), "has 150 frames"),
        (torch.randn(1, 64, 50), "has 64 mel bins, expected 80"),
        (torch.randn(1, 2, 80, 50), "must be \\[B, 1, n_mels, F\\]"),
        (torch.randn(8000), "must be 2-D or 3-D or 4-D"),
        (torch.randint(0, 9, (1, 8000)), "floating-point"),
        (torch.full((1, 8000), float("inf")), "NaN or infinite"),
        (torch.randn(1, 100), "fewer than one 25 ms window"),
    ],
)
def test_bad_audio(audio, message):
    with pytest.raises(ValueError, match=message):
        QuatrixAudio(tiny_config())(audio)
