"""The source of a user's parts module for the ``imports:`` tests: one registered linear
embedding model."""

from __future__ import annotations

_TEMPLATE = '''
from torch import nn
from dmlkit.registry import register_model


@register_model("{name}")
class {cls}(nn.Module):
    def __init__(self, in_features: int, dim: int = 8) -> None:
        super().__init__()
        self.in_features, self.dim = in_features, dim
        self.net = nn.Linear(in_features, dim)

    def forward(self, x):
        return self.net(x.flatten(1).float())
'''


def linear_parts(name: str, cls: str) -> str:
    """A module registering model ``name``, a linear embedder of class ``cls``."""
    return _TEMPLATE.format(name=name, cls=cls)
