"""Signal-to-noise-ratio contrastive loss (Yuan, Chen, Yang, Wang & Wang, "Signal-To-Noise
Ratio: A Robust Distance Metric for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.snr import SNRDistance
from dmlkit.losses.contrastive import ContrastiveLoss
from dmlkit.registry import register_loss


@register_loss("signal_to_noise_ratio_contrastive")
class SignalToNoiseRatioContrastiveLoss(ContrastiveLoss):
    r"""The contrastive loss measured in signal-to-noise ratio.

    With :math:`d_{ij} = \mathrm{var}(x_i - x_j) / \mathrm{var}(x_i)`
    (:class:`~dmlkit.distances.SNRDistance`, anchor :math:`x_i` as the signal):

    .. math::

        L = \frac{1}{|P^+|}\sum_{(i,j) \in P} [d_{ij} - m_{pos}]_+
          + \frac{1}{|N^+|}\sum_{(i,k) \in N} [m_{neg} - d_{ik}]_+ ,

    each part averaged over its pairs with a non-zero loss (:math:`P^+`, :math:`N^+`).
    The paper adds an L1 regularizer on the embeddings, which is left to the user.
    Matches pytorch-metric-learning's ``SignalToNoiseRatioContrastiveLoss``: labels,
    mined pairs or triplets, and ``ref_embeddings`` (the anchor is always the query).

    Parameters
    ----------
    pos_margin, neg_margin : float
        Margins of the positive and negative pairs.
    distance : SNRDistance, optional
        The SNR distance (default ``SNRDistance()``, on L2-normalized embeddings); any other
        distance raises a TypeError.
    """

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, SNRDistance):
            raise TypeError(
                "SignalToNoiseRatioContrastiveLoss needs an SNRDistance, "
                f"got {type(distance).__name__}"
            )
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance)

    @staticmethod
    def default_distance() -> BaseDistance:
        return SNRDistance()


__all__ = ["SignalToNoiseRatioContrastiveLoss"]
