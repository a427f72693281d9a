"""What every variant shares: the batch record and the interface the training loop calls.

A variant is its losses and its prior; the loop (gmgan.trainer) does everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config
from ..models import SimplePrior


@dataclass
class Batch:
    x: torch.Tensor
    labels: torch.Tensor | None = None      # real: data labels; fake: sampled condition labels
    component: torch.Tensor | None = None   # fake: the mixture component each z came from


class Variant:
    """Defaults: one D output, z ~ U[-1,1]^d or N(0, I), no regulariser, nothing after D steps."""

    name = "base"
    needs_labels = False

    def __init__(self, config: Config, num_classes: int):
        self.config, self.num_classes = config, num_classes

    @property
    def d_out(self) -> int:
        return 1

    def make_prior(self) -> nn.Module:
        return SimplePrior(self.config.z_dim, self.config.latent)

    def discriminate(self, D: nn.Module, batch: Batch):
        """(output, features) of D on a batch, conditioned on its labels when configured."""
        return D(batch.x, batch.labels if self.config.conditional else None)

    def discriminator_loss(self, D, real: Batch, fake: Batch, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, D, fake: Batch) -> torch.Tensor:
        raise NotImplementedError

    def regularizer(self, G: nn.Module) -> torch.Tensor | None:
        """Extra generator-side term (DeLiGAN's sigma penalty), or None."""
        return None

    def after_discriminator_step(self, D: nn.Module) -> None:
        """Called after every D update (WGAN's weight clipping)."""
