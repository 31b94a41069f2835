"""QuatrixAudio: log-mel frontend + Q-Compass-Bi encoder over time-frequency patches.

waveform (16 kHz) -> log-mel [n_mels=80, frames at 10 ms] -> 16x16 time-frequency patches ->
learned time and frequency positions -> Q-Compass-Bi blocks -> LayerNorm -> projection to
the LM width. The frontend is written here with `torch.stft` and a triangular mel
filterbank (no torchaudio, which pins an old torch); it follows Whisper's recipe:
25 ms Hann window, 10 ms hop, log10 power, an 8-decade dynamic range, (x + 4) / 4.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from quatrix.blocks import QuatrixBlock, encoder_config, init_weights
from quatrix.config import QuatrixConfig
from quatrix.validation import check_finite, check_tensor


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> Tensor:
    """[n_mels, n_fft // 2 + 1] triangular filters, evenly spaced on the HTK mel scale."""

    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mel_points = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)  # [n_mels + 2]
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [F]
    lower, center, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """[B, T] waveform at `sample_rate` -> [B, n_mels, 1 + T // hop] normalised log-mel."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80):
        super().__init__()
        self.n_fft = int(0.025 * sample_rate)  # 25 ms window (400 samples at 16 kHz)
        self.hop = sample_rate // 100  # 10 ms hop
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, self.n_fft, sample_rate), persistent=False)

    def forward(self, waveform: Tensor) -> Tensor:
        # in fp32 whatever the model's dtype (a bf16 model casts these buffers too)
        spec = torch.stft(waveform.float(), self.n_fft, self.hop, window=self.window.float(), return_complex=True)
        power = spec.abs() ** 2  # [B, n_fft/2 + 1, frames]
        logmel = torch.clamp(self.filters.float() @ power, min=1e-10).log10()  # [B, n_mels, frames]
        peak = logmel.amax(dim=(-2, -1), keepdim=True)
        return (torch.maximum(logmel, peak - 8.0) + 4.0) / 4.0


class QuatrixAudio(nn.Module):
    def __init__(self, config: QuatrixConfig):
        super().__init__()
        c = config
        Ha, p = c.audio_hidden_size, c.audio_patch_size
        self.sample_rate, self.n_mels, self.patch = c.sample_rate, c.n_mels, p
        self.max_seconds, self.max_frames = c.audio_max_seconds, c.audio_max_frames
        self.log_mel = LogMel(c.sample_rate, c.n_mels)
        self.patch_embed = nn.Conv2d(1, Ha, p, stride=p, bias=False)
        self.time_pos = nn.Embedding(math.ceil(c.audio_max_frames / p), Ha)
        self.freq_pos = nn.Embedding(c.n_mels // p, Ha)
        self.drop = nn.Dropout(c.dropout)
        block_cfg = encoder_config(c, Ha, c.audio_q_rank)
        self.blocks = nn.ModuleList(QuatrixBlock(block_cfg, causal=False) for _ in range(c.audio_layers))
        self.norm = nn.LayerNorm(Ha)
        self.proj = nn.Linear(Ha, c.hidden_size, bias=False)  # to the LM width
        init_weights(self, c.audio_layers)

    def forward(self, audio: Tensor, check_values: bool = True) -> Tensor:
        """audio: [B, T] waveform at `sample_rate`, or log-mel [B, n_mels, F] / [B, 1, n_mels, F]
        -> audio tokens [B, (n_mels/p) * ceil(F/p), H], ordered time-major. check_values=False
        skips the finiteness check (a host sync) for inputs checked at the boundary."""
        mel = self.to_mel(audio, check_values)  # [B, n_mels, F]
        B, _, F_ = mel.shape
        pad = (-F_) % self.patch
        if pad:  # pad the last patch with each clip's quietest value
            floor = mel.amin(dim=(-2, -1), keepdim=True).expand(B, self.n_mels, pad)
            mel = torch.cat([mel, floor], dim=-1)
        x = self.patch_embed(mel.unsqueeze(1).to(self.patch_embed.weight.dtype))  # [B, Ha, n_mels/p, F'/p]
        x = x.permute(0, 3, 2, 1)  # [B, T', Fq, Ha]
        Tp, Fq = x.shape[1], x.shape[2]
        x = x + self.time_pos.weight[:Tp, None, :] + self.freq_pos.weight[None, :Fq, :]
        x = self.drop(x.reshape(B, Tp * Fq, -1))  # [B, N, Ha]
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))  # [B, N, H]

    def to_mel(self, audio: Tensor, check_values: bool = True) -> Tensor:
        """Validate and convert the input to log-mel [B, n_mels, F]."""
        check_tensor("mel_values", audio, ndims=(2, 3, 4), floating=True)
        if check_values:
            check_finite("mel_values", audio)
        if audio.dim() == 2:  # waveform
            seconds = audio.shape[-1] / self.sample_rate
            if seconds > self.max_seconds:
                raise ValueError(
                    f"audio is {seconds:.2f} s long; the encoder supports at most {self.max_seconds} s "
                    f"at {self.sample_rate} Hz (config.audio_max_seconds)"
                )
            if audio.shape[-1] < self.log_mel.n_fft:
                raise ValueError(f"audio has {audio.shape[-1]} samples, fewer than one 25 ms window")
            audio = self.log_mel(audio)[..., : self.max_frames]
        if audio.dim() == 4:
            if audio.shape[1] != 1:
                raise ValueError(f"4-D mel_values must be [B, 1, n_mels, F], got shape {tuple(audio.shape)}")
            audio = audio[:, 0]
        if audio.shape[1] != self.n_mels:
            raise ValueError(f"mel_values has {audio.shape[1]} mel bins, expected {self.n_mels} ([B, n_mels, F])")
        if audio.shape[-1] > self.max_frames:
            raise ValueError(
                f"mel_values has {audio.shape[-1]} frames ({audio.shape[-1] / 100:.2f} s); the encoder supports at "
                f"most {self.max_frames} frames ({self.max_seconds} s, config.audio_max_seconds)"
            )
        return audio


AudioEncoder = QuatrixAudio  # the original package's name
