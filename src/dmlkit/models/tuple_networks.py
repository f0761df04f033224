"""Shared-weight tuple networks: one embedding model applied to every member of a tuple.

Siamese networks (Bromley et al., "Signature Verification using a Siamese Time Delay
Neural Network", NIPS 1993), triplet networks (Hoffer & Ailon, "Deep metric learning
using Triplet network", 2015) and quadruplet networks (Chen et al., CVPR 2017) are the
same model run on two, three or four inputs; ``TupleNetwork(model, arity=k)`` runs it on
any ``k >= 2`` (N-pair and (N+1)-tuple networks). There is exactly one parameter set, so
the gradients of all branches accumulate into it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit._checks import check_int
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.tuples import IndexTuple, Pairs
from dmlkit.models.sizes import check_bool


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
    arity : int, optional
        Number of members of a tuple, >= 2. Required here; the named networks
        (:class:`SiameseNetwork`, :class:`TripletNetwork`, :class:`QuadrupletNetwork`)
        fix it to 2, 3 and 4.

    Examples
    --------
    An N-pair network (an anchor, its positive and N - 1 = 4 negatives) is
    ``TupleNetwork(model, arity=6)``.
    """

    arity: int | None = None

    def __init__(self, model: nn.Module, concat: bool = True, arity: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        name, fixed = type(self).__name__, type(self).arity
        if arity is None and fixed is None:
            raise ValueError(
                f"{name} needs arity=k (the number of members of a tuple, >= 2); "
                "or use SiameseNetwork, TripletNetwork or QuadrupletNetwork"
            )
        if arity is not None:
            arity = check_int(f"{name}: arity", arity, 2)
            if fixed is not None and arity != fixed:
                raise ValueError(
                    f"{name} has arity {fixed}, got arity={arity}; use "
                    f"TupleNetwork(model, arity={arity}) for {arity} members"
                )
        self.model = model
        self.concat = check_bool(name, "concat", concat)
        self.arity = arity if arity is not None else fixed

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

    def embed_tuples(
        self, inputs: Tensor, indices: IndexTuple | tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        """Embed a batch of unique items once and gather each tuple member.

        Parameters
        ----------
        inputs : Tensor (k, ...)
            The distinct items referenced by ``indices``.
        indices : Pairs, Triplets, Quadruplets or tuple of Tensor
            Index tensors into ``inputs``, each ``(T,)``: ``arity`` of them (for an arity
            of 2, ``Pairs`` or a plain 4-tuple: positive and negative pairs).

        Returns
        -------
        tuple of Tensor
            One ``(T, dim)`` tensor per member of ``indices`` (in its field order).

        Raises
        ------
        TypeError
            When ``indices`` is not a tuple of index tensors.
        ValueError
            When its tuples do not have ``arity`` members.
        """
        if not isinstance(indices, tuple):
            raise TypeError(
                f"indices must be a tuple of index tensors (Pairs, Triplets, "
                f"Quadruplets), got {type(indices).__name__}"
            )
        # Pairs, or a plain 4-tuple read as pairs by a Siamese network: two members each
        pairs = isinstance(indices, Pairs) or (
            self.arity == 2 and type(indices) is tuple and len(indices) == 4
        )
        members = 2 if pairs else len(indices)
        if members != self.arity:
            raise ValueError(
                f"{type(self).__name__} takes tuples of {self.arity} members, "
                f"got {type(indices).__name__} of {members} members"
            )
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
