"""Shared machinery of the classifier and proxy losses (one or more learnable vectors per class).

Two bases live here:

* :class:`WeightClassifierLoss` validates class labels, refuses reference sets, turns
  mined tuples into per-sample weights (pytorch-metric-learning's rule, see
  :func:`~dmlkit.losses._miner_weights.miner_weights`) for the losses that take them,
  and sums per-sample losses over row chunks (:func:`fused_chunk_sum`: each chunk's
  gradient is taken right away), so a batch of 16384 embeddings against many classes
  never holds a full ``(B, C)`` logit matrix (and its softmax and gradient) at once;
* :class:`CosineMarginLoss` is softmax cross-entropy over scaled cosines to L2-normalized
  class weights, with a hook that modifies the target-class cosine (the margin). The
  normalized-softmax, SphereFace, CosFace, ArcFace and sub-center ArcFace losses are it
  with different hooks.

Class vectors are stored as pytorch-metric-learning stores them, so state dicts load
across the two libraries: ``W`` of shape ``(embedding_size, num_classes * per_class)``,
column ``c * per_class + k`` for the ``k``-th vector of class ``c``; ``weight`` is its
``(num_classes * per_class, embedding_size)`` row view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dmlkit._checks import check_int
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.chunking import DEFAULT_BUDGET, chunk_size_for, row_chunks
from dmlkit.functional.distances import l2_normalize
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._miner_weights import miner_weights
from dmlkit.losses.base import BaseMetricLoss


def check_class_labels(
    labels: Tensor, num_classes: int, name: str = "num_classes", what: str = "classes"
) -> None:
    """Raise unless ``labels`` are ``(n,)`` class ids in ``[0, num_classes)``.

    ``name`` is the loss's parameter that holds ``num_classes`` and ``what`` what it
    counts, for the message (e.g. ``"K"``, ``"proxies, one per class"``).
    """
    if labels.dim() != 1:
        raise ValueError(
            f"this loss needs class labels of shape (n,), got shape {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(
            f"label {bad} is outside [0, {name}={num_classes}): {name} is the number of "
            f"{what}, and the labels must be class ids below it"
        )


class TransposedKeyHook:
    """A load-state-dict pre-hook reading a ``(rows, D)`` tensor saved under ``old`` as
    ``new`` of shape ``(D, rows)`` (state saved before the class vectors took
    pytorch-metric-learning's layout). A module-level class, so that the losses holding
    it pickle (``torch.save`` of the whole module)."""

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new

    def __call__(self, state_dict: dict, prefix: str, *args: object) -> None:
        key_old, key_new = prefix + self.old, prefix + self.new
        if key_old in state_dict and key_new not in state_dict:
            state_dict[key_new] = state_dict.pop(key_old).T.contiguous()


def transposed_key_hook(old: str, new: str) -> TransposedKeyHook:
    """The pre-hook :class:`TransposedKeyHook` moving ``old`` to ``new``, transposed."""
    return TransposedKeyHook(old, new)


class WeightClassifierLoss(BaseMetricLoss):
    """Base of losses that compare each embedding with learnable class vectors.

    Subclasses implement :meth:`class_loss`. They need labels and have no reference-set
    form. Those that set ``accepts_indices = True`` take mined tuples as
    pytorch-metric-learning does, as per-sample weights: sample ``i`` weighs how often
    it occurs in the tuples' index tensors over the largest such count (0 when it
    occurs in none; every weight 1 when no tuple was mined). With
    ``weights_from_anchors`` only the anchor slots count (``a1`` and ``a2`` of
    :class:`~dmlkit.functional.tuples.Pairs`, the first member of triplets). Others
    refuse tuples (``ValueError``).
    """

    requires_labels = True
    accepts_indices = False
    #: count only the anchors of mined tuples (pytorch-metric-learning's ProxyNCA)
    weights_from_anchors: bool = False
    #: elements of a per-chunk intermediate (tests lower it to exercise the chunked path)
    chunk_budget: int = DEFAULT_BUDGET

    def __init__(self, num_classes: int, embedding_size: int, distance: BaseDistance | None = None):
        super().__init__(distance=distance)
        self.num_classes = check_int("num_classes", num_classes)
        self.embedding_size = check_int("embedding_size", embedding_size)

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if ref_embeddings is not None:
            raise ValueError(f"{type(self).__name__} does not use ref_embeddings")
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels")
        check_class_labels(labels, self.num_classes)
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {embeddings.shape[1]}, "
                f"but embedding_size={self.embedding_size}"
            )
        weights = None
        if indices is not None:
            weights = miner_weights(  # (n,)
                indices, embeddings.shape[0], embeddings, using_ref=self.weights_from_anchors
            )
        return self.class_loss(embeddings, labels, weights)

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:  # scalar
        """The loss of ``embeddings (n, D)`` with ``labels (n,)``; ``weights (n,)`` are
        the mined tuples' per-sample weights (None: every sample weighs 1)."""
        raise NotImplementedError

    def chunked_row_sum(
        self,
        fn: Callable[..., tuple[Tensor, Tensor]],
        embeddings: Tensor,
        labels: Tensor,
        weights: Tensor | None,
        *tensors: Tensor,
        elems_per_row: int,
    ) -> tuple[Tensor, Tensor]:
        """Sum ``fn(x_chunk, labels_chunk, weights_chunk, *tensors) -> (loss_sum, count)``
        over row chunks (``weights`` None: ones).

        See :func:`fused_chunk_sum`: peak memory is ``O(chunk * elems_per_row)`` and each
        chunk is evaluated once.
        """
        n = embeddings.shape[0]
        if weights is None:
            weights = embeddings.new_ones(n).detach()  # (n,)
        chunk = chunk_size_for(n, elems_per_row, self.chunk_budget)
        sliced = (True, True, True) + (False,) * len(tensors)
        return fused_chunk_sum(fn, n, chunk, (embeddings, labels, weights, *tensors), sliced)


def fused_chunk_sum(
    fn: Callable[..., tuple[Tensor, Tensor]],
    n: int,
    chunk: int,
    inputs: Sequence[Tensor],
    sliced: Sequence[bool],
) -> tuple[Tensor, Tensor]:
    """``sum over chunks [a, b) of fn(*chunk_inputs) -> (value, count)``, memory-bounded.

    ``chunk_inputs[i]`` is ``inputs[i][a:b]`` where ``sliced[i]``, else ``inputs[i]``.
    When the work is split and gradients are needed, each chunk's gradient with respect
    to every input is computed right after its value (one forward and one backward per
    chunk, nothing recomputed), accumulated into input-sized buffers, and scaled by the
    incoming gradient in backward. Peak memory is one chunk's intermediates plus the
    inputs' sizes, never the whole ``(n, ...)`` graph. Second derivatives are not
    supported on this path (backward raises).
    """
    grad_wanted = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if chunk >= n or not grad_wanted:
        like = next(t for t in inputs if t.is_floating_point())
        total = like.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=like.device)
        for a, b in row_chunks(n, chunk):
            s, c = fn(*[t[a:b] if sl else t for t, sl in zip(inputs, sliced, strict=True)])
            total, count = total + s, count + c
        return total, count
    return _FusedChunkSum.apply(fn, n, chunk, tuple(sliced), *inputs)


class _FusedChunkSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, n, chunk, sliced, *inputs):  # type: ignore[override]
        needs = ctx.needs_input_grad[4:]
        grads = [
            torch.zeros_like(t) if need else None for t, need in zip(inputs, needs, strict=True)
        ]
        like = next(t for t in inputs if t.is_floating_point())
        total = like.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=like.device)
        for a, b in row_chunks(n, chunk):
            with torch.enable_grad():
                local = [
                    (t[a:b] if sl else t).detach().requires_grad_(need)
                    for t, sl, need in zip(inputs, sliced, needs, strict=True)
                ]
                s, c = fn(*local)
                wrt = [v for v, need in zip(local, needs, strict=True) if need]
                if s.requires_grad:
                    parts = iter(torch.autograd.grad(s, wrt, allow_unused=True))
                else:  # this chunk does not depend on the inputs
                    parts = iter([None] * len(wrt))
            for i, need in enumerate(needs):
                g = next(parts) if need else None
                if g is None:
                    continue
                if sliced[i]:
                    grads[i][a:b] += g
                else:
                    grads[i] += g
            total = total + s.detach()
            count = count + c
        ctx.needs = needs
        ctx.save_for_backward(*[g for g in grads if g is not None])
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total, grad_count):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        out = [grad_total * next(saved) if need else None for need in ctx.needs]
        return (None, None, None, None, *out)


class CosineMarginLoss(WeightClassifierLoss):
    """Softmax cross-entropy over ``scale * cos(x, W_c)`` with a modified target logit.

    Subclasses override :meth:`target_logit` (the margin) and, if needed,
    :meth:`scale_logits`. The loss is the mean over the batch of the per-sample losses,
    times the mined tuples' per-sample weights when ``indices`` are given (as
    pytorch-metric-learning's margin losses take them).
    """

    accepts_indices = True

    def __init__(self, num_classes: int, embedding_size: int, per_class: int = 1) -> None:
        super().__init__(num_classes, embedding_size)
        self._per_class = check_int("per_class", per_class)
        # pytorch-metric-learning's layout and name: W is (D, C * K), column c * K + k
        self.W = nn.Parameter(torch.empty(embedding_size, num_classes * per_class))
        self.reset_parameters()
        self._register_load_state_dict_pre_hook(transposed_key_hook("weight", "W"))

    @property
    def weight(self) -> Tensor:
        """The class vectors as rows, ``(C * K, D)``: a view of ``W`` (``W.T``)."""
        return self.W.T

    def reset_parameters(self) -> None:
        """Standard-normal class weights (uniform directions once normalized)."""
        nn.init.normal_(self.W)

    def target_logit(self, cos_target: Tensor) -> Tensor:  # (c,) -> (c,)
        return cos_target

    def scale_logits(self, logits: Tensor, x: Tensor) -> Tensor:  # (c, C), (c, D) -> (c, C)
        """Scale the margin-adjusted cosines (may work in place on ``logits``)."""
        raise NotImplementedError

    def class_cosines(self, x: Tensor, w: Tensor) -> Tensor:
        """Cosine of unit ``x (c, D)`` to each class (max over a class's vectors), ``(c, C)``.

        Returns a fresh tensor that callers may modify in place.
        """
        cos = x @ w.T  # (c, C * K)
        if self._per_class > 1:
            cos = cos.view(x.shape[0], self.num_classes, self._per_class).max(dim=2).values
        return cos  # (c, C)

    def target_cosines(self, x: Tensor, labels: Tensor, w: Tensor) -> Tensor:
        """Cosine of unit ``x (c, D)`` to its own class ``labels (c,)``, row-wise, ``(c,)``."""
        if self._per_class == 1:
            return (x * w[labels]).sum(dim=1)  # (c,)
        own = w.view(self.num_classes, self._per_class, -1)[labels]  # (c, K, D)
        return torch.einsum("cd,ckd->ck", x, own).max(dim=1).values  # (c,)

    def _logits(self, x: Tensor, labels: Tensor | None, w: Tensor) -> Tensor:
        xn = l2_normalize(x)  # (c, D)
        cos = self.class_cosines(xn, w)  # (c, C), fresh: matmul / max keep no copy of it
        if labels is not None:
            # the target cosine is recomputed row-wise so that ``cos`` can be overwritten
            # in place (scatter_ and the scale save nothing): two (c, C) passes fewer
            target = self.target_logit(self.target_cosines(xn, labels, w))  # (c,)
            cos.scatter_(1, labels[:, None], target[:, None].to(cos.dtype))  # (c, C)
        return self.scale_logits(cos, x)  # (c, C)

    def logits(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Scaled class logits ``(n, C)``; with ``labels`` the target margins are applied.

        Without labels these are the classifier's scores for prediction.
        """
        w = l2_normalize(self.weight.to(embeddings.dtype))  # (C * K, D)
        return self._logits(embeddings, labels, w)

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        w = l2_normalize(self.weight.to(embeddings.dtype))  # (C * K, D)

        def chunk_terms(xc: Tensor, lc: Tensor, wc: Tensor, w_: Tensor) -> tuple[Tensor, Tensor]:
            loss = F.cross_entropy(self._logits(xc, lc, w_), lc, reduction="none")  # (c,)
            return (loss * wc).sum(), torch.tensor(xc.shape[0], device=xc.device)

        total, count = self.chunked_row_sum(
            chunk_terms, embeddings, labels, weights, w, elems_per_row=4 * w.shape[0]
        )
        return total / count.clamp_min(1)


__all__ = [
    "WeightClassifierLoss",
    "CosineMarginLoss",
    "TransposedKeyHook",
    "check_class_labels",
    "fused_chunk_sum",
    "transposed_key_hook",
]
