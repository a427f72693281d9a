"""The GAN variants: each is its losses, its prior and its settings (gmgan.trainer runs them all).

REGISTRY is the one list of variants (gmgan.config.VARIANTS and the CLI's choices come from it):
each variant's class registers itself with ``@register``, so a new variant is its own file and
one import line below (the order of the imports is the order the CLI lists them).
"""
from .base import REGISTRY, Batch, SimplePrior, Variant, register
from .gan import GAN
from .wgan import WGAN, WGANGP
from .deligan import DeLiGAN
from .gmgan import GMGAN, GMGANSupervised, class_map
from .mdgan import MDGAN
from .infogan import InfoGAN
from .fgan import FGAN


def make_variant(config, num_classes: int) -> Variant:
    return REGISTRY[config.variant](config, num_classes)


__all__ = ["Batch", "DeLiGAN", "GAN", "GMGAN", "GMGANSupervised", "FGAN", "InfoGAN", "MDGAN", "REGISTRY", "SimplePrior", "Variant",
           "WGAN", "WGANGP", "class_map", "make_variant", "register"]
