"""The ``True`` entries of an all-pairs mask computed in row chunks, in compact form.

A pair miner's output is ``torch.where`` of an ``(n, m)`` mask, read one row chunk at a
time. Concatenating the chunks' ``torch.where`` results holds every index twice (the
chunks' index tensors and their concatenation), plus the ``(k, 2)`` buffer that each
chunk's two index views share: about 40 bytes per pair for an output of 16.
:class:`ChunkedWhere` keeps each chunk compactly instead (its ``(c, m)`` bool mask, or its
flat int32 positions when fewer than a quarter of its entries are set), then writes the
indices into output tensors of the exact size, a bounded block at a time. The peak is
the output plus at most ``min(1 byte per entry, 4 bytes per pair)`` plus one chunk's
temporaries, and the indices are the same, in the same row-major order, as
``torch.where`` of the whole mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: a chunk whose set entries are fewer than ``numel / _SPARSE_RATIO`` is kept as positions
_SPARSE_RATIO = 4
#: mask entries read per ``torch.nonzero`` call when writing out (16 MB of int64 pairs)
_WRITE_BUDGET = 1 << 20
_INT32_LIMIT = 1 << 31


class ChunkedWhere:
    """Collect row chunks of an ``(n, m)`` bool mask; :meth:`indices` gives its ``torch.where``.

    Parameters
    ----------
    device : torch.device
        Where the indices are made (that of the masks).

    Examples
    --------
    >>> mask = torch.tensor([[True, False], [False, True], [True, True]])
    >>> found = ChunkedWhere(mask.device)
    >>> found.add(mask[:2], 0)
    >>> found.add(mask[2:], 2)
    >>> found.indices()
    (tensor([0, 1, 2, 2]), tensor([0, 1, 0, 1]))
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # (first row, number of set entries, (c, m) bool mask or (k,) int32 flat positions,
        #  row length m)
        self._chunks: list[tuple[int, int, Tensor, int]] = []
        self._count = 0

    def __len__(self) -> int:
        """Set entries collected so far."""
        return self._count

    def add(self, mask: Tensor, row_offset: int) -> None:
        """Add the chunk ``mask (c, m)`` whose first row is row ``row_offset`` of the mask.

        Chunks must come in row order. A dense chunk is kept by reference: do not modify
        ``mask`` afterwards.
        """
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a 2-d bool tensor, got {mask.dtype} {tuple(mask.shape)}"
            )
        k = int(torch.count_nonzero(mask))
        if k == 0:
            return
        m = mask.shape[1]
        if k * _SPARSE_RATIO < mask.numel() and mask.numel() < _INT32_LIMIT:
            flat = torch.nonzero(mask.reshape(-1)).reshape(-1)  # (k,) int64, row-major
            kept = flat.to(torch.int32)  # (k,)
        else:
            kept = mask.contiguous()  # (c, m)
            if kept.untyped_storage().nbytes() > kept.numel():  # a view of a larger mask
                kept = kept.clone()
        self._chunks.append((row_offset, k, kept, m))
        self._count += k

    def indices(self) -> tuple[Tensor, Tensor]:
        """Row and column indices ``(k,), (k,)`` int64 of every set entry, row-major.

        The collected chunks are released as they are written out; the collector is
        empty afterwards.
        """
        rows = torch.empty(self._count, dtype=torch.long, device=self.device)  # (k,)
        cols = torch.empty(self._count, dtype=torch.long, device=self.device)  # (k,)
        start = 0
        chunks, self._chunks, self._count = self._chunks, [], 0
        chunks.reverse()  # popped from the end, in row order
        while chunks:
            offset, k, kept, m = chunks.pop()
            stop = start + k
            if kept.dtype == torch.bool:
                at = start
                step = max(1, _WRITE_BUDGET // max(1, m))
                for r in range(0, kept.shape[0], step):
                    nz = torch.nonzero(kept[r : r + step])  # (k_r, 2)
                    end = at + nz.shape[0]
                    if end > stop:
                        break
                    torch.add(nz[:, 0], offset + r, out=rows[at:end])
                    cols[at:end] = nz[:, 1]
                    at = end
                if at != stop:
                    raise RuntimeError("a collected mask changed after it was added")
            else:
                flat = kept.long()  # (k,)
                torch.div(flat, m, rounding_mode="floor", out=rows[start:stop])
                rows[start:stop] += offset
                torch.remainder(flat, m, out=cols[start:stop])
            del kept
            start = stop
        return rows, cols


__all__ = ["ChunkedWhere"]
