"""Sample-quality metrics built on the ops: IS, mIS, FID, Parzen."""

__all__: list = []
