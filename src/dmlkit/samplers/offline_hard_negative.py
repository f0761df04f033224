"""``offline_hard_negative``: batches around hard triplets mined over the whole training
set each epoch with the model being trained (defined in
:mod:`dmlkit.training.offline_mining`; importing it registers the name)."""

from dmlkit.training.offline_mining import OfflineHardNegativeSampler

__all__ = ["OfflineHardNegativeSampler"]
