"""Applications of a learned metric, one kit per module, with scikit-learn's contract.

Each kit works on any ``(n, d)`` float array, on the embeddings of any embedder, or on a
dmlkit run directory.
"""

from dmlkit.apps.deep_svdd import DeepSVDD
from dmlkit.apps.few_shot import FewShotClassifier
from dmlkit.apps.identifier import Identifier
from dmlkit.apps.outliers import MetricOutlierDetector
from dmlkit.apps.recommender import CMLRecommender
from dmlkit.apps.verifier import Verifier

__all__ = [
    "CMLRecommender",
    "DeepSVDD",
    "FewShotClassifier",
    "Identifier",
    "MetricOutlierDetector",
    "Verifier",
]
