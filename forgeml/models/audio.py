"""Whisper-style audio encoder (Radford et al., arXiv:2212.04356): log-mel features in numpy/torch,
two convolutions (the second subsamples time by 2), pre-norm transformer blocks, final norm.

`multimodal` stacks `stack` consecutive frames into one LM token and projects them (the
Voxtral layout, arXiv:2507.13264); `hf_multimodal_io` maps it to transformers' Voxtral.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from forgeml.models.vision import (
    EncoderBlock,
    EncoderConfig,
    check_input,
    init_encoder_weights,
)


class AudioConfig(EncoderConfig):
    """Audio encoder over windows of `window_frames` log-mel frames (Whisper: 3000 = 30 s)."""

    sample_rate: int = Field(16000, gt=0)
    n_mels: int = Field(80, gt=0)
    n_fft: int = Field(400, gt=0)
    hop_length: int = Field(160, gt=0)
    window_frames: int = Field(3000, gt=0, description="mel frames per encoder window")
    norm_eps: float = 1e-5
    stack: int = Field(4, gt=0, description="encoder frames stacked into one LM token")

    @model_validator(mode="after")
    def _shapes_fit(self) -> AudioConfig:
        if self.window_frames % (2 * self.stack):
            raise ValueError(
                f"window_frames ({self.window_frames}) must be a multiple of 2 * stack "
                f"({2 * self.stack}): the convolutions halve it, then frames are stacked"
            )
        return self

    @property
    def positions(self) -> int:
        """Encoder positions per window (after the stride-2 convolution)."""
        return self.window_frames // 2

    @property
    def tokens_per_window(self) -> int:
        """Placeholder tokens one window of audio takes in the LM's sequence."""
        return self.positions // self.stack

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop_length

    def windows_for(self, n_samples: int) -> int:
        """Encoder windows a clip of `n_samples` takes (at least one; see log_mel_windows)."""
        return max(1, math.ceil(n_samples / self.window_samples))

    @property
    def feature_dim(self) -> int:
        return self.dim * self.stack


def sinusoids(length: int, dim: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table [length, dim]: sines then cosines of geometric timescales."""
    increment = math.log(max_timescale) / (dim // 2 - 1)
    inv = torch.exp(-increment * torch.arange(dim // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class AudioEncoder(nn.Module):
    """log-mel [B, n_mels, window_frames] -> frames [B, window_frames / 2, dim]."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)
        # Fixed sinusoidal positions, saved with the weights as Whisper's checkpoints do.
        self.register_buffer("position_embedding", sinusoids(cfg.positions, cfg.dim))
        self.layers = nn.ModuleList(
            EncoderBlock(cfg.dim, cfg.n_heads, cfg.ffn_hidden, cfg.norm_eps, "gelu")
            for _ in range(cfg.n_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; positions stay sinusoidal."""
        init_encoder_weights(self, self.cfg.init_std)
        self.position_embedding.copy_(sinusoids(self.cfg.positions, self.cfg.dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        trailing = (cfg.n_mels, cfg.window_frames)
        check_input(features, trailing, "audio features", "windows: see log_mel_windows")
        x = F.gelu(self.conv1(features.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.position_embedding.to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def stack_frames(x: torch.Tensor, stack: int) -> torch.Tensor:
    """[B, T, D] -> [B, T / stack, D * stack]: consecutive frames side by side in one token."""
    bsz, seq, dim = x.shape
    return x.reshape(bsz, seq // stack, dim * stack)


def mel_filter_bank(cfg: AudioConfig) -> np.ndarray:
    """Triangular filters [n_fft/2 + 1, n_mels] on the Slaney mel scale with Slaney area
    normalisation, 0 Hz to Nyquist (librosa's default, the one Whisper uses)."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        mel = 3.0 * hz / 200.0
        log_region = hz >= 1000.0
        return np.where(
            log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / np.log(6.4), mel
        )

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        hz = 200.0 * mel / 3.0
        return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)

    n_freqs = cfg.n_fft // 2 + 1
    fft_freqs = np.linspace(0, cfg.sample_rate / 2, n_freqs)
    mel_edges = np.linspace(
        hz_to_mel(np.array(0.0)), hz_to_mel(np.array(cfg.sample_rate / 2)), cfg.n_mels + 2
    )
    filter_freqs = mel_to_hz(mel_edges)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / np.diff(filter_freqs)[:-1]
    up = slopes[:, 2:] / np.diff(filter_freqs)[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    enorm = 2.0 / (filter_freqs[2 : cfg.n_mels + 2] - filter_freqs[: cfg.n_mels])
    return (filters * enorm[None, :]).astype(np.float32)


def log_mel(waveform: torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Whisper's log-mel spectrogram of mono audio [S] -> [n_mels, S / hop_length]: periodic
    Hann STFT power, mel filters, log10 floored at 8 below the peak, scaled to about [-1, 1]."""
    window = torch.hann_window(cfg.n_fft, dtype=torch.float64)
    stft = torch.stft(
        waveform.to(torch.float64), cfg.n_fft, cfg.hop_length, window=window, return_complex=True
    )
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(mel_filter_bank(cfg)).to(torch.float64)
    mel = filters.T @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).float()


def log_mel_windows(waveform: np.ndarray | torch.Tensor, cfg: AudioConfig) -> torch.Tensor:
    """Mono audio at cfg.sample_rate -> log-mel windows [N, n_mels, window_frames]: the audio is
    zero-padded to whole windows (Whisper pads to 30 s) and each window takes
    `cfg.tokens_per_window` placeholder tokens."""
    audio = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {tuple(audio.shape)}")
    n_windows = cfg.windows_for(audio.shape[0])
    padded = F.pad(audio, (0, n_windows * cfg.window_samples - audio.shape[0]))
    windows = padded.view(n_windows, cfg.window_samples)
    return torch.stack([log_mel(w, cfg) for w in windows])
