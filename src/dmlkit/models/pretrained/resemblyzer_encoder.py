"""Frozen pretrained speaker encoder of the PyPI package ``resemblyzer`` (a GE2E-trained
3-layer LSTM over 40 log-mel bands, Wan et al., ICASSP 2018; weights ship in its wheel).
"""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.registry import register_model

_HINT = "pip install 'dmlkit[audio]'"


def _voice_encoder_class() -> type:
    """Import ``resemblyzer.VoiceEncoder``, or raise an ImportError naming the extra.

    ``webrtcvad`` is imported by resemblyzer's own preprocessing, which dmlkit does not
    call; where it is missing, or its import fails (it imports ``pkg_resources``, gone
    from recent setuptools), an empty stand-in module is registered so the encoder itself
    still loads.
    """
    import importlib.util

    if importlib.util.find_spec("resemblyzer") is None:
        raise ImportError(f"the resemblyzer baseline needs resemblyzer: {_HINT}")
    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as e:
        raise ImportError(f"the resemblyzer baseline needs resemblyzer and librosa: {_HINT}"
                          ) from e
    return VoiceEncoder


@register_model("resemblyzer")
class ResemblyzerEncoder(nn.Module):
    """``(B, T)`` 16 kHz waveforms -> ``(B, 256)`` L2-normalized embeddings, frozen.

    Each waveform is embedded with resemblyzer's ``embed_utterance`` (mean of embeddings
    of 1.6 s partial windows, renormalized). Its own volume normalization and webrtcvad
    trimming are not applied: trim with :func:`dmlkit.data.audio.trim_silence` first.
    """

    #: the sample rate of the waveforms it takes (its mel front end is fixed), which a
    #: run's ``data.sample_rate`` must match (:func:`dmlkit.training.build.check_sample_rate`)
    input_sample_rate: ClassVar[int] = 16_000

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _voice_encoder_class()(device="cpu", verbose=False)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.dim = 256

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of its embeddings: 256, whatever the config."""
        return 256

    def forward(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"expected a (B, T) waveform batch, got shape {tuple(wav.shape)}")
        x = wav.detach().cpu().float().numpy()
        out = np.stack([self.encoder.embed_utterance(w) for w in x])  # (B, 256)
        return torch.from_numpy(out).float()

    def embed_utterance(self, wav: Tensor) -> Tensor:
        """One embedding ``(256,)`` for a ``(T,)`` waveform of any length."""
        w = wav.detach().cpu().float().numpy().reshape(-1)
        return torch.from_numpy(self.encoder.embed_utterance(w)).float()
