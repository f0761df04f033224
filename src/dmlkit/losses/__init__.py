"""Metric-learning losses. Every module here registers its classes by name.

Modules are discovered automatically: a new loss is one file with one
``@register_loss`` decorator, and its classes are exported from this package.
"""

from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.registry import import_package_members

__all__ = ["BaseMetricLoss", "mean_nonzero"]
__all__ += import_package_members(__name__, globals(), skip={"base"})
