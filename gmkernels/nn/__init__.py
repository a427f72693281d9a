"""Modules built on the ops: GaussianMixturePrior, SimplexGMM, MinibatchDiscrimination."""

__all__: list = []
