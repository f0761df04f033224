"""Smooth-AP (Brown, Xie, Kalogeiton & Zisserman, "Smooth-AP: Smoothing the Path Towards
Large-Scale Image Retrieval", ECCV 2020)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._miner_weights import miner_weights
from dmlkit.losses._rows import pack, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss

Grouping = Literal["blocks", "labels"]


@register_loss("smooth_ap")
class SmoothAPLoss(BaseMetricLoss):
    r"""One minus a smoothed average precision of every query against the batch.

    Each sample :math:`q` is a query, the whole batch (``q`` included) is its retrieval
    set and its group :math:`G_q` (``q`` included) the relevant items. Ranks are
    smoothed with a sigmoid :math:`\sigma_\tau(u) = \sigma(u / \tau)`:

    .. math::

        \mathrm{AP}_q = \frac{1}{|G_q|} \sum_{p \in G_q}
          \frac{1 + \sum_{k \in G_q, k \ne p} \sigma_\tau(s_{qk} - s_{qp})}
               {1 + \sum_{k \ne p} \sigma_\tau(s_{qk} - s_{qp})},
        \qquad L = \frac{1}{B} \sum_q w_q (1 - \mathrm{AP}_q)

    where :math:`w_q` are miner weights (how often ``q`` appears in ``indices``, divided
    by the largest count; all 1 without ``indices``).

    Groups (``grouping``):

    * ``"blocks"`` (default, pytorch-metric-learning's ``SmoothAPLoss`` and the paper's
      code): the batch is read as consecutive blocks of :math:`U` rows, :math:`U` being
      the number of distinct labels. These blocks are the classes only when the batch
      is sorted by class and has as many samples per class as classes (e.g. 6 classes
      x 6 samples); otherwise positives are rows that merely sit next to each other
      (:meth:`blocks_are_classes` tells; the trainer refuses, before training, a sampler
      whose first batch is not such blocks).
    * ``"labels"``: :math:`G_q` = the samples with ``q``'s label (any order).

    As in pytorch-metric-learning, every class must have the same number of samples
    (``ValueError`` otherwise); no ``ref_embeddings``. Memory O(chunk * g * B) with
    ``g`` the group size, instead of pytorch-metric-learning's O(B^3).

    Parameters
    ----------
    temperature : float
        :math:`\tau` of the sigmoid.
    grouping : {"blocks", "labels"}
        See above.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted.
    """

    requires_labels = True

    def __init__(
        self,
        temperature: float = 0.01,
        grouping: Grouping = "blocks",
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(f"SmoothAPLoss needs a CosineSimilarity, got {type(distance).__name__}")
        if grouping not in ("blocks", "labels"):
            raise ValueError(f"grouping must be 'blocks' or 'labels', got {grouping!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(distance=distance)
        self.temperature = float(temperature)
        self.grouping = grouping

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def _groups(self, labels: Tensor) -> tuple[Tensor, int]:
        """Each sample's group id ``(B,)`` and the group size ``g``."""
        b = labels.shape[0]
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if counts.unique().numel() != 1:
            raise ValueError(
                "SmoothAPLoss needs the same number of samples in every class, got class "
                f"sizes {counts.tolist()} (an m-per-class sampler gives such batches)"
            )
        if self.grouping == "labels":
            return inverse, int(counts[0])
        g = b // (b // counts.numel())  # U rows a block (b = U x samples per class)
        return torch.arange(b, device=labels.device) // g, g  # (B,)

    def blocks_are_classes(self, labels: Tensor) -> bool:
        """Whether the groups this loss reads from a batch with ``labels`` ``(B,)`` are its
        classes: each consecutive block of ``U`` rows holds one class and each class one
        block (always with ``grouping="labels"``; False when the classes differ in size,
        which the loss refuses)."""
        if self.grouping == "labels" or labels.numel() == 0:
            return True
        try:
            group, _ = self._groups(labels)
        except ValueError:
            return False
        classes = torch.unique(labels).numel()
        both = torch.unique(torch.stack([group, labels]), dim=1).shape[1]  # (block, label)s
        return both == classes == int(group.max()) + 1

    def _members(self, labels: Tensor) -> Tensor:
        """``(B, g)``: the indices of each sample's group, ascending."""
        group, g = self._groups(labels)
        order = torch.sort(group, stable=True).indices.view(-1, g)  # (B / g, g)
        return order[group]  # (B, g)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if ref_embeddings is not None:
            raise ValueError("SmoothAPLoss does not use ref_embeddings")
        if labels is None or labels.dim() != 1:
            raise ValueError("SmoothAPLoss needs (n,) class labels")
        b = embeddings.shape[0]
        members = self._members(labels)  # (B, g)
        g = members.shape[1]
        x = self.distance.maybe_normalize(embeddings)  # (B, d)
        w = miner_weights(indices, b, x, using_ref=False)  # (B,)
        tau = self.temperature

        def chunk_terms(start: int, stop: int, x_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[start:stop], x_)  # (c, B)
            mem = members[start:stop]  # (c, g)
            s_p = s.gather(1, mem)  # (c, g)
            sig = torch.sigmoid((s[:, None, :] - s_p[:, :, None]) / tau)  # (c, g, B)
            not_p = torch.ones_like(sig).scatter_(2, mem[:, :, None], 0.0)  # k != p
            all_rank = 1.0 + (sig * not_p).sum(dim=2)  # (c, g)
            sig_g = sig.gather(2, mem[:, None, :].expand(-1, g, -1))  # (c, g, g)
            eye = torch.eye(g, dtype=s.dtype, device=s.device)
            pos_rank = 1.0 + (sig_g * (1.0 - eye)).sum(dim=2)  # (c, g)
            ap = (pos_rank / all_rank).sum(dim=1) / g  # (c,)
            return pack(((1.0 - ap) * w[start:stop]).sum())

        (total,) = sum_over_chunks(chunk_terms, b, 4 * g * b, x)
        return total / b


__all__ = ["SmoothAPLoss"]
