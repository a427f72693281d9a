"""Sample-quality metrics built on the ops: IS, mIS, FID, Parzen."""
from .parzen import ParzenResult, parzen_log_likelihood

__all__: list = ["ParzenResult", "parzen_log_likelihood"]
