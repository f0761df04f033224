"""Distances of mined index pairs, computed once per batch.

A loss on miner-given tuples needs ``d(x[i], ref[j])`` for a list of index pairs that
can be far longer than the batch (634,880 triplets from a batch of 160, each asking
for two distances). Gathering the tuples' embedding rows costs ``T * dim`` memory and
time, forward and backward. Here the distances come from one ``(n, m)`` matrix instead
(one matrix product, and the same ``(n, m)`` gradient matrix back through the
distance's closed form), and each pair reads its entry: O(n m dim / fast + T) work and
no per-tuple copy of any row. When the pairs are few compared with the matrix
(``T * dim`` below ``n * m / ROWS_RATIO``) their rows are gathered instead: then that
is the cheaper pass, and its copies are smaller than the matrix would be.

The choice is made here by size, never by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dmlkit.distances import matrix_memo
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.distances.dot_product import DotProductSimilarity
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.distances import cut_sqrt, cut_zeros_
from dmlkit.functional.tuples import Pairs
from dmlkit.losses._rows import with_grads

#: the rows of the pairs are gathered when ``T * dim * ROWS_RATIO <= n * m``: a matrix
#: costs a few elementwise passes and matrix products over ``n * m`` entries, gathered
#: rows a few passes over ``T * dim`` (measured: rows win up to a few times ``n * m``)
ROWS_RATIO = 0.5


class _Matrix(torch.autograd.Function):
    """``distance.compute_matrix(x, y)`` built without autograd, differentiated in closed form.

    Backward receives the ``(n, m)`` gradient of the matrix and takes it through the
    distance's :meth:`~dmlkit.distances.base.BaseDistance.matrix_surrogate` (for the
    built-in distances two matrix products), never through the elementwise ops.
    """

    @staticmethod
    def forward(ctx, distance: BaseDistance, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        mat = distance.compute_matrix(x, y)  # (n, m)
        ctx.distance = distance
        ctx.save_for_backward(x, y, mat)
        return mat

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, y, mat = ctx.saved_tensors
        need_x, need_y = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        with torch.enable_grad():
            xd = x.detach().requires_grad_(need_x)
            yd = y.detach().requires_grad_(need_y)
            s = ctx.distance.matrix_surrogate(xd, yd, grad, mat)  # ()
            wrt = [t for t, need in ((xd, need_x), (yd, need_y)) if need]
            grads = iter(torch.autograd.grad(s, wrt, allow_unused=True))
        gx = next(grads) if need_x else None
        gy = next(grads) if need_y else None
        if need_x and gx is None:
            gx = torch.zeros_like(x)
        if need_y and gy is None:
            gy = torch.zeros_like(y)
        return None, gx, gy


def distance_matrix(distance: BaseDistance, x: Tensor, y: Tensor) -> Tensor:
    """``(n, d), (m, d) -> (n, m)`` matrix of normalized rows, closed-form backward."""
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        return _Matrix.apply(distance, x, y)
    return distance.compute_matrix(x, y)


def _gather(mat: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``mat[rows, cols]`` through one flat index (its backward is one ``index_add``)."""
    flat = rows * mat.shape[1] + cols  # (T,)
    return mat.reshape(-1).index_select(0, flat)  # (T,)


def use_matrix(n: int, m: int, t: int, dim: int) -> bool:
    """Whether ``t`` index pairs between ``n`` and ``m`` rows of width ``dim`` read a matrix."""
    return t * dim * ROWS_RATIO > n * m


def pair_distances(
    distance: BaseDistance,
    embeddings: Tensor,
    ref_embeddings: Tensor | None,
    requests: Sequence[tuple[Tensor, Tensor]],
    *,
    ref_requests: Sequence[tuple[Tensor, Tensor]] = (),
) -> tuple[list[Tensor], list[Tensor]]:
    """Distances (or similarities) of index pairs, one pass over the batch.

    Parameters
    ----------
    distance : BaseDistance
        Normalizes the inputs if it is set to, then measures.
    embeddings : Tensor
        ``(n, d)`` queries (anchors index these).
    ref_embeddings : Tensor, optional
        ``(m, d)`` references; None means the queries themselves.
    requests : sequence of (rows, cols)
        ``(T_k,)`` index tensors: ``d(embeddings[rows], ref[cols])`` each.
    ref_requests : sequence of (rows, cols)
        Pairs inside the reference set: ``d(ref[rows], ref[cols])``.

    Returns
    -------
    (list of Tensor, list of Tensor)
        ``(T_k,)`` values for ``requests`` and for ``ref_requests``, differentiable
        w.r.t. both embedding tensors.
    """
    x = distance.maybe_normalize(embeddings)  # (n, d)
    ref = x if ref_embeddings is None else distance.maybe_normalize(ref_embeddings)  # (m, d)
    n, m, dim = x.shape[0], ref.shape[0], x.shape[1]
    out: list[Tensor] = []
    out_ref: list[Tensor] = []
    t_q = sum(r.numel() for r, _ in requests)
    t_r = sum(r.numel() for r, _ in ref_requests)
    if requests:
        if use_matrix(n, m, t_q + (t_r if ref_embeddings is None else 0), dim):
            mat = distance_matrix(distance, x, ref)  # (n, m)
            out = [_gather(mat, r, c) for r, c in requests]
            if ref_embeddings is None and ref_requests:
                out_ref = [_gather(mat, r, c) for r, c in ref_requests]
        else:
            out = [distance.compute_rowwise(x[r], ref[c]) for r, c in requests]  # (T_k,)
    if ref_requests and not out_ref:
        if use_matrix(m, m, t_r, dim):
            mat_r = distance_matrix(distance, ref, ref)  # (m, m)
            out_ref = [_gather(mat_r, r, c) for r, c in ref_requests]
        else:
            out_ref = [distance.compute_rowwise(ref[r], ref[c]) for r, c in ref_requests]
    return out, out_ref


def triplet_count(pairs: Pairs, n: int) -> int:
    """How many triplets :func:`~dmlkit.functional.pairs_to_triplets` would make of ``pairs``."""
    a1, _, a2, _ = pairs
    if a1.numel() == 0 or a2.numel() == 0:
        return 0
    per_anchor = torch.bincount(a1, minlength=n) * torch.bincount(a2, minlength=n)  # (n,)
    return int(per_anchor.sum())


def closed_form_loss(
    distance: BaseDistance,
    embeddings: Tensor,
    ref_embeddings: Tensor | None,
    requests: Sequence[tuple[Tensor, Tensor]],
    terms: Callable[[list[Tensor]], tuple[Tensor, list[Tensor]]],
) -> Tensor:
    """A loss of index-pair distances whose derivative w.r.t. each distance is known.

    One ``(n, m)`` matrix is computed without autograd and each request reads its
    ``(T_k,)`` entries; ``terms(values)`` returns the scalar loss and its derivatives
    ``(T_k,)`` with respect to each ``values[k]`` (computed under ``no_grad``). The
    derivatives are added into one ``(n, m)`` gradient matrix (``index_add``), which
    the distance's closed-form surrogate takes back to the embeddings: no per-tuple
    tensor ever enters the autograd graph.
    """
    x = distance.maybe_normalize(embeddings)  # (n, d)
    ref = x if ref_embeddings is None else distance.maybe_normalize(ref_embeddings)  # (m, d)
    m = ref.shape[0]
    need_grad = torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)
    t = sum(r.numel() for r, _ in requests)
    # the miner's matrix of these very embeddings, when it left one (read once)
    mined = matrix_memo.recall(embeddings, ref_embeddings, distance)
    if type(distance) in _ROWWISE and not use_matrix(x.shape[0], m, t, x.shape[1]):
        # few pairs: their rows are cheaper than the matrix's backward, given or not
        return _rows_closed_form(distance, x, ref, requests, terms, need_grad)
    with torch.no_grad():
        mat = mined if mined is not None else _matrix(distance, x.detach(), ref.detach())
        flat = mat.reshape(-1)  # (n * m,)
        index = [torch.add(c, r, alpha=m) for r, c in requests]  # (T_k,) flat positions
        value, grads = terms([flat.index_select(0, f) for f in index])
        if not need_grad:
            return value
        grad = torch.zeros_like(flat)  # (n * m,)
        for f, g in zip(index, grads, strict=True):
            grad.index_add_(0, f, g.to(grad.dtype))
        grad = grad.view_as(mat)  # (n, m)
        direct = _direct_grads(distance, x.detach(), ref.detach(), grad, mat)
    if direct is not None:
        return with_grads(value, x, ref, *direct)
    s = distance.matrix_surrogate(x, ref, grad, mat)  # ()
    return value + (s - s.detach())


_ROWWISE = (EuclideanDistance, CosineSimilarity, DotProductSimilarity)


def _rows_closed_form(
    distance: BaseDistance,
    x: Tensor,
    ref: Tensor,
    requests: Sequence[tuple[Tensor, Tensor]],
    terms: Callable[[list[Tensor]], tuple[Tensor, list[Tensor]]],
    need_grad: bool,
) -> Tensor:
    """:func:`closed_form_loss` for few pairs: their rows gathered once (``(T, d)``, at
    most a few times the ``(n, m)`` matrix by :func:`use_matrix`), the gradient added
    back row by row (``index_add``), nothing of size ``(n, m)``."""
    euclid = type(distance) is EuclideanDistance
    squared = euclid and distance.squared
    with torch.no_grad():
        xd, rd = x.detach(), ref.detach()
        kept, values = [], []
        for r, c in requests:
            a, b = xd.index_select(0, r), rd.index_select(0, c)  # (T, d) each
            if euclid:
                if not squared:  # the norms, before a becomes the difference
                    a_sq, b_sq = (a * a).sum(dim=1), (b * b).sum(dim=1)  # (T,) each
                diff = a.sub_(b)  # (T, d)
                v = (diff * diff).sum(dim=1)  # (T,) squared distances
                if not squared:  # safe_sqrt's zeros (and zero gradients)
                    v = cut_sqrt(v, a_sq, b_sq, inplace=True)
                kept.append((diff,))
            else:
                v = (a * b).sum(dim=1)  # (T,)
                kept.append((a, b))
            values.append(v)
        value, grads = terms([v.clone() for v in values])
        if not need_grad:
            return value
        gx, gr = torch.zeros_like(xd), torch.zeros_like(rd)  # (n, d), (m, d)
        for (r, c), g, v, k in zip(requests, grads, values, kept, strict=True):
            g = g.to(xd.dtype)
            if euclid:
                coef = 2.0 * g if squared else torch.where(v > 0, g / v.clamp_min(1e-30), 0.0)
                w = k[0].mul_(coef[:, None])  # (T, d): d loss / d a
                gx.index_add_(0, r, w)
                gr.index_add_(0, c, w, alpha=-1)
            else:
                gx.index_add_(0, r, k[1].mul_(g[:, None]))  # (T, d): g * b
                gr.index_add_(0, c, k[0].mul_(g[:, None]))  # (T, d): g * a
    return with_grads(value, x, ref, gx, gr)


def _matrix(distance: BaseDistance, x: Tensor, ref: Tensor) -> Tensor:
    """The ``(n, m)`` matrix without autograd: Euclidean in one ``cdist`` call (the
    values pytorch-metric-learning's ``LpDistance`` computes), with the zeros of
    :func:`~dmlkit.functional.distances.cut_zeros_`."""
    if type(distance) is EuclideanDistance and not distance.squared:
        mat = torch.cdist(x, ref)  # (n, m)
        x_sq, r_sq = (x * x).sum(dim=1)[:, None], (ref * ref).sum(dim=1)[None, :]
        return cut_zeros_(mat, x_sq, r_sq)  # safe_sqrt's zeros
    return distance.compute_matrix(x, ref)


def _direct_grads(
    distance: BaseDistance, x: Tensor, ref: Tensor, grad: Tensor, mat: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Gradients ``(n, d)``, ``(m, d)`` of ``sum(grad * mat)`` for the built-in distances."""
    kind = type(distance)
    if kind in (CosineSimilarity, DotProductSimilarity):
        return grad @ ref, grad.T @ x  # (n, d), (m, d)
    if kind is not EuclideanDistance:
        return None
    if distance.squared:  # d2 = |x|^2 + |y|^2 - 2 x.y
        h = grad * 2.0  # (n, m)
    else:  # d = sqrt(d2): 1 / (2 d), zero where d = 0 (safe_sqrt's gradient)
        h = torch.where(mat > 0, grad / mat.clamp_min(1e-30), 0.0)  # (n, m)
    gx = h.sum(dim=1, keepdim=True) * x - h @ ref  # (n, d)
    gr = h.sum(dim=0)[:, None] * ref - h.T @ x  # (m, d)
    return gx, gr


__all__ = [
    "ROWS_RATIO",
    "closed_form_loss",
    "distance_matrix",
    "pair_distances",
    "triplet_count",
    "use_matrix",
]
