"""Proxy-Anchor loss (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.functional.chunking import chunk_size_for
from dmlkit.functional.distances import l2_normalize
from dmlkit.losses.weight_classifier import WeightClassifierLoss, fused_chunk_sum
from dmlkit.registry import register_loss


def _log1p_sum_exp(logits: Tensor) -> Tensor:
    """``log(1 + sum_rows exp(logits))`` per column, ``(n, c) -> (c,)``; -inf entries drop out."""
    zeros = logits.new_zeros(1, logits.shape[1])  # (1, c)
    return torch.logsumexp(torch.cat([logits, zeros], dim=0), dim=0)  # (c,)


@register_loss("proxy_anchor")
class ProxyAnchorLoss(WeightClassifierLoss):
    """Each proxy is an anchor that pulls its class's samples and pushes all others.

    With cosine similarity ``s(x, p)``, ``P+`` the proxies with a positive in the batch,
    ``X_p+`` / ``X_p-`` the batch samples of / not of proxy ``p``'s class:

    ``L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} e^{-alpha (s(x,p) - margin)})
        + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} e^{ alpha (s(x,p) + margin)})``

    Mined tuples (``indices``) give each sample ``x`` a weight ``w_x`` (see
    :class:`~dmlkit.losses.weight_classifier.WeightClassifierLoss`) that is added to its
    exponents as ``w_x - 1``, pytorch-metric-learning's rule: ``e^{... + w_x - 1}`` in both
    sums (a sample in no tuple is damped by ``e^{-1}``, not removed).

    Computed in chunks of proxies (each chunk's gradient taken at once, see
    :func:`~dmlkit.losses.weight_classifier.fused_chunk_sum`), so memory is
    ``O(B * chunk)`` rather than ``O(B * C)``.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C`` (= proxies).
    embedding_size : int
        Embedding dimension ``D``.
    margin : float
        Margin ``delta`` of the paper.
    alpha : float
        Scaling factor ``alpha`` of the paper.

    Attributes
    ----------
    proxies : nn.Parameter of shape (C, D)
        Kaiming-normal initialized (``mode="fan_out"``), as in the paper's code.

    Matches pytorch-metric-learning's ``ProxyAnchorLoss`` (value and gradient, mined
    tuples included).
    """

    accepts_indices = True

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0
    ) -> None:
        super().__init__(num_classes, embedding_size)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        x = l2_normalize(embeddings)  # (B, D)
        p = l2_normalize(self.proxies.to(x.dtype))  # (C, D)
        alpha, margin = self.alpha, self.margin
        n_classes = p.shape[0]
        with_pos = torch.zeros(n_classes, dtype=torch.bool, device=labels.device)
        with_pos[labels] = True
        pos_div = with_pos.sum().clamp_min(1).to(x.dtype)  # |P+|
        # the mined tuples' weights enter the exponents as w - 1 (0 without tuples)
        shift = x.new_zeros(x.shape[0]) if weights is None else weights - 1.0  # (B,)

        def chunk_terms(x_: Tensor, pc: Tensor, classes: Tensor, lab: Tensor, sh: Tensor):
            cos = x_ @ pc.T  # (B, c)
            pos = lab[:, None] == classes[None, :]  # (B, c)
            pos_logits = -alpha * (cos - margin) + sh[:, None]  # (B, c)
            neg_logits = alpha * (cos + margin) + sh[:, None]  # (B, c)
            pos_term = _log1p_sum_exp(pos_logits.masked_fill(~pos, float("-inf")))
            neg_term = _log1p_sum_exp(neg_logits.masked_fill(pos, float("-inf")))
            value = pos_term.sum() / pos_div + neg_term.sum() / n_classes
            return value, torch.zeros((), dtype=torch.long, device=x_.device)

        chunk = chunk_size_for(n_classes, 6 * x.shape[0], self.chunk_budget)
        classes = torch.arange(n_classes, device=labels.device)  # (C,)
        total, _ = fused_chunk_sum(
            chunk_terms, n_classes, chunk, (x, p, classes, labels, shift),
            (False, True, True, False, False),
        )
        return total
