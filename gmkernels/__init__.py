"""gmkernels: fused PyTorch ops for mixture-prior GANs (DeLiGAN, GM-GAN, MD-GAN)."""
from .backend import backends, get_backend, set_backend, use_backend
from .ops.class_pairwise_kl import class_pairwise_kl
from .ops.minibatch_discrimination import minibatch_discrimination
from .ops.mixture_log_likelihood import mixture_log_likelihood, simplex_vertices
from .ops.mixture_sample import mixture_sample
from .ops.nearest_neighbors import nearest_neighbors
from .ops._checks import set_value_checks, value_checks, value_checks_enabled

from .memory import output_cache_bytes, release_output_cache
from ._version import __version__


def build_info() -> dict:
    """How the compiled extension was built (version, CUDA archs, OpenMP, compiler), or
    ``{"compiled": False}`` when only the reference backend is available."""
    from .backend import compiled_module

    compiled = compiled_module()
    if compiled is None:
        return {"compiled": False, "version": __version__}
    return {"compiled": True, **dict(compiled.build_info())}


from . import metrics, nn  # noqa: E402  (they build on the ops above)

__all__ = [
    "backends",
    "build_info",
    "class_pairwise_kl",
    "get_backend",
    "metrics",
    "minibatch_discrimination",
    "mixture_log_likelihood",
    "mixture_sample",
    "nearest_neighbors",
    "nn",
    "output_cache_bytes",
    "release_output_cache",
    "set_backend",
    "simplex_vertices",
    "set_value_checks",
    "use_backend",
    "value_checks",
    "value_checks_enabled",
]
