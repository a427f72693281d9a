"""Modules built on the ops: GaussianMixturePrior, SimplexGMM, MinibatchDiscrimination."""
from .minibatch_discrimination import MinibatchDiscrimination
from .prior import GaussianMixturePrior
from .simplex_gmm import SimplexGMM

__all__ = ["GaussianMixturePrior", "MinibatchDiscrimination", "SimplexGMM"]
