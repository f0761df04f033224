"""Embedding models: ``model(batch) -> (n, dim)`` embeddings. Registered by name."""

from dmlkit.registry import import_package_members

__all__ = import_package_members(__name__, globals(), skip=set())
