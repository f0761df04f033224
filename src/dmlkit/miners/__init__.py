"""Miners (tuple selection). Every module here registers its classes by name.

Modules are discovered automatically: a new miner is one file with one
``@register_miner`` decorator, and its classes are exported from this package.
"""

from dmlkit.miners.base import BaseMiner
from dmlkit.registry import import_package_members

__all__ = ["BaseMiner"]
__all__ += import_package_members(__name__, globals(), skip={"base"})
