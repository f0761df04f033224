"""Explanations of a learned similarity: attributions over inputs and nearest prototypes."""

from dmlkit.explain.attribution import (
    IG_COMPLETENESS_TOLERANCE,
    IncompleteAttributionWarning,
    NoInputGradientError,
    default_occlusion_window,
    ig_completeness,
    integrated_gradients,
    nearest_prototypes,
    occlusion,
    similarity,
    stride_for_patch,
)

__all__ = ["IG_COMPLETENESS_TOLERANCE", "IncompleteAttributionWarning", "NoInputGradientError",
           "default_occlusion_window", "ig_completeness", "integrated_gradients",
           "nearest_prototypes", "occlusion", "similarity", "stride_for_patch"]
