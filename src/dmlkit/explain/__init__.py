"""Explanations of a learned similarity: attributions over inputs and nearest prototypes."""

from dmlkit.explain.attribution import (
    NoInputGradientError,
    integrated_gradients,
    nearest_prototypes,
    occlusion,
    similarity,
)

__all__ = ["NoInputGradientError", "integrated_gradients", "nearest_prototypes", "occlusion",
           "similarity"]
