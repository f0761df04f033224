"""Bias-free embedders for one-class objectives (Deep SVDD).

Deep SVDD (Ruff et al., ICML 2018) maps normal data close to a fixed centre ``c``. A
network with bias terms could map *every* input to ``c`` (a constant function) and
reach zero loss; without biases, and with batch norm that has no learned shift, the
only way to be close to ``c`` is to respond to the input. These models therefore have
no bias in any layer and no affine batch norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dmlkit.models.cnn import as_images, height_width, image_shape_error
from dmlkit.models.inputs import check_batch, check_rows
from dmlkit.models.sizes import check_size, check_sizes
from dmlkit.registry import register_model


@register_model("bias_free_mlp")
class BiasFreeMLP(nn.Module):
    """``(n, in_features) -> (n, dim)``: bias-free Linear-BatchNorm(no affine)-LeakyReLU.

    Parameters
    ----------
    in_features : int
    dim : int
        Output (embedding) dimension.
    hidden : sequence of int
        Hidden widths.
    """

    def __init__(self, in_features: int, dim: int = 32, hidden: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        in_features = check_size("bias_free_mlp", "in_features", in_features)
        dim = check_size("bias_free_mlp", "dim", dim)
        hidden = check_sizes("bias_free_mlp", "hidden", hidden)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [
                nn.Linear(width, h, bias=False),
                nn.BatchNorm1d(h, eps=1e-4, affine=False),
                nn.LeakyReLU(0.1),
            ]
            width = h
        layers.append(nn.Linear(width, dim, bias=False))
        self.net = nn.Sequential(*layers)
        self.in_features, self.dim, self.hidden = in_features, dim, hidden

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of the embeddings a model built with ``params`` gives: its ``dim``."""
        return params["dim"]

    def forward(self, x: Tensor) -> Tensor:
        x = check_rows(x, "bias_free_mlp", self.in_features)  # (n, in_features)
        return self.net(x.to(self.net[-1].weight.dtype))  # (n, dim)


@register_model("bias_free_cnn")
class BiasFreeCNN(nn.Module):
    """LeNet-style bias-free CNN of Ruff et al. for small images: ``(n, C, H, W) -> (n, dim)``.

    Two 5x5 convolutions (8 and 4 channels) with non-affine batch norm, leaky ReLU and 2x2
    max pooling, then a bias-free linear map to ``dim``. Flat inputs ``(n, C*H*W)`` are
    reshaped with ``in_channels`` and ``image_size`` (an int for square images or
    ``(H, W)``); grey images ``(n, H, W)`` take ``in_channels == 1``. Inputs are cast to
    the parameters' dtype.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int | Sequence[int] = 28, dim: int = 32
    ) -> None:
        super().__init__()
        h, w = height_width(image_size, 4, "bias_free_cnn")
        in_channels = check_size("bias_free_cnn", "in_channels", in_channels)
        dim = check_size("bias_free_cnn", "dim", dim)
        self.in_channels, self.image_size, self.dim = in_channels, (h, w), dim

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 5, padding=2, bias=False),
                nn.BatchNorm2d(c_out, eps=1e-4, affine=False),
                nn.LeakyReLU(0.1),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*block(in_channels, 8), *block(8, 4))
        self.out = nn.Linear(4 * (h // 4) * (w // 4), dim, bias=False)

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of the embeddings a model built with ``params`` gives: its ``dim``."""
        return params["dim"]

    def forward(self, x: Tensor) -> Tensor:
        (h, w), c = self.image_size, self.in_channels
        expected = f"(n, {c}, {h}, {w})"
        x = check_batch(x, "bias_free_cnn", expected)
        images = as_images(x.to(self.out.weight.dtype), c, h, w)  # (n, c, h, w)
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w):
            raise image_shape_error(expected, tuple(x.shape), c)
        return self.out(self.features(images).flatten(1))  # (n, dim)


__all__ = ["BiasFreeMLP", "BiasFreeCNN"]
