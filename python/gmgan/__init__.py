"""gmgan: the training layer of gmkernels — GAN, WGAN(-GP), DeLiGAN, GM-GAN and MD-GAN on the fused
ops, the papers' evaluation protocols, and the ``gmgan`` command line."""
from .config import Config, ConfigError, build_config
from .trainer import Trainer

__all__ = ["Config", "ConfigError", "Trainer", "build_config"]
