"""Batch samplers (``torch.utils.data.Sampler`` of index lists, seeded, with ``set_epoch``)."""

from dmlkit.registry import import_package_members

__all__ = import_package_members(__name__, globals(), skip=set())
