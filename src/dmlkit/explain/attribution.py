"""Which parts of two inputs drive their similarity under a learned metric.

The explained quantity is the similarity ``s(a, b) = cos(f(a), f(b))`` of two items'
embeddings (or ``-||f(a) - f(b)||^2`` with ``metric="euclidean"``).

- :func:`integrated_gradients` (Sundararajan et al., ICML 2017): the path integral of
  ``ds/da`` from a baseline ``a0`` (zeros by default) to ``a``, times ``a - a0``; its sum
  over the input equals ``s(a, b) - s(a0, b)`` (completeness), up to the Riemann error;
  :func:`ig_completeness` measures that gap, and
  :func:`integrated_gradients` warns when it exceeds :data:`IG_COMPLETENESS_TOLERANCE`.
- :func:`occlusion` (Zeiler and Fergus, ECCV 2014): how much the similarity drops when a
  square patch of ``a`` is replaced by ``fill``; one value per patch position, spread
  back over the pixels it covers.
- :func:`nearest_prototypes`: the class centroids of a reference set closest to an item
  (by cosine, or by Euclidean distance).

Each function runs the model in eval mode and gives it back in the mode it was in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.models.modes import eval_mode

_NO_GRADIENT = ("integrated gradients need the similarity's gradient with respect to the "
                "input, and this model computes its embeddings without one (a frozen "
                "pretrained backbone runs without gradients); explain it by occlusion")


class NoInputGradientError(ValueError):
    """The model's embeddings have no gradient with respect to its input (a frozen
    backbone), so gradient attributions cannot be computed; occlusion still can."""


#: positions a default 1-D occlusion window visits, about
OCCLUSION_POSITIONS_1D = 200


def default_occlusion_window(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """``(patch, stride)`` for occluding an item of ``shape`` when none is given.

    Images (``(C, H, W)`` or ``(H, W)``): 2 x 2 patches at every pixel. 1-D inputs of
    ``n`` values (a feature vector, a waveform): runs of ``max(2, n // 100)`` values
    every ``max(1, patch // 2)``: ``n - 1`` positions up to 200 values, and beyond, about
    :data:`OCCLUSION_POSITIONS_1D` to twice that however long the input (64 features:
    patch 2, stride 1, 63 positions; 24,000 samples: patch 240, stride 120, 199
    positions).
    """
    if len(shape) >= 2:
        return 2, 1
    n = int(shape[-1]) if len(shape) else 1
    patch = max(2, n // (OCCLUSION_POSITIONS_1D // 2))
    return patch, stride_for_patch(shape, patch)


def stride_for_patch(shape: tuple[int, ...] | torch.Size, patch: int) -> int:
    """The default stride of ``patch``: 1 on images, half the patch on 1-D inputs."""
    return 1 if len(shape) >= 2 else max(1, patch // 2)


def _as_batch(x: Any) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    return x.unsqueeze(0)  # (1, ...)


def _check_finite(**inputs: Any) -> None:
    """Refuse an input holding NaN or infinite values (its map would be all NaN)."""
    for name, x in inputs.items():
        values = None if x is None else torch.as_tensor(x, dtype=torch.float32)
        if values is not None and not bool(torch.isfinite(values).all()):
            raise ValueError(f"{name} holds NaN or infinite values: give finite inputs")


def occlusion_window(shape: tuple[int, ...] | torch.Size, patch: int,
                     stride: int) -> tuple[int | tuple[int, int], int]:
    """``(patch, stride)`` as :func:`occlusion` uses them on an item of ``shape``: the
    patch cut to the input's height and width (its length, 1-D), as ``(ph, pw)`` where
    the two differ; the stride at most that patch."""
    if len(shape) >= 2:
        ph, pw = min(patch, int(shape[-2])), min(patch, int(shape[-1]))
        return (ph if ph == pw else (ph, pw)), min(stride, max(ph, pw))
    pw = min(patch, int(shape[-1]) if len(shape) else 1)
    return pw, min(stride, pw)


#: the similarities an explanation can be of
METRICS = ("cosine", "euclidean")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def _scores(za: Tensor, zb: Tensor, metric: str) -> Tensor:
    """Row-wise similarity ``(n,)`` of embeddings ``za`` and ``zb`` (``(n, d)`` each; the
    callers have checked ``metric``)."""
    if metric == "cosine":
        return nn.functional.cosine_similarity(za, zb, dim=1)  # (n,)
    return -(za - zb).pow(2).sum(1)


def similarity(model: nn.Module, a: Tensor, b: Tensor, metric: str = "cosine") -> Tensor:
    """Row-wise similarity of the embeddings of ``a`` and ``b`` (``(n, ...)`` each)."""
    _check_metric(metric)
    with eval_mode(model):  # (the mode the maps explain; the caller's is restored)
        return _scores(model(a), model(b), metric)  # (n,)


#: input values (steps x values of an item) of one batch of integrated-gradient steps:
#: the path is run through the model this many values at a time, whatever ``steps``
IG_CHUNK_VALUES = 1 << 20


#: the largest relative completeness error of integrated gradients,
#: ``|sum(attributions) - (s(a, b) - s(a0, b))| / |s(a, b) - s(a0, b)|``, that passes
#: without a warning (5%): beyond it the ``steps`` path points miss where the similarity
#: changes (a log front end near a zero baseline changes it almost all at once)
IG_COMPLETENESS_TOLERANCE = 0.05


class IncompleteAttributionWarning(UserWarning):
    """Integrated gradients whose sum misses ``s(a, b) - s(a0, b)`` by more than
    :data:`IG_COMPLETENESS_TOLERANCE` of it: too few steps for the path, or a baseline
    near which the similarity changes sharply."""


def integrated_gradients(model: nn.Module, a: Any, b: Any, *, baseline: Any = None,
                         steps: int = 32, metric: str = "cosine", batch_size: int = 64,
                         progress: Callable[[int, int], None] | None = None,
                         check_completeness: bool = True) -> Tensor:
    """Attribution of ``s(a, b)`` to each value of ``a`` (same shape as ``a``).

    The ``steps`` points of the path (midpoint rule) go through the model in batches of
    at most ``batch_size`` steps and :data:`IG_CHUNK_VALUES` input values, their
    gradients summed batch by batch, so memory does not grow with ``steps`` (the
    result is the one of a single batch, up to float rounding). ``progress(done,
    total)`` is called after each batch of steps.

    Warns with :class:`IncompleteAttributionWarning` (a ``UserWarning``) when the
    attributions' sum misses ``s(a, b) - s(baseline, b)`` by more than
    :data:`IG_COMPLETENESS_TOLERANCE` of it (:func:`ig_completeness` gives the gap);
    ``check_completeness=False`` skips that check, for a caller that measures the gap
    itself with :func:`ig_completeness`.

    Raises
    ------
    NoInputGradientError
        When the model's embeddings have no gradient with respect to its input.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    _check_metric(metric)
    _check_finite(a=a, b=b, baseline=baseline)
    with eval_mode(model):
        attributions = _integrated_gradients(model, a, b, baseline, steps, metric,
                                             batch_size, progress)
        if not check_completeness:
            return attributions
        gap = _completeness(model, a, b, baseline, attributions, metric)
    if incomplete(gap):
        warnings.warn(f"{completeness_text(gap)}; raise steps (now {steps}) or give "
                      "another baseline", IncompleteAttributionWarning, stacklevel=2)
    return attributions


def ig_completeness(model: nn.Module, a: Any, b: Any, attributions: Tensor, *,
                    baseline: Any = None, metric: str = "cosine") -> dict[str, float]:
    """How complete the :func:`integrated_gradients` ``attributions`` of ``a`` (against
    ``b``, from ``baseline``) are: ``{"sum": sum of the attributions, "difference":
    s(a, b) - s(baseline, b), "relative_error": |sum - difference| / |difference|}``
    (0 when both are within float rounding of each other, as when ``a`` is the
    baseline); :func:`incomplete` says whether it exceeds the tolerance."""
    _check_metric(metric)
    _check_finite(a=a, b=b, baseline=baseline)
    with eval_mode(model):
        return _completeness(model, a, b, baseline, torch.as_tensor(attributions), metric)


def _completeness(model: nn.Module, a: Any, b: Any, baseline: Any, attributions: Tensor,
                  metric: str) -> dict[str, float]:
    """The completeness gap of ``attributions`` (the model is in eval mode)."""
    xa, xb = _as_batch(a), _as_batch(b)
    x0 = torch.zeros_like(xa) if baseline is None else _as_batch(baseline).to(xa)
    with torch.no_grad():  # (one item a call, as the path's batches could be)
        zb = model(xb)  # (1, d)
        s_a, s_0 = (float(_scores(model(x), zb, metric)[0]) for x in (xa, x0))
    total, difference = float(attributions.double().sum()), s_a - s_0
    gap = abs(total - difference)
    rounding = 1e-5 * max(1.0, abs(s_a), abs(s_0))  # (float32 sums and similarities)
    error = 0.0 if gap <= rounding else gap / max(abs(difference), 1e-12)
    return {"sum": total, "difference": difference, "relative_error": error}


def incomplete(completeness: dict[str, float],
               tolerance: float = IG_COMPLETENESS_TOLERANCE) -> bool:
    """Whether a completeness of :func:`ig_completeness` misses
    by more than ``tolerance`` (relative)."""
    return completeness["relative_error"] > tolerance


def completeness_text(completeness: dict[str, float]) -> str:
    """One clause saying how incomplete integrated gradients are."""
    return (f"integrated gradients are incomplete: the attributions sum to "
            f"{completeness['sum']:.4g} but the similarity changes by "
            f"{completeness['difference']:.4g} from the baseline (relative error "
            f"{completeness['relative_error']:.0%}, over the "
            f"{IG_COMPLETENESS_TOLERANCE:.0%} tolerance): the path's steps miss where the "
            "similarity changes")


def _integrated_gradients(model: nn.Module, a: Any, b: Any, baseline: Any, steps: int,
                          metric: str, batch_size: int,
                          progress: Callable[[int, int], None] | None) -> Tensor:
    xa, xb = _as_batch(a), _as_batch(b)
    x0 = torch.zeros_like(xa) if baseline is None else _as_batch(baseline)
    if x0.shape != xa.shape or xb.shape[1:] != xa.shape[1:]:
        raise ValueError(f"a, b and the baseline must have one shape, got {tuple(xa.shape[1:])}, "
                         f"{tuple(xb.shape[1:])}, {tuple(x0.shape[1:])}")
    chunk = max(1, min(batch_size, IG_CHUNK_VALUES // max(xa.numel(), 1)))
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    shape = (-1, *[1] * (xa.dim() - 1))
    with torch.no_grad():
        zb = model(xb)  # (1, d)
    total = torch.zeros_like(xa)  # (1, ...) sum of the gradients along the path
    for start in range(0, steps, chunk):
        path = x0 + alphas[start : start + chunk].view(shape) * (xa - x0)  # (c, ...)
        path.requires_grad_(True)
        za = model(path)  # (c, d)
        s = _scores(za, zb.expand_as(za), metric)  # (c,)
        if not s.requires_grad:
            raise NoInputGradientError(_NO_GRADIENT)
        (grad,) = torch.autograd.grad(s.sum(), path, allow_unused=True)  # (c, ...)
        if grad is None:
            raise NoInputGradientError(_NO_GRADIENT)
        total += grad.sum(0, keepdim=True)
        if progress is not None:
            progress(min(start + chunk, steps), steps)
    return ((xa - x0) * total / steps)[0].detach()


def occlusion(model: nn.Module, a: Any, b: Any, *, patch: int = 2, stride: int = 1,
              fill: float = 0.0, metric: str = "cosine", batch_size: int = 256,
              progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Similarity drop when patches of ``a`` are hidden, as a map over ``a``'s pixels.

    ``a`` is an image ``(C, H, W)`` or ``(H, W)`` (patches are ``patch`` x ``patch``
    squares), or a vector ``(d,)`` (patches are runs of ``patch`` values); ``b`` has
    ``a``'s shape. The stride is at most the patch, and where it does not reach the end,
    a last row (column, run) of patches ends at the last value, so every value is
    covered. Each value gets the mean drop of the patches covering it.
    ``patch``, ``stride`` and ``batch_size`` are positive integers;
    :func:`default_occlusion_window` suggests them by the input's shape.
    ``progress(done, total)`` is called after each batch of patch positions.
    """
    for name, value in (("patch", patch), ("stride", stride), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if stride > patch:
        raise ValueError(f"stride {stride} is larger than patch {patch}: the values between "
                         "patches would go unscored; give a stride of at most the patch")
    _check_metric(metric)
    _check_finite(a=a, b=b, fill=fill)
    with eval_mode(model):
        return _occlusion(model, a, b, patch, stride, fill, metric, batch_size, progress)


def _occlusion(model: nn.Module, a: Any, b: Any, patch: int, stride: int, fill: float,
               metric: str, batch_size: int,
               progress: Callable[[int, int], None] | None) -> Tensor:
    xa, xb = _as_batch(a), _as_batch(b)
    if xb.shape[1:] != xa.shape[1:]:
        raise ValueError(f"a and b must have one shape, got {tuple(xa.shape[1:])} and "
                         f"{tuple(xb.shape[1:])}")
    spatial = xa.shape[-2:] if xa.dim() >= 3 else (1, xa.shape[-1])
    h, w = spatial
    ph, pw = (min(patch, h), min(patch, w)) if xa.dim() >= 3 else (1, min(patch, w))
    with torch.no_grad():
        base = similarity(model, xa, xb, metric)[0]
        starts = [(i, j) for i in _window_starts(h, ph, stride)
                  for j in _window_starts(w, pw, stride)]
        drops = torch.zeros(h, w)
        counts = torch.zeros(h, w)
        for s in range(0, len(starts), batch_size):
            chunk = starts[s : s + batch_size]
            hidden = xa.repeat(len(chunk), *[1] * (xa.dim() - 1))  # (c, ...)
            view = hidden.view(len(chunk), -1, h, w)
            for r, (i, j) in enumerate(chunk):
                view[r, :, i : i + ph, j : j + pw] = fill
            sims = similarity(model, hidden, xb.expand(len(chunk), *xb.shape[1:]), metric)
            for (i, j), value in zip(chunk, (base - sims).tolist(), strict=True):
                drops[i : i + ph, j : j + pw] += value
                counts[i : i + ph, j : j + pw] += 1
            if progress is not None:
                progress(s + len(chunk), len(starts))
    out = drops / counts.clamp_min(1)  # (H, W)
    return out.reshape(xa.shape[-1]) if xa.dim() == 2 else out


def _window_starts(n: int, size: int, stride: int) -> list[int]:
    """Starts of windows of ``size`` every ``stride`` along ``n`` values, plus one ending
    at the last value where the stride does not reach it (every value covered)."""
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def nearest_prototypes(model: nn.Module, item: Any, reference: Any, labels: Any,
                       k: int = 3, *, ref_embeddings: Tensor | None = None,
                       metric: str = "cosine") -> list[dict[str, Any]]:
    """The ``k`` class centroids (of ``reference`` embedded) nearest to ``item``.

    ``metric="cosine"`` ranks them by the cosine of the item's embedding and each
    centroid (``"cosine"``, largest first); ``metric="euclidean"`` by the Euclidean
    distance between them (``"distance"``, smallest first; ``"cosine"`` is given too).

    ``ref_embeddings`` (``(n, dim)``), when given, are the reference set's embeddings
    and ``reference`` is not embedded (it may be None): embed a reference set once to
    explain several items against it.

    ``labels`` are ``(n,)`` class ids or ``(n, L)`` hierarchical labels; with the latter
    the classes are the leaves (distinct label rows) and each ``"label"`` is its row as
    a list, coarsest level first.
    """
    import numbers

    from dmlkit.runs import embed

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (how many class centroids), got {k!r}")
    _check_metric(metric)
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex():
        whole = labels.is_floating_point() and bool(
            (torch.isfinite(labels) & (labels == labels.round())).all())
        if not whole:
            raise ValueError("labels must be integer class ids, got values of dtype "
                             f"{labels.dtype} that are not whole numbers")
        labels = labels.long()
    _check_finite(item=item)
    if ref_embeddings is None:
        ref_embeddings, _ = embed(model, torch.as_tensor(reference, dtype=torch.float32))
    z = torch.as_tensor(ref_embeddings, dtype=torch.float32)  # (n, dim)
    if z.shape[0] != labels.shape[0]:
        raise ValueError(f"{z.shape[0]} reference embeddings for {labels.shape[0]} labels")
    if labels.dim() not in (1, 2) or labels.dtype == torch.bool:
        raise ValueError("labels must be (n,) class ids or (n, L) hierarchical labels, got "
                         f"shape {tuple(labels.shape)} and dtype {labels.dtype}")
    # (C,) or (C, L) classes; (n,) class of each item
    classes, inverse = torch.unique(labels, dim=0, return_inverse=True)
    counts = torch.bincount(inverse.reshape(-1), minlength=len(classes))  # (C,)
    sums = torch.zeros(len(classes), z.shape[1]).index_add_(0, inverse.reshape(-1), z)
    means = sums / counts[:, None]  # (C, d)
    with torch.no_grad(), eval_mode(model):
        z_item = model(_as_batch(item))  # (1, d)
    q = nn.functional.normalize(z_item, dim=1)  # (1, d)
    sims = (nn.functional.normalize(means, dim=1) @ q[0]).tolist()  # (C,) cosines
    dists = (means.double() - z_item.double()).norm(dim=1).tolist()  # (C,) distances
    key = (lambda i: -sims[i]) if metric == "cosine" else (lambda i: dists[i])
    order = sorted(range(len(classes)), key=key)[: int(k)]
    return [{"label": classes[i].tolist() if labels.dim() == 2 else int(classes[i]),
             "cosine": float(sims[i]), "count": int(counts[i]),
             **({"distance": float(dists[i])} if metric == "euclidean" else {})}
            for i in order]


__all__ = ["IG_CHUNK_VALUES", "IG_COMPLETENESS_TOLERANCE", "IncompleteAttributionWarning",
           "NoInputGradientError", "integrated_gradients",
           "ig_completeness", "incomplete", "completeness_text",
           "occlusion",
           "similarity", "nearest_prototypes", "default_occlusion_window", "occlusion_window",
           "stride_for_patch"]
