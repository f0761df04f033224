"""Multi-layer perceptron embedder for vectors (tabular data, flattened images, features)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dmlkit.models.heads import EmbeddingHead
from dmlkit.models.inputs import check_rows
from dmlkit.models.sizes import check_bool, check_rate, check_size, check_sizes
from dmlkit.registry import register_model


@register_model("mlp")
class MLPEmbedder(nn.Module):
    """``(n, in_features) -> (n, dim)``: Linear-BatchNorm-ReLU blocks, then an embedding head.

    Inputs with more than two dimensions are flattened after the batch dimension; inputs
    of any dtype (integer pixels too) are cast to the parameters' dtype (float32 unless the
    model was converted, e.g. with ``.double()``).

    Parameters
    ----------
    in_features : int
    dim : int
        Embedding dimension.
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float
    normalize : bool
        L2-normalize the embeddings.
    """

    def __init__(
        self,
        in_features: int,
        dim: int = 64,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        in_features = check_size("mlp", "in_features", in_features)
        dim = check_size("mlp", "dim", dim)
        hidden = check_sizes("mlp", "hidden", hidden)
        dropout = check_rate("mlp", "dropout", dropout)
        normalize = check_bool("mlp", "normalize", normalize)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = EmbeddingHead(width, dim, normalize=normalize)
        self.in_features = in_features
        self.dim = dim
        self.hidden = hidden
        self.dropout = dropout
        self.normalize = normalize

    @classmethod
    def dim_from_config(cls, params: dict[str, Any]) -> int:
        """The width of the embeddings a model built with ``params`` gives: its ``dim``."""
        return params["dim"]

    def forward(self, x: Tensor) -> Tensor:
        x = check_rows(x, "mlp", self.in_features)  # (n, in_features)
        x = x.to(self.head.linear.weight.dtype)
        return self.head(self.body(x))  # (n, dim)
