"""gmgan: the training layer of gmkernels — GAN, WGAN(-GP), DeLiGAN, GM-GAN and MD-GAN on the fused
ops, the papers' evaluation protocols, and the ``gmgan`` command line."""
from .config import Config, ConfigError, build_config

__all__ = ["Config", "ConfigError", "Trainer", "build_config"]


def __getattr__(name: str):
    # Trainer is imported on first use: it needs the train extra (safetensors, matplotlib, ...),
    # which the gmgan command checks at start-up with a one-line message (gmgan.extras).
    if name == "Trainer":
        from .extras import install_hint, missing_training_modules

        missing = missing_training_modules()
        if missing:
            raise ImportError(install_hint(missing))
        from .trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'gmgan' has no attribute {name!r}")
