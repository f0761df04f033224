"""Kernels of :mod:`dmlkit.functional.topk_filter`: the keys of a block at most a
per-query threshold, and ranking candidates by ``(key, index)``.

A block of keys is first reduced to minima over groups of ``g`` strided keys (one
vectorized pass); only the groups whose minimum is at most the threshold are read again.
"""

from __future__ import annotations

import torch
from torch import Tensor


def row_minima(keys: Tensor, g: int) -> Tensor:
    """Minima of each row of ``keys (r, c)`` over groups of ``g`` strided columns
    ``h, h + c', h + 2c', ...`` (``c' = c // g``; a tail of ``c % g`` columns is left
    out): ``(r, c')``."""
    r, c = keys.shape
    return keys[:, : c - c % g].view(r, g, c // g).amin(dim=1)


def col_minima(keys: Tensor, g: int) -> Tensor:
    """Minima of each column of ``keys (r, c)`` over groups of ``g`` strided rows:
    ``(r // g, c)``."""
    r, c = keys.shape
    return keys[: r - r % g].view(g, r // g, c).amin(dim=0)


def rows_at_most(keys: Tensor, t: Tensor, g: int) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of ``keys (r, c)`` at most ``t[i]`` in row ``i``: ``(row, column, key)``
    sorted by row (within a row, in no particular order)."""
    return _at_most(keys, t, g, transposed=False)


def cols_at_most(keys: Tensor, t: Tensor, g: int) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of ``keys (r, c)`` at most ``t[j]`` in column ``j``: ``(column, row, key)``
    sorted by column."""
    return _at_most(keys, t, g, transposed=True)


def _at_most(keys: Tensor, t: Tensor, g: int, transposed: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Entries at most their owner's threshold, owners being the rows of ``keys`` (or its
    columns when ``transposed``): ``(owner, position, key)`` sorted by owner. Works on
    flat offsets ``owner * so + position * sp`` of the row-major block, without copying
    it."""
    r, c = keys.shape
    length, so, sp = (r, 1, c) if transposed else (c, c, 1)
    body = length - length % g
    parts = []
    if body:
        gl = body // g
        mins = col_minima(keys, g).T if transposed else row_minima(keys, g)  # (owners, gl)
        hit = (mins <= t[:, None]).reshape(-1).nonzero().squeeze(1)  # owner * gl + h
        if len(hit):  # read the g keys of each admitted group: positions h + s * gl
            po, ph = hit.div(gl, rounding_mode="floor"), hit.remainder(gl)
            steps = torch.arange(0, body * sp, gl * sp, device=keys.device)  # (g,)
            v = keys.view(-1).index_select(0, ((po * so + ph * sp)[:, None] + steps).view(-1))
            kept = (v.view(-1, g) <= t[po][:, None]).view(-1).nonzero().squeeze(1)
            kp = kept.div(g, rounding_mode="floor")  # by owner
            parts.append((po[kp], ph[kp] + kept.remainder(g) * gl, v[kept]))
    if body < length:  # the tail positions, compared directly
        tail = keys[body:].T if transposed else keys[:, body:]  # (owners, length - body)
        po, pp = (tail <= t[:, None]).nonzero(as_tuple=True)
        parts.append((po, pp + body, tail[po, pp]))
    return _by_row(parts, keys)


def _by_row(parts, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate ``(row, column, key)`` parts, each sorted by row, into one sorted."""
    if not parts:
        empty = torch.empty(0, dtype=torch.long, device=like.device)
        return empty, empty, like.new_empty(0)
    if len(parts) == 1:
        return parts[0]
    rows, cols, vals = (torch.cat(x) for x in zip(*parts, strict=True))
    rows, perm = rows.sort(stable=True)
    return rows, cols.index_select(0, perm), vals.index_select(0, perm)


def lex_smallest(vals: Tensor, cols: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest ``(val, col)`` pairs per row, in that order: ``(r, k)`` keys and
    int64 columns. Columns are explicit (not positions): candidates come in any order."""
    r, c = vals.shape
    k = min(k, c)
    v, pos = torch.topk(vals, min(k + 1, c), dim=1, largest=False, sorted=True)
    fix = (v[:, 1:k] == v[:, : k - 1]) & (v[:, 1:k] < float("inf"))  # ties inside the top k
    fix = fix.any(dim=1)
    if k < c:  # or straddling the k-th position
        fix |= v[:, k] == v[:, k - 1]
    v = v[:, :k].contiguous()
    cc = cols.gather(1, pos[:, :k]).long()
    rows = fix.nonzero().squeeze(1)
    if len(rows):  # order those rows in full by (key, column)
        sv, sc = lex_sort(vals.index_select(0, rows), cols.index_select(0, rows).long())
        v[rows], cc[rows] = sv[:, :k], sc[:, :k]
    return v, cc


def lex_sort(vals: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by ``(val, col)``: columns first, then values (stable); padding
    (column ``-1``) goes last among equal keys."""
    big = torch.iinfo(cols.dtype).max
    cols, perm = torch.where(cols < 0, big, cols).sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    cols = cols.gather(1, perm)
    return vals, torch.where(cols == big, -1, cols)


__all__ = ["col_minima", "cols_at_most", "lex_smallest", "lex_sort", "row_minima", "rows_at_most"]
