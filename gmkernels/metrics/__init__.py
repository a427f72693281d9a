"""Sample-quality metrics built on the ops: IS, mIS, FID, KID, Parzen, precision / recall /
density / coverage."""
from .batching import (apply_in_batches, feature_moments, frechet_distance_of, inception_score_of,
                       modified_inception_score_of)
from .frechet import GaussianMoments, frechet_distance, frechet_distance_from_moments
from .inception import (ClassScores, inception_score, modified_inception_score,
                        modified_inception_score_per_class)
from .kid import KIDResult, kernel_inception_distance
from .parzen import ParzenResult, parzen_log_likelihood
from .precision_recall import PrecisionRecall, precision_recall

__all__ = [
    "ClassScores",
    "GaussianMoments",
    "KIDResult",
    "ParzenResult",
    "PrecisionRecall",
    "apply_in_batches",
    "feature_moments",
    "frechet_distance",
    "frechet_distance_from_moments",
    "frechet_distance_of",
    "inception_score",
    "inception_score_of",
    "kernel_inception_distance",
    "modified_inception_score",
    "modified_inception_score_of",
    "modified_inception_score_per_class",
    "parzen_log_likelihood",
    "precision_recall",
]
