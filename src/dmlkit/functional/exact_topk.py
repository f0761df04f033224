"""Exact k-nearest-neighbour ranking of large sets by threshold filtering.

:func:`exact_topk` returns, for every query, its ``depth`` nearest references in the
ranking order of :mod:`dmlkit.functional.retrieval` (smaller key first, ties by lower
reference index). It is exact: the result equals a full sort of every row.

How it avoids sorting or selecting over whole rows (which costs more than the matrix
product itself):

1. **Threshold from a sample.** References are visited in a seeded random order, so the
   first block of references is a uniform sample. Each query's keys against it are
   reduced to minima over groups of ``group`` references; the ``j``-th smallest group
   minimum ``t`` has at least ``j`` keys ``<= t``, and ``j`` is chosen from the sample
   size so that, with overwhelming probability, at least ``depth`` keys of the whole row
   are ``<= t`` while only a few times ``depth`` are.
2. **Filter.** Every block of keys is reduced to group minima (a vectorized pass); only
   groups whose minimum is ``<= t`` are read again, and only their keys ``<= t`` are kept
   as candidates (key, reference index) in a per-query buffer.
3. **Select.** A row whose candidates number at least ``depth`` holds every key up to its
   ``depth``-th smallest (that key is ``<= t``), so ranking the candidates by
   ``(key, index)`` is exact. Rows with too few candidates (an unlucky sample) or too
   many (massive ties overflow the buffer) are recomputed directly against all
   references. Correctness never depends on the sample; only speed does.

Leave-one-out (``reference=None``) uses symmetry: the key of a pair ``(i, j)`` is the
same for row ``i`` and row ``j`` (squared Euclidean distance ``|x_i|^2 + |x_j|^2 -
2 x_i.x_j``, or the negated similarity), so each block of the matrix is computed once and
filtered along its rows and its columns: half the matrix products.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from dmlkit.functional.chunking import row_chunks
from dmlkit.functional.retrieval import canonical_metric, prepare_vectors, topk_lexicographic

#: references per block (and queries per block in leave-one-out); the first block of the
#: seeded reference order is the threshold sample
DEFAULT_BLOCK = 2048
#: references per group minimum
DEFAULT_GROUP = 16
#: standard deviations of margin in the sample rank of the threshold
_MARGIN_SD = 3.0
#: bytes per candidate (float32 key + int32 index); the buffers are capped at this budget
_CANDIDATE_BUDGET = 4 << 30


def augmented(x: Tensor, metric: str, side: str) -> Tensor:
    """Rows whose inner products are ranking keys: ``(n, d')``.

    Euclidean: ``[x, |x|^2, 1]`` (``side="query"``) against ``[-2x, 1, |x|^2]``
    (``side="reference"``) gives the squared distance; similarities: ``x`` against ``-x``.
    """
    v, sq = prepare_vectors(x, metric)
    if sq is None:
        return v if side == "query" else -v
    one = v.new_ones(v.shape[0], 1)
    if side == "query":
        return torch.cat([v, sq[:, None], one], dim=1)
    return torch.cat([-2.0 * v, one, sq[:, None]], dim=1)


def exact_topk(
    query: Tensor,
    reference: Tensor | None = None,
    depth: int | Tensor = 1,
    *,
    metric: str = "euclidean",
    exclude_self: bool | None = None,
    block: int = DEFAULT_BLOCK,
    group: int = DEFAULT_GROUP,
    seed: int = 0,
    workers: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``depth`` nearest references of every query, exactly, in ranking order.

    Parameters
    ----------
    query : Tensor
        ``(n, d)`` float queries.
    reference : Tensor, optional
        ``(m, d)`` references; ``None`` ranks ``query`` against itself (leave-one-out,
        each block of keys computed once for both of its rows and columns).
    depth : int or Tensor
        Neighbours per query, an int or an ``(n,)`` integer tensor (per query); clamped to
        the number of references a query can see.
    metric : str
        ``"euclidean"`` (keys are squared distances), ``"cosine"`` or ``"dot"`` (keys are
        negated similarities).
    exclude_self : bool, optional
        Skip reference ``i`` for query ``i`` (default: True when ``reference`` is None;
        with a reference, its first ``n`` rows must be the queries).
    block, group : int
        References per block of keys, and per group minimum (speed only).
    seed : int
        Seed of the reference visiting order (speed only: results do not depend on it).
    workers : int, optional
        Threads filtering blocks at once (default: 2 when torch uses several threads),
        each running torch on its share of the threads.

    Returns
    -------
    keys : Tensor
        ``(n, D)`` ranking keys (smaller = closer), ``D = max(depth)``, in ranking order;
        ``inf`` beyond a query's depth.
    indices : Tensor
        ``(n, D)`` int64 reference rows, ``-1`` beyond a query's depth.
    """
    metric = canonical_metric(metric)
    symmetric = reference is None
    exclude_self = symmetric if exclude_self is None else bool(exclude_self)
    ref = query if symmetric else reference
    n, m = query.shape[0], ref.shape[0]
    if exclude_self and m < n:
        raise ValueError(f"the reference ({m} rows) cannot include all {n} queries")
    if block < 1 or group < 1:
        raise ValueError(f"block and group must be >= 1, got {block}, {group}")
    m_eff = m - int(exclude_self)
    depth_t = torch.as_tensor(depth, dtype=torch.long).expand(n).clamp(0, max(m_eff, 0))
    d_max = int(depth_t.max()) if n else 0
    dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
    out_keys = torch.full((n, d_max), float("inf"), dtype=dtype, device=query.device)
    out_idx = torch.full((n, d_max), -1, dtype=torch.long, device=query.device)
    if d_max == 0:
        return out_keys, out_idx
    run = _Filter(query.to(dtype), ref.to(dtype), depth_t, metric, symmetric, exclude_self,
                  block, group, seed)
    if workers is None:
        workers = 2 if torch.get_num_threads() > 1 else 1
    run.scan(workers)
    run.select(out_keys, out_idx)
    return out_keys, out_idx


class _Filter:
    """State of one :func:`exact_topk` call (see the module docstring).

    Candidates live in ``(n, cap + 1)`` buffers (key, reference row); a query's entries
    beyond ``cap`` all land in the last column, which is never read, and ``fill`` keeps
    counting them so that overflowing queries are recomputed.
    """

    def __init__(self, query, ref, depth, metric, symmetric, exclude_self, block, group, seed):
        self.n, self.m = query.shape[0], ref.shape[0]
        self.depth, self.metric = depth, metric
        self.symmetric, self.exclude_self = symmetric, exclude_self
        self.group = group
        self.block = max(1, min(block, self.m))
        self.m_eff = self.m - int(exclude_self)
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(self.m, generator=gen).to(query.device)  # visit order
        self.order32 = self.order.to(torch.int32)
        self.rows = self.order if symmetric else None  # query visit order (symmetric)
        if symmetric:  # per-query depths in visit order
            self.depth = depth.index_select(0, self.rows)
        q = query.index_select(0, self.rows) if symmetric else query
        self.a = augmented(q, metric, "query")  # (n, d')
        self.bt = augmented(ref.index_select(0, self.order), metric, "reference").T.contiguous()
        self.query, self.ref = query, ref
        if exclude_self and not symmetric:  # query i's own reference, as a visit position
            inv = torch.empty_like(self.order)
            inv[self.order] = torch.arange(self.m, device=self.order.device)
            self.self_pos = inv[: self.n]
        self.thresh = self.a.new_full((self.n,), float("inf"))
        self.seen: dict[int, tuple[int, int]] = {}  # query block -> (references, blocks)
        self.locks: dict[int, threading.Lock] = {
            r0: threading.Lock() for r0 in range(0, self.n, self.block)
        }
        self.local = threading.local()
        self._plan()

    # ---- thresholds and buffer sizes --------------------------------------------------
    def _plan(self) -> None:
        """Sample rank ``j`` per query, the candidate capacity, and the buffers."""
        s = min(self.block, self.m) - int(self.exclude_self)  # sample keys per query
        g_count = max(1, s // self.group)  # group minima in the sample
        d = self.depth.to(torch.float64)
        mu = d * s / max(self.m_eff, 1)  # expected sample keys among a query's top depth
        j = torch.ceil(mu + _MARGIN_SD * mu.sqrt() + 1.0)
        j = torch.minimum(torch.minimum(j, d), torch.tensor(float(g_count)))
        self.j = j.long().clamp_min(1)  # (n,)
        self.use_groups = s >= self.group * 2
        if self.use_groups:  # the j-th of g_count minima of `group` keys: quantile of a key
            frac = 1.0 - (1.0 - self.j.double() / g_count) ** (1.0 / self.group)
            frac = torch.where(self.j >= g_count, torch.ones_like(frac), frac)
        else:
            frac = self.j.double() / max(s, 1)
        expect = self._expected_fill(float(frac.max()) if self.n else 0.0)
        cap = int(math.ceil(1.3 * expect + 32))
        budget_rows = _CANDIDATE_BUDGET // (8 * max(self.n, 1)) - 1
        self.cap = max(int(self.depth.max()), min(cap, self.m_eff, budget_rows))
        self.cand_keys = self.a.new_full((self.n, self.cap + 1), float("inf"))
        self.cand_idx = torch.full((self.n, self.cap + 1), -1, dtype=torch.int32,
                                   device=self.a.device)
        self.fill = torch.zeros(self.n, dtype=torch.long, device=self.a.device)

    def _expected_fill(self, frac0: float) -> float:
        """Expected candidates of the deepest query: the sample's admitted fraction until
        the first refinement, then the fraction each refinement leaves."""
        d = float(self.depth.max()) if self.n else 0.0
        total, seen, count, frac = 0.0, 0, 0, frac0
        while seen < self.m_eff:
            width = min(self.block, self.m_eff - seen)
            total += frac * width
            seen, count = seen + width, count + 1
            if self._refines(count, seen):
                mu = d * seen / max(self.m_eff, 1)
                frac = min(frac, min(math.ceil(mu + _MARGIN_SD * math.sqrt(mu) + 1.0), d) / seen)
        return total

    def _refines(self, count: int, seen: int) -> bool:
        """Whether thresholds are tightened after ``count`` blocks (``seen`` references):
        each time the count doubles, while at least as many references remain."""
        return count >= 2 and count & (count - 1) == 0 and 2 * seen <= self.m_eff

    def _set_thresholds(self, keys: Tensor, r0: int, transposed: bool = False) -> None:
        """Thresholds of queries ``r0:`` from their keys against the sample block: the rows
        of ``keys`` ``(r, s)``, or its columns when ``transposed`` (``(s, r)``)."""
        s, r = keys.shape if transposed else keys.shape[::-1]
        j = self.j[r0 : r0 + r]
        if self.use_groups:
            body = (s // self.group) * self.group
            if transposed:
                mins = keys[:body].view(self.group, body // self.group, r).amin(dim=0).T
            else:
                mins = keys[:, :body].view(r, self.group, body // self.group).amin(dim=1)
        else:
            mins = keys.T if transposed else keys
        jm = min(int(j.max()), mins.shape[1])
        vals, _ = torch.topk(mins, jm, dim=1, largest=False, sorted=True)  # (r, jm)
        t = vals.gather(1, (j.clamp_max(jm) - 1)[:, None]).squeeze(1)
        self.thresh[r0 : r0 + r] = t.clamp_max(torch.finfo(keys.dtype).max)  # never admit inf

    def _seen(self, r0: int, r1: int, width: int) -> None:
        """Count the references queries ``r0:r1`` have been filtered against; each time
        the count of blocks doubles, tighten their thresholds."""
        seen, count = self.seen.get(r0, (0, 0))
        seen, count = seen + width, count + 1
        self.seen[r0] = (seen, count)
        if self._refines(count, seen):
            self._refine(r0, r1, seen)

    def _refine(self, r0: int, r1: int, seen: int) -> None:
        """Lower the thresholds of queries ``r0:r1`` to the ``j``-th smallest key kept from
        the ``seen`` references visited so far, a uniform sample of them (any threshold
        keeps the result exact; a tighter one admits fewer keys)."""
        d = self.depth[r0:r1].to(torch.float64)
        mu = d * seen / max(self.m_eff, 1)
        j = torch.minimum(torch.ceil(mu + _MARGIN_SD * mu.sqrt() + 1.0), d).long()
        fill = self.fill[r0:r1]
        ok = (j >= 1) & (fill >= j) & (fill <= self.cap)
        if not bool(ok.any()):
            return
        jm = int(j[ok].max())
        width = int(fill.max().clamp(jm, self.cap))
        vals, _ = torch.topk(self.cand_keys[r0:r1, :width], jm, dim=1, largest=False)
        t = vals.gather(1, (j.clamp(1, jm) - 1)[:, None]).squeeze(1)
        cur = self.thresh[r0:r1]
        self.thresh[r0:r1] = torch.where(ok, torch.minimum(cur, t), cur)

    # ---- the scan ---------------------------------------------------------------------
    def scan(self, workers: int) -> None:
        """Filter every block of keys, on ``workers`` threads (one torch thread each when
        several: the many small operations of a block scale poorly across threads)."""
        b = self.block
        starts = list(range(0, self.n, b))
        if self.symmetric:  # the sample block first, then its row, then the rest
            phases = [[(0, 0)], [(0, j0) for j0 in starts[1:]],
                      [(i0, j0) for i0 in starts[1:] for j0 in starts if j0 >= i0]]
            run = self._pair
        else:  # one task per query block: its blocks of references in visit order
            phases = [starts]
            run = self._query_block
        workers = max(1, min(int(workers), max(len(p) for p in phases)))
        if workers == 1:
            for phase in phases:
                for task in phase:
                    run(task)
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // workers))
        try:
            with ThreadPoolExecutor(workers) as pool:
                for phase in phases:
                    list(pool.map(run, phase))  # (re-raises a worker's error)
        finally:
            torch.set_num_threads(threads)

    def _buffer(self) -> Tensor:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = self.a.new_empty(self.block * self.block)
        return buf

    def _keys(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Keys of query positions ``r0:r1`` against visit positions ``c0:c1``."""
        out = self._buffer()[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.mm(self.a[r0:r1], self.bt[:, c0:c1], out=out)
        if self.exclude_self:
            if self.symmetric:
                lo, hi = max(r0, c0), min(r1, c1)
                if lo < hi:
                    out[lo - r0 : hi - r0, lo - c0 : hi - c0].diagonal().fill_(float("inf"))
            else:
                pos = self.self_pos[r0:r1]
                hit = ((pos >= c0) & (pos < c1)).nonzero().squeeze(1)
                if len(hit):
                    out[hit, pos[hit] - c0] = float("inf")
        return out

    def _pair(self, task: tuple[int, int]) -> None:
        """Leave-one-out block ``(i0, j0)``, ``i0 <= j0``: its rows and its columns."""
        i0, j0 = task
        i1, j1 = min(i0 + self.block, self.n), min(j0 + self.block, self.n)
        keys = self._keys(i0, i1, j0, j1)
        if i0 == 0:  # the sample block: thresholds of the column queries
            self._set_thresholds(keys, j0, transposed=j0 > 0)
        found = self._from_rows(keys, i0)
        with self.locks[i0]:
            self._append(*found, i0, j0)
            self._seen(i0, i1, j1 - j0)
        if j0 != i0:
            found = self._from_cols(keys, j0)
            with self.locks[j0]:
                self._append(*found, j0, i0)
                self._seen(j0, j1, i1 - i0)

    def _query_block(self, i0: int) -> None:
        """Queries ``i0:i0 + block`` against every block of references."""
        i1 = min(i0 + self.block, self.n)
        for j0 in range(0, self.m, self.block):
            j1 = min(j0 + self.block, self.m)
            keys = self._keys(i0, i1, j0, j1)
            if j0 == 0:
                self._set_thresholds(keys, i0)
            self._append(*self._from_rows(keys, i0), i0, j0)
            self._seen(i0, i1, j1 - j0)

    def _from_rows(self, keys: Tensor, r0: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keys ``<=`` the thresholds of queries ``r0 + i`` (the rows of ``keys``):
        ``(row, column, key)``, sorted by row."""
        r, c = keys.shape
        g = self.group
        t = self.thresh[r0 : r0 + r]
        body = c - c % g
        parts = []
        if body:
            gc = body // g
            mins = keys[:, :body].view(r, g, gc).amin(dim=1)  # (r, gc): columns h + s * gc
            pr, ph = (mins <= t[:, None]).nonzero(as_tuple=True)
            if len(pr):  # read the g keys of each admitted group, one stride at a time
                col = ph + torch.arange(0, body, gc, device=keys.device)[:, None]  # (g, P)
                v = keys.view(-1).index_select(0, (pr * c + col).view(-1)).view(g, -1)
                kp, ks = (v <= t[pr]).T.nonzero(as_tuple=True)  # by row
                parts.append((pr[kp], col[ks, kp], v[ks, kp]))
        if body < c:
            pr, pc = (keys[:, body:] <= t[:, None]).nonzero(as_tuple=True)
            parts.append((pr, pc + body, keys[pr, pc + body]))
        return _by_row(parts)

    def _from_cols(self, keys: Tensor, r0: int) -> tuple[Tensor, Tensor, Tensor]:
        """Keys ``<=`` the thresholds of queries ``r0 + j`` (the columns of ``keys``):
        ``(query, row of keys, key)``, sorted by query."""
        r, c = keys.shape
        g = self.group
        t = self.thresh[r0 : r0 + c]
        body = r - r % g
        parts = []
        if body:
            gr = body // g
            mins = keys[:body].view(g, gr, c).amin(dim=0)  # (gr, c): rows h + s * gr
            ph, pj = (mins <= t).nonzero(as_tuple=True)
            if len(ph):  # read the g keys of each admitted group, one stride at a time
                krow = ph + torch.arange(0, body, gr, device=keys.device)[:, None]  # (g, P)
                v = keys.view(-1).index_select(0, (krow * c + pj).view(-1)).view(g, -1)
                ks, kp = (v <= t[pj]).nonzero(as_tuple=True)
                parts.append((pj[kp], krow[ks, kp], v[ks, kp]))
        if body < r:
            pi, pj = (keys[body:] <= t).nonzero(as_tuple=True)
            parts.append((pj, pi + body, keys[pi + body, pj]))
        rows, cols, vals = _by_row(parts, presorted=False)
        return rows, cols, vals

    def _append(self, rows: Tensor, cols: Tensor, vals: Tensor, r0: int, c0: int) -> None:
        """Write candidates (local query rows, sorted; local visit columns; keys)."""
        p = len(rows)
        if not p:
            return
        rows = rows + r0
        rank = torch.arange(p, device=rows.device) - torch.searchsorted(rows, rows)
        pos = (self.fill.index_select(0, rows) + rank).clamp_max_(self.cap)  # cap: discarded
        self.fill.index_add_(0, rows, torch.ones_like(rows))
        flat = rows * (self.cap + 1) + pos
        self.cand_keys.view(-1).index_copy_(0, flat, vals)
        self.cand_idx.view(-1).index_copy_(0, flat, self.order32.index_select(0, cols + c0))

    # ---- selection --------------------------------------------------------------------
    def select(self, out_keys: Tensor, out_idx: Tensor) -> None:
        """Exact top ``depth`` per query into ``out_keys``, ``out_idx`` (original rows)."""
        d_max = out_keys.shape[1]
        target = self.rows if self.symmetric else torch.arange(self.n, device=out_keys.device)
        steps = torch.arange(d_max, device=out_keys.device)[None, :]
        bad = []
        for s, e in row_chunks(self.n, max(1, (1 << 24) // self.cap)):
            width = int(self.fill[s:e].max().clamp(d_max, self.cap))
            keys = self.cand_keys[s:e, :width]  # (c, width)
            depth = self.depth[s:e]
            # every key <= the final threshold is here: enough of them makes the row exact
            count = (keys <= self.thresh[s:e, None]).sum(dim=1)
            good = (count >= depth) & (self.fill[s:e] <= self.cap)
            vals, cols = _lex_smallest(keys, self.cand_idx[s:e, :width], d_max)
            beyond = steps >= depth[:, None]
            out_keys[target[s:e]] = vals.masked_fill(beyond, float("inf"))
            out_idx[target[s:e]] = cols.masked_fill(beyond, -1)
            bad.append((~good).nonzero().squeeze(1) + s)
        bad = torch.cat(bad)
        if len(bad):  # recompute those queries against every reference
            rows = target[bad]
            out_keys[rows], out_idx[rows] = self._direct(rows, d_max, self.depth[bad])

    def _direct(self, qrows: Tensor, d_max: int, depth: Tensor) -> tuple[Tensor, Tensor]:
        """Exact top ``d_max`` of original queries ``qrows`` by a full pass (rare rows)."""
        a = augmented(self.query.index_select(0, qrows), self.metric, "query")
        bt = augmented(self.ref, self.metric, "reference").T
        vals_out, cols_out = [], []
        for s, e in row_chunks(len(qrows), 256):
            keys = a[s:e] @ bt  # (c, m), columns in original order
            if self.exclude_self:
                keys[torch.arange(e - s), qrows[s:e]] = float("inf")
            v, i = topk_lexicographic(keys, d_max)
            vals_out.append(v)
            cols_out.append(i)
        vals, cols = torch.cat(vals_out), torch.cat(cols_out)
        beyond = torch.arange(d_max, device=vals.device)[None, :] >= depth[:, None]
        return vals.masked_fill(beyond, float("inf")), cols.masked_fill(beyond, -1)


def _by_row(parts, presorted: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate ``(row, column, key)`` parts, sorted by row (stable)."""
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty, torch.empty(0)
    if len(parts) == 1 and presorted:
        return parts[0]
    rows, cols, vals = (torch.cat(x) for x in zip(*parts, strict=True))
    rows, perm = rows.sort(stable=True)
    return rows, cols.index_select(0, perm), vals.index_select(0, perm)


def _lex_smallest(vals: Tensor, cols: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest ``(val, col)`` pairs per row, in that order: ``(r, k)`` keys and
    int64 columns. Columns are explicit (not positions): candidates come in any order."""
    r, c = vals.shape
    k = min(k, c)
    v, pos = torch.topk(vals, min(k + 1, c), dim=1, largest=False, sorted=True)
    cc = cols.gather(1, pos).long()
    if k < c:  # a tie straddling the k-th position: sort those rows in full
        cut = (v[:, k] == v[:, k - 1]).nonzero().squeeze(1)
        v, cc = v[:, :k], cc[:, :k]
        if len(cut):
            sv, sc = _lex_sort(vals.index_select(0, cut), cols.index_select(0, cut).long())
            v, cc = v.clone(), cc.clone()
            v[cut], cc[cut] = sv[:, :k], sc[:, :k]
    tied = ((v[:, 1:] == v[:, :-1]) & (v[:, 1:] < float("inf"))).any(dim=1).nonzero().squeeze(1)
    if len(tied):  # equal keys inside the top k: order them by column
        v, cc = v.clone(), cc.clone()
        v[tied], cc[tied] = _lex_sort(v[tied], cc[tied])
    return v, cc


def _lex_sort(vals: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by ``(val, col)``: columns first, then values (stable); padding
    (column ``-1``) goes last among equal keys."""
    big = torch.iinfo(cols.dtype).max
    cols, perm = torch.where(cols < 0, big, cols).sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    cols = cols.gather(1, perm)
    return vals, torch.where(cols == big, -1, cols)


__all__ = ["DEFAULT_BLOCK", "DEFAULT_GROUP", "augmented", "exact_topk"]
