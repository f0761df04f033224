"""Margin loss with a learnable boundary (Wu, Manmatha, Smola & Kraehenbuehl, ICCV 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.tuples import IndexTuple, Pairs, Triplets, pairs_to_triplets
from dmlkit.losses._rows import pack, setup_rows, sum_over_chunks
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.losses.weight_classifier import check_class_labels
from dmlkit.registry import register_loss


@register_loss("margin")
class MarginLoss(BaseMetricLoss):
    r"""Positives inside and negatives outside a boundary :math:`\beta`, by a margin.

    For each triplet :math:`(a, p, n)`:

    .. math::

        \ell = [d_{ap} - \beta_a + \alpha]_+ + [\beta_a - d_{an} + \alpha]_+

    summed over triplets and divided by the number of non-zero pair terms; with
    ``learn_beta`` the regularizer :math:`\nu \beta` is added (for per-class betas,
    :math:`\nu \sum_{\text{triplets}} \beta_a` over the same divisor). This is
    pytorch-metric-learning's ``MarginLoss`` with its default reducer. With labels
    and no ``indices`` every triplet of the batch is used, in closed form: O(n * m)
    time and O(chunk * m) memory, no triplet is materialized.

    Parameters
    ----------
    margin : float
        :math:`\alpha`.
    nu : float
        Weight of the :math:`\beta` regularizer (used when ``learn_beta``).
    beta : float or sequence of float
        Initial boundary (or the ``(C,)`` / ``(1,)`` values of a saved loss).
    triplets_per_anchor : "all"
        Only ``"all"``; use a miner to select fewer triplets.
    learn_beta : bool
        Make :math:`\beta` an ``nn.Parameter``.
    num_classes : int, optional
        One :math:`\beta` per class (labels must be class ids) instead of a global one.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Attributes
    ----------
    beta : Tensor of shape (C,) or (1,)
        As in pytorch-metric-learning: an ``nn.Parameter`` (state-dict key ``beta``)
        with ``learn_beta``, else a tensor outside the state dict, so state dicts load
        across the two libraries in both directions. ``betas`` is the same tensor.

    Notes
    -----
    Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017 (the
    distance-weighted sampling of that paper is a separate miner).
    """

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0.0,
        beta: float | Sequence[float] = 1.2,
        triplets_per_anchor: Literal["all"] = "all",
        learn_beta: bool = False,
        num_classes: int | None = None,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if triplets_per_anchor != "all":
            raise ValueError(
                f"triplets_per_anchor={triplets_per_anchor!r} is not supported; "
                "use 'all' and a miner"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if margin < 0:
            raise ValueError(f"MarginLoss: margin (alpha) must be >= 0, got {margin}")
        self.margin = float(margin)
        self.nu = float(nu)
        self.triplets_per_anchor = triplets_per_anchor
        self.learn_beta = learn_beta
        self.num_classes = num_classes
        size = num_classes or 1
        if isinstance(beta, (int, float)):
            betas = torch.full((size,), float(beta))  # (C,) or (1,)
        else:  # the values a config of a (trained) loss holds
            betas = torch.as_tensor(beta, dtype=torch.float32).detach().clone().reshape(-1)
            if betas.numel() != size:
                raise ValueError(f"beta holds {betas.numel()} values, expected {size}")
        if not bool(torch.isfinite(betas).all()):
            raise ValueError(f"MarginLoss: beta must hold only finite numbers, got {beta!r}")
        # pytorch-metric-learning's layout: a (C,) or (1,) tensor named beta, a Parameter
        # when learned (in the state dict), else a plain tensor (not in the state dict)
        if learn_beta:
            self.beta = nn.Parameter(betas)
        else:
            self.register_buffer("beta", betas, persistent=False)

    @property
    def betas(self) -> Tensor:
        """The boundary tensor ``beta`` (older name)."""
        return self.beta

    def _beta_of(self, anchor_labels: Tensor | None, count: int) -> Tensor:
        if self.beta.numel() == 1:
            return self.beta.expand(count)  # (count,)
        if anchor_labels is None or anchor_labels.dim() != 1:
            raise ValueError("MarginLoss with num_classes needs (n,) class-id labels")
        # a label < 0 would index beta from the end (-1 -> class K-1's beta), silently
        check_class_labels(anchor_labels, self.beta.numel(), what="learned betas, one per class")
        return self.beta[anchor_labels]  # (count,)

    def _terms(self, d_ap: Tensor, d_an: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        if self.distance.is_similarity:
            return torch.relu(beta - d_ap + self.margin), torch.relu(d_an - beta + self.margin)
        return torch.relu(d_ap - beta + self.margin), torch.relu(beta - d_an + self.margin)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is None:
            total, divisor, n_trip, reg = self._all_triplets(
                embeddings, labels, ref_embeddings, ref_labels
            )
        else:
            total, divisor, n_trip, reg = self._given_triplets(
                embeddings, labels, indices, ref_embeddings
            )
        if n_trip == 0:
            return self.zero_loss(embeddings)
        zero = self.zero_loss(embeddings)
        loss = total / divisor if divisor > 0 else zero
        if self.learn_beta:
            if self.beta.numel() == 1:
                loss = loss + self.nu * self.beta.sum()
            elif divisor > 0:
                loss = loss + reg / divisor
        return loss + zero

    def _given_triplets(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple,
        ref_embeddings: Tensor | None,
    ) -> tuple[Tensor, Tensor, int, Tensor]:
        trip = pairs_to_triplets(indices) if isinstance(indices, Pairs) else Triplets(*indices[:3])
        t = trip.anchor.numel()
        anchor_labels = None if labels is None else labels[trip.anchor]
        beta = self._beta_of(anchor_labels, t).to(embeddings.dtype)  # (T,)
        (d_ap, d_an), _ = pair_distances(
            self.distance,
            embeddings,
            ref_embeddings,
            [(trip.anchor, trip.positive), (trip.anchor, trip.negative)],
        )  # (T,) each, no (T, dim) copies
        pos_l, neg_l = self._terms(d_ap, d_an, beta)  # (T,), (T,)
        divisor = (pos_l > 0).sum() + (neg_l > 0).sum()
        return (pos_l + neg_l).sum(), divisor, t, self.nu * beta.sum()

    def _all_triplets(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> tuple[Tensor, Tensor, int, Tensor]:
        x, ref, weights = setup_rows(
            self.distance, embeddings, labels, None, ref_embeddings, ref_labels
        )
        per_class = self.beta.numel() > 1
        if per_class:
            self._beta_of(labels, labels.shape[0])  # validates the labels

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor, betas: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = weights(start, stop, d.dtype, d.device)  # (c, m) 0/1
            beta = betas[labels[start:stop]] if per_class else betas.expand(stop - start)
            beta = beta.to(d.dtype)[:, None]  # (c, 1)
            pos_l, neg_l = self._terms(d, d, beta)  # (c, m)
            n_pos, n_neg = pos.sum(dim=1), neg.sum(dim=1)  # (c,)
            # each positive pair appears in n_neg triplets, each negative pair in n_pos
            total = ((pos_l * pos).sum(dim=1) * n_neg + (neg_l * neg).sum(dim=1) * n_pos).sum()
            div = (
                ((pos_l > 0) * pos).sum(dim=1) * n_neg + ((neg_l > 0) * neg).sum(dim=1) * n_pos
            ).sum()
            n_trip = (n_pos * n_neg).sum()
            reg = self.nu * (beta.squeeze(1) * n_pos * n_neg).sum()
            return pack(total, div, n_trip, reg)

        total, divisor, n_trip, reg = sum_over_chunks(
            chunk_terms, x.shape[0], 6 * ref.shape[0], x, ref, self.beta
        )
        return total, divisor.round(), int(n_trip.round()), reg
