"""Exact k-nearest-neighbour ranking of large sets by threshold filtering (CPU).

:func:`exact_topk` returns, for every query, its ``depth`` nearest references in the
ranking order of :mod:`dmlkit.functional.retrieval` (smaller key first, ties by lower
reference index). It is exact: the result equals a full sort of every row.

Selecting over whole rows costs more than the matrix product itself on a CPU, so:

1. **Threshold from a sample.** References are visited in a seeded random order, so the
   first block of references is a uniform sample. Each query's keys against it are
   reduced to minima over groups of 16 references; the ``j``-th smallest minimum ``t``
   has at least ``j`` keys ``<= t``, and ``j`` is chosen from the sample size so that,
   with high probability, at least ``depth`` keys of the whole row are ``<= t`` while
   only a small multiple of ``depth`` are. Each time a query has seen twice as many
   references, ``t`` is lowered the same way from the keys it kept (those references are
   a larger uniform sample).
2. **Filter.** Every block of keys is reduced to minima over groups of strided columns
   (a vectorized pass); only groups whose minimum is ``<= t`` are read again, and only
   their keys ``<= t`` are kept as candidates (key, reference index) in a per-query
   buffer.
3. **Select.** A query whose ``depth``-th smallest candidate is ``<= t`` holds every key
   up to it (all keys ``<= t`` were kept), so ranking its candidates by ``(key, index)``
   is exact. The rare others (an unlucky sample, or massive ties overflowing the buffer)
   are filtered again with a fresh sample, then by a full pass. Correctness never
   depends on the sample; only speed does.

Leave-one-out (``reference=None``) uses symmetry: the key of a pair ``(i, j)`` is the
same for row ``i`` and row ``j`` (squared Euclidean distance ``(|x_i|^2 + |x_j|^2) -
2 x_i.x_j``, or the negated similarity), so each block of the matrix is computed once and
filtered along its rows and its columns: half the matrix products. The key is symmetric
in floating point too (the norms are summed before the products are added, and both
sums commute), so a row's keys against identical vectors are identical, whichever block
computed them, and such ties are ranked by index.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from dmlkit.functional.block_filter import (
    col_minima,
    cols_at_most,
    lex_smallest,
    row_minima,
    rows_at_most,
)
from dmlkit.functional.chunking import row_chunks
from dmlkit.functional.retrieval import canonical_metric, prepare_vectors, topk_lexicographic

#: references per block (and queries per block in leave-one-out); the first block of the
#: seeded reference order is the threshold sample
DEFAULT_BLOCK = 2048
#: references per group minimum in the threshold sample
SAMPLE_GROUP = 16
#: the filter's group size is about sqrt(_GROUP_COST / admitted fraction): larger groups
#: make fewer minima to compare, smaller ones fewer keys to read again per admitted group
_GROUP_COST = 0.44
#: standard deviations of margin in the sample rank of the threshold
_MARGIN_SD = 3.0
#: bytes of candidate buffers (8 per candidate: float32 key, int32 index); larger problems
#: are split into groups of queries (each against every reference, without symmetry)
_CANDIDATE_BUDGET = 4 << 30


def _rank_bound(mu):
    """Sample rank whose key lies beyond a query's top ``depth`` with high probability,
    when ``mu`` of the sampled keys are expected among that top (float or tensor)."""
    return mu + _MARGIN_SD * mu**0.5 + 1.0


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
    group: int | None = None,
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
    block : int
        References per block of keys (speed only).
    group : int, optional
        References per group minimum in the filter (speed only; default: from the
        expected fraction of admitted keys).
    seed : int
        Seed of the reference visiting order (speed only: results do not depend on it).
    workers : int, optional
        Threads filtering blocks at once (default: 2 when torch uses several threads),
        each running torch on its share of the threads (``torch.set_num_threads`` is
        lowered for the duration of the call, process-wide, then restored).

    Returns
    -------
    keys : Tensor
        ``(n, D)`` ranking keys (smaller = closer), ``D = max(depth)``, in ranking order;
        ``inf`` beyond a query's depth.
    indices : Tensor
        ``(n, D)`` int64 reference rows, ``-1`` beyond a query's depth.
    """
    metric = canonical_metric(metric)
    exclude_self = reference is None if exclude_self is None else bool(exclude_self)
    ref = query if reference is None else reference
    symmetric = reference is None and exclude_self  # leave-one-out
    for name, x in (("query", query), ("reference", ref)):
        if x.dim() != 2 or x.shape[1] != query.shape[-1]:
            raise ValueError(f"{name} must be (rows, {query.shape[-1]}), got {tuple(x.shape)}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} has non-finite values")
    n, m = query.shape[0], ref.shape[0]
    if isinstance(depth, Tensor) and depth.dim() and depth.shape != (n,):
        raise ValueError(f"depth must be an int or ({n},), got {tuple(depth.shape)}")
    if exclude_self and m < n:
        raise ValueError(f"the reference ({m} rows) cannot include all {n} queries")
    if block < 1 or (group is not None and group < 1):
        raise ValueError(f"block and group must be >= 1, got {block}, {group}")
    m_eff = m - int(exclude_self)
    depth_t = torch.as_tensor(depth, dtype=torch.long).expand(n).clamp(0, max(m_eff, 0))
    d_max = int(depth_t.max()) if n else 0
    dtype = query.dtype if query.dtype in (torch.float32, torch.float64) else torch.float32
    out_keys = torch.full((n, d_max), float("inf"), dtype=dtype, device=query.device)
    out_idx = torch.full((n, d_max), -1, dtype=torch.long, device=query.device)
    if d_max == 0:
        return out_keys, out_idx
    if workers is None:
        workers = 2 if torch.get_num_threads() > 1 else 1
    query, ref = query.to(dtype), ref.to(dtype)
    rows_fit = max(1, _CANDIDATE_BUDGET // (8 * (3 * d_max + 64)))  # queries per buffer
    if n > rows_fit:  # bounded memory: groups of queries, each against every reference
        symmetric = False
    for s, e in row_chunks(n, n if symmetric else rows_fit):
        own = torch.arange(s, e, device=query.device) if exclude_self and not symmetric else None
        run = _Filter(query[s:e], ref, depth_t[s:e], metric, symmetric, own, block, group, seed)
        run.scan(workers)
        run.select(out_keys[s:e], out_idx[s:e])
    return out_keys, out_idx


class _Filter:
    """State of one :func:`exact_topk` call (see the module docstring).

    Candidates live in ``(n, cap + 1)`` buffers (key, reference row); a query's entries
    beyond ``cap`` all land in the last column, which is never read, and ``fill`` keeps
    counting them so that overflowing queries are recomputed.
    """

    def __init__(self, query, ref, depth, metric, symmetric, self_index, block, group, seed,
                 nested=False):
        self.n, self.m = query.shape[0], ref.shape[0]
        self.depth, self.metric = depth, metric
        self.symmetric, self.self_index = symmetric, self_index
        self.exclude_self = symmetric or self_index is not None
        self.group, self.seed, self.nested = group, seed, nested
        self.block = max(1, min(block, self.m))
        self.m_eff = self.m - int(self.exclude_self)
        self.col_bounds = list(row_chunks(self.m, self.block))  # the first: the sample
        self.row_bounds = self.col_bounds if symmetric else list(row_chunks(self.n, self.block))
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(self.m, generator=gen).to(query.device)  # visit order
        self.order32 = self.order.to(torch.int32)
        self.rows = self.order if symmetric else None  # query visit order (symmetric)
        if symmetric:  # per-query depths in visit order
            self.depth = depth.index_select(0, self.rows)
        r = ref.index_select(0, self.order)  # references in visit order
        #: leave-one-out squared Euclidean: squared norms added outside the product
        self.sq = None
        if symmetric and metric == "euclidean":
            # key (i, j) = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j: both sums commute, so the key
            # of a pair is the same whether it is computed in its row or in its column,
            # and identical vectors get identical keys (ties ranked by index)
            self.a, self.sq = prepare_vectors(r, metric)  # (n, d), (n,)
            self.bt = (-2.0 * self.a).T.contiguous()  # (d, n)
        else:
            self.a = augmented(r if symmetric else query, metric, "query")  # (n, d')
            self.bt = augmented(r, metric, "reference").T.contiguous()
        self.query, self.ref = query, ref
        if self_index is not None:  # each query's own reference, as a visit position
            inv = torch.empty_like(self.order)
            inv[self.order] = torch.arange(self.m, device=self.order.device)
            self.self_pos = inv.index_select(0, self_index)
        self.thresh = self.a.new_full((self.n,), float("inf"))
        self.seen: dict[int, tuple[int, int]] = {}  # query block -> (references, blocks)
        self.locks = {r0: threading.Lock() for r0, _ in self.row_bounds}
        self.local = threading.local()
        self._plan()

    # ---- thresholds and buffer sizes --------------------------------------------------
    def _plan(self) -> None:
        """Sample rank ``j`` per query, the candidate capacity, and the buffers."""
        s = self.col_bounds[0][1] - int(self.exclude_self)  # sample keys per query
        g_count = max(1, s // SAMPLE_GROUP)  # group minima in the sample
        d = self.depth.to(torch.float64)
        mu = d * s / max(self.m_eff, 1)  # expected sample keys among a query's top depth
        j = torch.minimum(torch.minimum(torch.ceil(_rank_bound(mu)), d),
                          torch.tensor(float(g_count)))
        self.j = j.long().clamp_min(1)  # (n,)
        self.use_groups = s >= SAMPLE_GROUP * 2
        if self.use_groups:  # the j-th of g_count minima of 16 keys: quantile of a key
            frac = 1.0 - (1.0 - self.j.double() / g_count) ** (1.0 / SAMPLE_GROUP)
            frac = torch.where(self.j >= g_count, torch.ones_like(frac), frac)
        else:
            frac = self.j.double() / max(s, 1)
        expect = self._expected_fill(float(frac.max()) if self.n else 0.0)
        if self.group is None:  # a power of two near sqrt(cost / admitted fraction)
            admitted = min(max(expect, 1.0) / max(self.m_eff, 1), 1.0)
            power = round(math.log2(math.sqrt(_GROUP_COST / admitted)))
            self.group = 1 << min(max(power, 2), 5)  # 4 .. 32
        cap = int(math.ceil(1.2 * expect + 32))
        budget_rows = _CANDIDATE_BUDGET // (8 * max(self.n, 1)) - 1
        self.cap = max(int(self.depth.max()), min(cap, self.m_eff, budget_rows))
        self.cand_keys = self.a.new_full((self.n, self.cap + 1), float("inf"))
        # (entries past a query's fill are never trusted: their keys stay inf)
        self.cand_idx = torch.empty((self.n, self.cap + 1), dtype=torch.int32,
                                    device=self.a.device)
        self.fill = torch.zeros(self.n, dtype=torch.long, device=self.a.device)

    def _expected_fill(self, frac0: float) -> float:
        """Expected candidates of the deepest query: the sample's admitted fraction until
        the first refinement, then the fraction each refinement leaves."""
        d = float(self.depth.max()) if self.n else 0.0
        total, seen, count, frac = 0.0, 0, 0, frac0
        for c0, c1 in self.col_bounds:
            width = c1 - c0
            total += frac * width
            seen, count = seen + width, count + 1
            if self._refines(count, seen):
                mu = d * seen / max(self.m_eff, 1)
                frac = min(frac, min(math.ceil(_rank_bound(mu)), d) / seen)
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
            g = SAMPLE_GROUP
            mins = col_minima(keys, g).T if transposed else row_minima(keys, g)
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
        j = torch.minimum(torch.ceil(_rank_bound(mu)), d).long()
        fill = self.fill[r0:r1]
        ok = (j >= 1) & (fill >= j) & (fill <= self.cap)
        if not bool(ok.any()):
            return
        jm = int(j[ok].max())
        width = int(fill.max().clamp(jm, self.cap))
        keys = self.cand_keys[r0:r1, :width]
        if int(j[ok].min()) == jm:  # one rank for all: the largest of the jm smallest
            t = torch.topk(keys, jm, dim=1, largest=False, sorted=False)[0].amax(dim=1)
        else:
            vals, _ = torch.topk(keys, jm, dim=1, largest=False, sorted=True)
            t = vals.gather(1, (j.clamp(1, jm) - 1)[:, None]).squeeze(1)
        cur = self.thresh[r0:r1]
        self.thresh[r0:r1] = torch.where(ok, torch.minimum(cur, t), cur)

    # ---- the scan ---------------------------------------------------------------------
    def scan(self, workers: int) -> None:
        """Filter every block of keys, on ``workers`` threads (one torch thread each when
        several: the many small operations of a block scale poorly across threads)."""
        blocks = self.row_bounds
        if self.symmetric:  # the sample block first, then its row, then the rest
            phases = [[(blocks[0], blocks[0])], [(blocks[0], bj) for bj in blocks[1:]],
                      [(bi, bj) for i, bi in enumerate(blocks[1:], 1) for bj in blocks[i:]]]
            run = self._pair
        else:  # one task per query block: its blocks of references in visit order
            phases = [blocks]
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
                    if len(phase) == 1:  # a lone block gets every thread
                        torch.set_num_threads(threads)
                        run(phase[0])
                        torch.set_num_threads(max(1, threads // workers))
                    else:
                        list(pool.map(run, phase))  # (re-raises a worker's error)
        finally:
            torch.set_num_threads(threads)

    def _buffer(self, name: str = "buf") -> Tensor:
        """This thread's key buffer ``name``, as large as the largest block."""
        buf = getattr(self.local, name, None)
        if buf is None:
            rows = max(r1 - r0 for r0, r1 in self.row_bounds)
            cols = max(c1 - c0 for c0, c1 in self.col_bounds)
            buf = self.a.new_empty(rows * cols)
            setattr(self.local, name, buf)
        return buf

    def _symmetric_keys(self, r0: int, r1: int, c0: int, c1: int, out: Tensor) -> None:
        """Leave-one-out squared distances of visit positions ``r0:r1`` x ``c0:c1`` into
        ``out``: ``|x_i|^2 + |x_j|^2`` first (it commutes), then the products added."""
        torch.add(self.sq[r0:r1, None], self.sq[None, c0:c1], out=out)
        out.addmm_(self.a[r0:r1], self.bt[:, c0:c1])

    def _keys(self, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Keys of query positions ``r0:r1`` against visit positions ``c0:c1``."""
        out = self._buffer()[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        if self.sq is None:
            torch.mm(self.a[r0:r1], self.bt[:, c0:c1], out=out)
        elif r1 - r0 == c1 - c0 == self.block or self.m <= self.block:
            self._symmetric_keys(r0, r1, c0, c1, out)
        else:  # a partial block: cut from the full-size block ending at it, since BLAS
            # kernels of another shape may round a pair's key differently
            b = self.block
            full = self._buffer("full")[: b * b].view(b, b)
            self._symmetric_keys(r1 - b, r1, c1 - b, c1, full)
            out.copy_(full[b - (r1 - r0) :, b - (c1 - c0) :])
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

    def _pair(self, task) -> None:
        """Leave-one-out block ``(rows, columns)`` above the diagonal: both directions."""
        (i0, i1), (j0, j1) = task
        keys = self._keys(i0, i1, j0, j1)
        if i0 == 0:  # the sample block: thresholds of the column queries
            self._set_thresholds(keys, j0, transposed=j0 > 0)
        found = rows_at_most(keys, self.thresh[i0:i1], self.group)
        with self.locks[i0]:
            self._append(*found, i0, j0)
            self._seen(i0, i1, j1 - j0)
        if j0 != i0:
            found = cols_at_most(keys, self.thresh[j0:j1], self.group)
            with self.locks[j0]:
                self._append(*found, j0, i0)
                self._seen(j0, j1, i1 - i0)

    def _query_block(self, bounds: tuple[int, int]) -> None:
        """Queries ``r0:r1`` against every block of references, the sample first."""
        i0, i1 = bounds
        for j0, j1 in self.col_bounds:
            keys = self._keys(i0, i1, j0, j1)
            if j0 == 0:
                self._set_thresholds(keys, i0)
            self._append(*rows_at_most(keys, self.thresh[i0:i1], self.group), i0, j0)
            self._seen(i0, i1, j1 - j0)

    def _append(self, rows: Tensor, cols: Tensor, vals: Tensor, r0: int, c0: int) -> None:
        """Write candidates (local query rows, sorted; local visit columns; keys)."""
        p = len(rows)
        if not p:
            return
        counts = torch.bincount(rows)
        first = (torch.cumsum(counts, 0) - counts).index_select(0, rows)
        rank = torch.arange(p, device=rows.device) - first  # (p,) position within its row
        rows = rows + r0
        pos = (self.fill.index_select(0, rows) + rank).clamp_max_(self.cap)  # cap: discarded
        self.fill[r0 : r0 + len(counts)] += counts
        flat = rows * (self.cap + 1) + pos
        self.cand_keys.view(-1).index_copy_(0, flat, vals)
        self.cand_idx.view(-1).index_copy_(0, flat, self.order32.index_select(0, cols + c0))

    # ---- selection --------------------------------------------------------------------
    def select(self, out_keys: Tensor, out_idx: Tensor) -> None:
        """Exact top ``depth`` per query into ``out_keys``, ``out_idx`` (original rows)."""
        d_max = out_keys.shape[1]
        steps = torch.arange(d_max, device=out_keys.device)[None, :]
        bad = []
        for s, e in row_chunks(self.n, max(1, (1 << 24) // self.cap)):
            width = int(self.fill[s:e].max().clamp(d_max, self.cap))
            keys = self.cand_keys[s:e, :width]  # (c, width)
            depth = self.depth[s:e]
            vals, cols = lex_smallest(keys, self.cand_idx[s:e, :width], d_max)
            # every key <= the final threshold is here: a row is exact when its depth-th
            # smallest candidate is one of them (and nothing was discarded)
            last = vals.gather(1, (depth - 1).clamp_min(0)[:, None]).squeeze(1)
            good = ((last <= self.thresh[s:e]) | (depth == 0)) & (self.fill[s:e] <= self.cap)
            beyond = steps >= depth[:, None]
            vals.masked_fill_(beyond, float("inf"))
            cols.masked_fill_(beyond, -1)
            if self.symmetric:
                rows = self.rows[s:e]
                out_keys[rows], out_idx[rows] = vals, cols
            else:
                out_keys[s:e], out_idx[s:e] = vals, cols
            bad.append((~good).nonzero().squeeze(1) + s)
        bad = torch.cat(bad)
        if len(bad):  # recompute those queries against every reference
            rows = self.rows[bad] if self.symmetric else bad
            out_keys[rows], out_idx[rows] = self._redo(rows, d_max, self.depth[bad])

    def _redo(self, qrows: Tensor, d_max: int, depth: Tensor) -> tuple[Tensor, Tensor]:
        """Exact top ``d_max`` of original queries ``qrows`` against every reference: a
        fresh filter with a new sample, or a full pass for a few rows or a second try."""
        own = None
        if self.exclude_self:
            own = qrows if self.symmetric else self.self_index.index_select(0, qrows)
        if not self.nested and len(qrows) * self.m >= (1 << 24):
            keys = torch.full((len(qrows), d_max), float("inf"), dtype=self.a.dtype,
                              device=qrows.device)
            idx = torch.full((len(qrows), d_max), -1, dtype=torch.long, device=qrows.device)
            sub = _Filter(self.query.index_select(0, qrows), self.ref, depth, self.metric,
                          False, own, self.block, None, self.seed + 1, nested=True)
            sub.scan(1)
            sub.select(keys, idx)
            return keys, idx
        a = augmented(self.query.index_select(0, qrows), self.metric, "query")
        bt = augmented(self.ref, self.metric, "reference").T
        vals_out, cols_out = [], []
        for s, e in row_chunks(len(qrows), 256):
            keys = a[s:e] @ bt  # (c, m), columns in original order
            if own is not None:
                keys[torch.arange(e - s), own[s:e]] = float("inf")
            v, i = topk_lexicographic(keys, d_max)
            vals_out.append(v)
            cols_out.append(i)
        vals, cols = torch.cat(vals_out), torch.cat(cols_out)
        beyond = torch.arange(d_max, device=vals.device)[None, :] >= depth[:, None]
        return vals.masked_fill(beyond, float("inf")), cols.masked_fill(beyond, -1)


__all__ = ["DEFAULT_BLOCK", "SAMPLE_GROUP", "augmented", "exact_topk"]
