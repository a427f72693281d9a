"""The GAN variants: each is its losses and its prior (gmgan.trainer runs them all)."""
from .base import Batch, Variant
from .deligan import DeLiGAN
from .gan import GAN
from .gmgan import GMGAN, GMGANSupervised, class_map
from .mdgan import MDGAN
from .wgan import WGAN, WGANGP

REGISTRY = {cls.name: cls for cls in (GAN, WGAN, WGANGP, DeLiGAN, GMGAN, GMGANSupervised, MDGAN)}


def make_variant(config, num_classes: int) -> Variant:
    return REGISTRY[config.variant](config, num_classes)


__all__ = ["Batch", "DeLiGAN", "GAN", "GMGAN", "GMGANSupervised", "MDGAN", "REGISTRY", "Variant", "WGAN",
           "WGANGP", "class_map", "make_variant"]
