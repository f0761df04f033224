"""The HTTP service (``dmlkit serve``): FastAPI over a durable index and an embedder.

Needs the ``serve`` extra (``pip install 'dmlkit[serve]'``: fastapi, uvicorn,
onnxruntime). With an ONNX export of the model and a faiss index the service runs
without torch.
"""

try:
    import fastapi  # noqa: F401
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("the service needs the serve extra: pip install 'dmlkit[serve]'") from None

from dmlkit.service.app import ServiceConfig, create_app
from dmlkit.service.embedders import OnnxEmbedder, TextEmbedder, TorchEmbedder, load_embedder
from dmlkit.service.security import ApiKeys, RateLimiter
from dmlkit.service.store import DurableIndex

__all__ = ["ApiKeys", "DurableIndex", "OnnxEmbedder", "RateLimiter", "ServiceConfig",
           "TextEmbedder", "TorchEmbedder", "create_app", "load_embedder"]
