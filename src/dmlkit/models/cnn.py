"""A small convolutional embedder for single- or few-channel images (8x8 digits, 28x28
MNIST, 56x46 faces: square or not)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit._checks import is_int
from dmlkit.models.heads import EmbeddingHead
from dmlkit.models.inputs import check_batch
from dmlkit.models.sizes import check_bool, check_rate, check_size
from dmlkit.registry import register_model


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def cell_weights(side: int, cells: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(cells, side)`` weights that average ``side`` samples of one axis into ``cells``
    cells the way adaptive average pooling does: cell ``i`` is the mean of samples
    ``floor(i side / cells)`` to ``ceil((i + 1) side / cells) - 1`` (cells overlap where
    ``cells`` does not divide ``side``). Rows sum to 1; ``dtype`` the weights' (built in
    it, so a float64 map is averaged to float64 precision)."""
    w = torch.zeros(cells, side, dtype=dtype)
    for i in range(cells):
        start, end = (i * side) // cells, -(-((i + 1) * side) // cells)
        w[i, start:end] = 1.0 / (end - start)
    return w  # (cells, side)


def grid_means(x: Tensor, cells: int, hw: tuple[int, int] | None = None) -> Tensor:
    """``(n, c, H, W)`` -> ``(n, c, cells, cells)``: the means of a ``cells x cells`` grid
    of cells of the map, as ``F.adaptive_avg_pool2d(x, cells)`` computes them.

    Written in forms ONNX export takes at every size (it takes adaptive pooling only where
    it can read the map's size and the grid divides it): a plain average pooling of a
    fixed window where ``cells`` divides both sides, else two matrix products with fixed
    averaging weights (:func:`cell_weights`); the same means up to float rounding.
    ``hw``: the map's ``(H, W)`` when the caller knows it (read from ``x`` otherwise)."""
    h, w = hw if hw is not None else (int(x.shape[-2]), int(x.shape[-1]))
    if h % cells == 0 and w % cells == 0:
        return F.avg_pool2d(x, (h // cells, w // cells))  # (n, c, cells, cells)
    rows = cell_weights(h, cells, x.dtype).to(x.device)  # (cells, H)
    cols = cell_weights(w, cells, x.dtype).to(x.device)  # (cells, W)
    return rows @ x @ cols.T  # (n, c, cells, cells)


class GridMeans(nn.Module):
    """``(n, c, H, W) -> (n, c, grid, grid)``: :func:`grid_means` of each map (adaptive
    average pooling, exportable to ONNX whatever the map's size)."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = check_size("GridMeans", "grid", grid)

    def forward(self, x: Tensor) -> Tensor:
        if self.grid == 1:  # global pooling, which ONNX export takes at any size
            return F.adaptive_avg_pool2d(x, 1)  # (n, c, 1, 1)
        return grid_means(x, self.grid)  # (n, c, grid, grid)


def as_images(x: Tensor, c: int, h: int, w: int) -> Tensor:
    """``x`` as ``(n, c, h, w)`` images where it is flat rows ``(n, c * h * w)`` (rows of
    another width: a ``ValueError``) or, for one channel (``c == 1``), grey images
    ``(n, h', w')``; else as it is (a 3-D input of ``c > 1`` channels stays 3-D, for the
    caller's shape check to refuse)."""
    if x.dim() == 2:
        if x.shape[1] != c * h * w:
            raise ValueError(
                f"flat input must have {c * h * w} features ({c} x {h} x {w}), got {x.shape[1]}"
            )
        return x.view(-1, c, h, w)
    return x.unsqueeze(1) if x.dim() == 3 and c == 1 else x


def image_shape_error(expected: str, given: tuple[int, ...], c: int) -> ValueError:
    """The error for images of shape ``given`` (as the caller passed them) where a model
    of ``c`` channels takes ``expected``; a 3-D input of ``c > 1`` channels is taken for
    one image without its batch dimension."""
    hint = ""
    if len(given) == 3 and c > 1:
        hint = "; for one image add a batch dimension (x.unsqueeze(0))"
    elif len(given) == 4 and c > 1 and given[1] != c and given[-1] == c:
        hint = "; for channels-last images use x.permute(0, 3, 1, 2)"
    return ValueError(f"expected images of shape {expected}, got {given}{hint}")


def height_width(
    image_size: int | Sequence[int], min_side: int = 4, model: str | None = None
) -> tuple[int, int]:
    """``(H, W)`` from an int side or an ``(H, W)`` pair (Python or numpy integers, not
    bools), each >= ``min_side`` (``model`` names the model taking it in the message)."""
    if is_int(image_size):
        hw = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
        and all(is_int(v) for v in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(
            f"{model + ': ' if model else ''}image_size must be an int or "
            f"(height, width), got {image_size!r}"
        )
    if min(hw) < min_side:
        who = f"{model} takes images of side" if model else "image_size must be"
        fix = ""
        if model:
            fix = (
                "; enlarge smaller images (an image folder's data.image_size resizes them "
                "as they are read)"
            )
        raise ValueError(f"{who} >= {min_side} on each side, got {image_size}{fix}")
    return hw


@register_model("small_cnn")
class SmallCNN(nn.Module):
    """``(n, C, H, W) -> (n, dim)``: conv blocks, average pooling, embedding head.

    Images need not be square: ``H != W`` works (e.g. 56 x 46 faces), since the
    convolutions and the grid pooling (:func:`grid_means`) take any ``H, W >= 4``; give
    ``image_size`` as ``(H, W)`` for flat inputs of non-square images. Accepts
    ``(n, H, W)`` and flat ``(n, C*H*W)`` inputs too (reshaped with ``in_channels`` and
    ``image_size``; ``(n, H, W)`` only where ``in_channels == 1``). Inputs are cast to the
    parameters' dtype. Images whose shorter side is >= 16 get a third (unpooled) conv
    block, doubling the channels.
    ``grid=1`` is global average pooling; ``grid=k`` average-pools the last feature map
    to a ``k x k`` grid and flattens it (``channels * k * k`` features), so the embedding
    keeps where in the image a pattern is, which transfers better to unseen classes.

    Parameters
    ----------
    in_channels : int
    image_size : int or (int, int)
        Side of square images, or ``(H, W)``. Used to reshape flat inputs and to decide
        the third block (``min(H, W) >= 16``); ``(n, C, H, W)`` inputs of another size
        are accepted as they come.
    dim : int
        Embedding dimension.
    width : int
        Channels of the first block (doubled in each later block).
    normalize : bool
        L2-normalize the embeddings.
    grid : int
        Side of the pooled feature grid (1: global average pooling).
    dropout : float
        Dropout probability on the pooled features during training (0: none).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        dim: int = 64,
        width: int = 32,
        normalize: bool = True,
        grid: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hw = height_width(image_size, 4, "small_cnn")
        in_channels = check_size("small_cnn", "in_channels", in_channels)
        dim = check_size("small_cnn", "dim", dim)
        width = check_size("small_cnn", "width", width)
        grid = check_size("small_cnn", "grid", grid)
        dropout = check_rate("small_cnn", "dropout", dropout)
        normalize = check_bool("small_cnn", "normalize", normalize)
        self.in_channels = in_channels
        self.image_size = image_size if isinstance(image_size, int) else hw
        self.hw = hw  # (H, W)
        self.width = width
        self.normalize = normalize
        self.grid = grid
        self.dropout = dropout
        blocks = [_block(in_channels, width, pool=True), _block(width, 2 * width, pool=True)]
        channels = 2 * width
        if min(hw) >= 16:
            blocks.append(_block(channels, 2 * channels, pool=False))
            channels *= 2
        pooled: list[nn.Module] = [GridMeans(grid), nn.Flatten()]
        if dropout > 0:
            pooled.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*blocks, *pooled)  # (n, channels * grid * grid)
        self.head = EmbeddingHead(channels * grid * grid, dim, normalize=normalize)
        self.dim = dim

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of the embeddings a model built with ``params`` gives: its ``dim``."""
        return params["dim"]

    def forward(self, x: Tensor) -> Tensor:
        (h, w), c = self.hw, self.in_channels
        expected = f"(n, {c}, H, W)"
        x = check_batch(x, "small_cnn", expected)
        images = as_images(x.to(self.head.linear.weight.dtype), c, h, w)  # (n, c, H, W)
        if images.dim() != 4 or images.shape[1] != c:
            raise image_shape_error(expected, tuple(x.shape), c)
        return self.head(self.body(images))  # (n, dim)
