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
    """``(n, C, H, W) -> (n, dim)``: conv blocks, average pooling, embedding head.

    Accepts ``(n, H, W)`` and flat ``(n, C*H*W)`` inputs too (reshaped with
    ``in_channels`` and ``image_size``). Images of side >= 16 get a third pooled block.
    ``grid=1`` is global average pooling; ``grid=k`` average-pools the last feature map
    to a ``k x k`` grid and flattens it (``channels * k * k`` features), so the embedding
    keeps where in the image a pattern is, which transfers better to unseen classes.

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
    grid : int
        Side of the pooled feature grid (1: global average pooling).
    dropout : float
        Dropout probability on the pooled features during training (0: none).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        dim: int = 64,
        width: int = 32,
        normalize: bool = True,
        grid: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {image_size}")
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be an int >= 1, got {grid!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.image_size = image_size
        self.width = width
        self.normalize = normalize
        self.grid = grid
        self.dropout = dropout
        blocks = [_block(in_channels, width, pool=True), _block(width, 2 * width, pool=True)]
        channels = 2 * width
        if image_size >= 16:
            blocks.append(_block(channels, 2 * channels, pool=False))
            channels *= 2
        pooled: list[nn.Module] = [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
        if dropout > 0:
            pooled.append(nn.Dropout(dropout))
        self.body = nn.Sequential(*blocks, *pooled)  # (n, channels * grid * grid)
        self.head = EmbeddingHead(channels * grid * grid, dim, normalize=normalize)
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
