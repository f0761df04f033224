"""Speaker embeddings from raw 16 kHz waveforms: a torch log-mel front end and an
ECAPA-TDNN-style network (Desplanques et al., Interspeech 2020; arXiv 2005.07143),
reduced in width for CPU training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.models.heads import EmbeddingHead
from dmlkit.models.sizes import check_size, check_sizes
from dmlkit.registry import register_model


def hz_to_mel(f: Tensor) -> Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)``, peaks equally spaced in mel."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    lo, hi = hz_to_mel(torch.tensor(f_min, dtype=torch.float64)), hz_to_mel(
        torch.tensor(f_max, dtype=torch.float64))
    pts = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    left, center, right = pts[:-2, None], pts[1:-1, None], pts[2:, None]  # (M, 1)
    up = (freqs[None] - left) / (center - left)  # (M, F)
    down = (right - freqs[None]) / (right - center)  # (M, F)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


#: LogMel's analysis at its defaults (16 kHz, 40 mels, 512-point FFT, 25 ms windows every
#: 10 ms, normalized)
_LOGMEL_DEFAULTS = {"sample_rate": 16_000, "n_mels": 40, "n_fft": 512, "win": 400, "hop": 160,
                    "normalize": True}


class LogMel(nn.Module):
    """``(B, T)`` waveform -> ``(B, n_mels, frames)`` log mel energies, mean-normalized
    over time per utterance (cepstral mean normalization in the log-mel domain).

    Pre-emphasis 0.97, Hamming window of ``win_ms``, hop ``hop_ms``, power spectrum.
    ``n_fft`` grows to the next power of two that holds the window where the window is
    longer (25 ms above 20480 Hz: 2048 points at 44.1 and 48 kHz).
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        n_mels: int = 40,
        n_fft: int = 512,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.win = int(sample_rate * win_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        if self.win < 1:
            raise ValueError(
                f"window of {win_ms:g} ms at {sample_rate} Hz holds no sample; "
                "raise win_ms or sample_rate"
            )
        # (a window longer than n_fft: the FFT grows to the next power of two that holds
        # it, so rates above 20480 Hz work; at 16 kHz the 400-sample window fits 512)
        n_fft = max(n_fft, 1 << (self.win - 1).bit_length())
        self.n_fft, self.sample_rate, self.n_mels = n_fft, sample_rate, n_mels
        self.normalize = normalize
        self.register_buffer("window", torch.hamming_window(self.win), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_mels, n_fft, sample_rate),
                             persistent=False)

    def fingerprint_settings(self) -> dict[str, Any]:
        """The analysis the features depend on, none of it saved with the weights
        (:func:`dmlkit.index.store.model_fingerprint`): the settings that differ from the
        defaults (a default analysis adds nothing, so fingerprints recorded before it was
        declared stay valid)."""
        settings = {"sample_rate": int(self.sample_rate), "n_mels": int(self.n_mels),
                    "n_fft": int(self.n_fft), "win": self.win, "hop": self.hop,
                    "normalize": bool(self.normalize)}
        return {k: v for k, v in settings.items() if v != _LOGMEL_DEFAULTS[k]}

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"expected a (B, T) waveform batch, got shape {tuple(wav.shape)}")
        if wav.shape[1] < self.win:
            raise ValueError(f"waveforms of {wav.shape[1]} samples are shorter than one "
                             f"{self.win}-sample window")
        x = wav.float()
        x = torch.cat([x[:, :1], x[:, 1:] - 0.97 * x[:, :-1]], dim=1)  # (B, T) pre-emphasis
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win,
                          window=self.window, center=True, return_complex=True)  # (B, F, N)
        power = spec.real.square() + spec.imag.square()  # (B, F, N)
        mel = torch.matmul(self.fbank, power)  # (B, M, N)
        logmel = torch.log(mel + 1e-6)
        if self.normalize:
            logmel = logmel - logmel.mean(dim=2, keepdim=True)
        return logmel


class SEBlock(nn.Module):
    """Squeeze-excitation over channels, ``(B, C, N) -> (B, C, N)``."""

    def __init__(self, channels: int, bottleneck: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, bottleneck), nn.ReLU(inplace=True),
                                 nn.Linear(bottleneck, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.net(x.mean(dim=2))[:, :, None]


class TDNNBlock(nn.Module):
    """Residual dilated 1-d convolution block with SE: 1x1, dilated k=3, 1x1, SE."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, channels, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(channels),
            nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation),
            nn.ReLU(inplace=True), nn.BatchNorm1d(channels),
            nn.Conv1d(channels, channels, 1), nn.ReLU(inplace=True), nn.BatchNorm1d(channels),
            SEBlock(channels, min(64, channels)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, C, N)


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over time, ``(B, C, N) -> (B, 2C)``."""

    def __init__(self, channels: int, attention: int = 64) -> None:
        super().__init__()
        self.attn = nn.Sequential(nn.Conv1d(channels, attention, 1), nn.Tanh(),
                                  nn.Conv1d(attention, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        w = torch.softmax(self.attn(x), dim=2)  # (B, C, N)
        mean = (w * x).sum(dim=2)  # (B, C)
        var = (w * x.square()).sum(dim=2) - mean.square()
        std = torch.sqrt(var.clamp_min(1e-5))  # (B, C)
        return torch.cat([mean, std], dim=1)  # (B, 2C)


@register_model("speaker_encoder")
class SpeakerEncoder(nn.Module):
    """``(B, T)`` float waveforms at ``sample_rate`` -> ``(B, dim)`` speaker embeddings.

    Log-mel front end (:class:`LogMel`), a k=5 TDNN layer, ``len(dilations)`` residual
    SE-TDNN blocks whose outputs are concatenated (multi-layer feature aggregation),
    attentive statistics pooling, batch norm and an embedding head. Train it with any
    dmlkit loss, e.g. ``arcface`` (AAM-softmax) over speaker labels.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    channels : int
        Width of the TDNN blocks.
    dilations : tuple of int
        Dilation of each residual block.
    n_mels : int
    sample_rate : int
    normalize : bool
        L2-normalize the embeddings.
    """

    def __init__(
        self,
        dim: int = 128,
        channels: int = 128,
        dilations: tuple[int, ...] = (2, 3, 4),
        n_mels: int = 40,
        sample_rate: int = 16_000,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        dim = check_size("speaker_encoder", "dim", dim)
        channels = check_size("speaker_encoder", "channels", channels)
        dilations = check_sizes("speaker_encoder", "dilations", dilations, allow_empty=False)
        n_mels = check_size("speaker_encoder", "n_mels", n_mels)
        sample_rate = check_size("speaker_encoder", "sample_rate", sample_rate)
        self.features = LogMel(sample_rate=sample_rate, n_mels=n_mels)
        self.stem = nn.Sequential(nn.Conv1d(n_mels, channels, 5, padding=2),
                                  nn.ReLU(inplace=True), nn.BatchNorm1d(channels))
        self.blocks = nn.ModuleList(TDNNBlock(channels, d) for d in dilations)
        agg = channels * len(dilations)
        self.mfa = nn.Sequential(nn.Conv1d(agg, agg, 1), nn.ReLU(inplace=True))
        self.pool = AttentiveStatsPool(agg)
        self.bn = nn.BatchNorm1d(2 * agg)
        self.head = EmbeddingHead(2 * agg, dim, normalize=normalize)
        self.dim, self.sample_rate = dim, sample_rate

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of the embeddings a model built with ``params`` gives: its ``dim``."""
        return params["dim"]

    def forward(self, wav: Tensor) -> Tensor:
        x = self.stem(self.features(wav))  # (B, C, N)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        h = self.mfa(torch.cat(outs, dim=1))  # (B, C*L, N)
        return self.head(self.bn(self.pool(h)))  # (B, dim)

    @torch.no_grad()
    def embed_utterance(self, wav: Any, crop: int = 32_000, hop: int = 16_000) -> Tensor:
        """One embedding for a long ``(T,)`` waveform (a tensor or numpy array): mean of crop
        embeddings, renormalized; in eval mode and without gradients (the model's mode is
        restored after).

        A waveform shorter than ``crop`` is embedded whole.
        """
        wav = torch.as_tensor(wav, dtype=torch.float32)
        if wav.dim() != 1:
            raise ValueError(f"expected a (T,) waveform, got shape {tuple(wav.shape)}")
        if wav.numel() <= crop:
            segs = wav[None]  # (1, T)
        else:
            n = 1 + math.ceil((wav.numel() - crop) / hop)
            starts = [min(i * hop, wav.numel() - crop) for i in range(n)]
            segs = torch.stack([wav[s: s + crop] for s in starts])  # (n, crop)
        was_training = self.training
        self.eval()  # batch norms on their running statistics, also for a single crop
        try:
            with torch.no_grad():
                e = self(segs.to(next(self.parameters()).device)).mean(dim=0)  # (dim,)
        finally:
            self.train(was_training)
        return e / e.norm().clamp_min(1e-12)
