"""Explanations of a learned similarity: attributions over inputs and nearest prototypes."""

from dmlkit.explain.attribution import (
    NoInputGradientError,
    default_occlusion_window,
    integrated_gradients,
    nearest_prototypes,
    occlusion,
    similarity,
    stride_for_patch,
)

__all__ = ["NoInputGradientError", "default_occlusion_window", "integrated_gradients",
           "nearest_prototypes", "occlusion", "similarity", "stride_for_patch"]
