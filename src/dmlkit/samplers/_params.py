"""What the batch samplers share: the one-class-batches warning, and the check of their
integer settings (:func:`dmlkit._checks.check_int`) when a sampler is built: a float
``batch_size`` would otherwise fail only at the first batch, as a slice error."""

from __future__ import annotations

from dmlkit._checks import check_int

#: the warning both samplers give when every batch holds a single class
ONE_CLASS_BATCHES = (
    "so no batch holds a negative pair: pair, triplet and tuple losses learn nothing "
    "(their loss is 0 every batch, or only pulls items together); only losses whose "
    "class weights or proxies supply the negatives (normalized_softmax, proxy_anchor, "
    "arcface, ...) or a cross_batch_memory learn; put at least two classes in a batch"
)

__all__ = ["ONE_CLASS_BATCHES", "check_int"]
