"""Shared-weight tuple networks: one embedding model applied to every member of a tuple.

Siamese networks (Bromley et al., "Signature Verification using a Siamese Time Delay
Neural Network", NIPS 1993), triplet networks (Hoffer & Ailon, "Deep metric learning
using Triplet network", 2015) and quadruplet networks (Chen et al., CVPR 2017) are the
same model run on two, three or four inputs. There is exactly one parameter set, so the
gradients of all branches accumulate into it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.tuples import IndexTuple


class TupleNetwork(nn.Module):
    """Apply one embedding ``model`` to each of ``arity`` inputs.

    Parameters
    ----------
    model : nn.Module
        Maps a batch ``(n, ...)`` to embeddings ``(n, dim)``.
    concat : bool
        When all members are tensors of the same shape, embed them in one forward pass
        over their concatenation (faster; normalization layers then see the whole tuple
        batch). Otherwise each member is embedded by its own call.
    """

    arity: int = 0

    def __init__(self, model: nn.Module, concat: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.concat = concat

    def embed(self, x: Tensor) -> Tensor:
        """Embeddings ``(n, dim)`` of one batch."""
        return self.model(x)

    def forward(self, *members: Tensor) -> tuple[Tensor, ...]:
        """``(x_1, ..., x_k)`` each ``(n_i, ...)`` -> ``(e_1, ..., e_k)`` each ``(n_i, dim)``."""
        if len(members) != self.arity:
            raise ValueError(f"{type(self).__name__} takes {self.arity} inputs, got {len(members)}")
        same_shape = all(
            isinstance(x, Tensor) and x.shape[1:] == members[0].shape[1:] for x in members
        )
        if self.concat and same_shape:
            sizes = [x.shape[0] for x in members]
            embeddings = self.model(torch.cat(members, dim=0))  # (sum n_i, dim)
            return tuple(torch.split(embeddings, sizes, dim=0))
        return tuple(self.model(x) for x in members)

    def embed_tuples(self, inputs: Tensor, indices: IndexTuple) -> tuple[Tensor, ...]:
        """Embed a batch of unique items once and gather each tuple member.

        Parameters
        ----------
        inputs : Tensor (k, ...)
            The distinct items referenced by ``indices``.
        indices : Pairs, Triplets or Quadruplets
            Index tensors into ``inputs``, each ``(T,)``.

        Returns
        -------
        tuple of Tensor
            One ``(T, dim)`` tensor per member of ``indices`` (in its field order).
        """
        embeddings = self.model(inputs)  # (k, dim)
        return tuple(embeddings[idx] for idx in indices)


class SiameseNetwork(TupleNetwork):
    """Two shared-weight branches: ``forward(x1, x2) -> (e1, e2)``.

    :meth:`score` gives the row-wise distance (or similarity) of the two embeddings,
    the quantity a verifier thresholds.
    """

    arity = 2

    def score(self, x1: Tensor, x2: Tensor, distance: BaseDistance | None = None) -> Tensor:
        """Row-wise ``d(f(x1), f(x2))``, ``(n, ...), (n, ...) -> (n,)``."""
        distance = distance if distance is not None else EuclideanDistance()
        e1, e2 = self(x1, x2)
        return distance.pairwise(e1, e2)  # (n,)


class TripletNetwork(TupleNetwork):
    """Three shared-weight branches: ``forward(anchor, positive, negative) -> (ea, ep, en)``."""

    arity = 3


class QuadrupletNetwork(TupleNetwork):
    """Four shared-weight branches: ``forward(a, p, n, n2) -> (ea, ep, en, en2)``."""

    arity = 4


__all__ = ["TupleNetwork", "SiameseNetwork", "TripletNetwork", "QuadrupletNetwork"]
