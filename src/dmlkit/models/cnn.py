"""A small convolutional embedder for single- or few-channel images (8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

from torch import Tensor, nn

from dmlkit.models.heads import EmbeddingHead
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


@register_model("small_cnn")
class SmallCNN(nn.Module):
    """``(n, C, H, W) -> (n, dim)``: conv blocks, global average pooling, embedding head.

    Accepts ``(n, H, W)`` and flat ``(n, C*H*W)`` inputs too (reshaped with
    ``in_channels`` and ``image_size``). Images of side >= 16 get a third pooled block.

    Parameters
    ----------
    in_channels : int
    image_size : int
        Side of the (square) input images.
    dim : int
        Embedding dimension.
    width : int
        Channels of the first block (doubled in each later block).
    normalize : bool
        L2-normalize the embeddings.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        dim: int = 64,
        width: int = 32,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        self.in_channels = in_channels
        self.image_size = image_size
        blocks = [_block(in_channels, width, pool=True), _block(width, 2 * width, pool=True)]
        channels = 2 * width
        if image_size >= 16:
            blocks.append(_block(channels, 2 * channels, pool=False))
            channels *= 2
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = EmbeddingHead(channels, dim, normalize=normalize)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        s, c = self.image_size, self.in_channels
        if x.dim() == 2:
            if x.shape[1] != c * s * s:
                raise ValueError(f"flat input must have {c * s * s} features, got {x.shape[1]}")
            x = x.view(-1, c, s, s)
        elif x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"expected images of shape (n, {c}, H, W), got {tuple(x.shape)}")
        return self.head(self.body(x))  # (n, dim)
