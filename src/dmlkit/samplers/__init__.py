"""Batch samplers (``torch.utils.data.Sampler`` of index lists, seeded, with ``set_epoch``)."""

from dmlkit.registry import import_package_members

# (the package scan exports the classes its modules define; OfflineHardNegativeSampler is
# defined in dmlkit.training.offline_mining, and offline_hard_negative re-exports it)
from dmlkit.samplers.offline_hard_negative import OfflineHardNegativeSampler  # noqa: F401

__all__ = sorted({*import_package_members(__name__, globals(), skip=set()),
                  "OfflineHardNegativeSampler"})
