"""What every variant shares: the batch record, the default prior and the interface the training
loop calls.

A variant is its losses, its prior and its settings: ``defaults`` (the optimisation its paper
uses) and ``toy_defaults`` / ``image_defaults`` (what depends on the kind of data) fill the
config's "auto" fields (gmgan.config.build_config); the loop (gmgan.trainer) does everything
else. A new variant is one file here and one line in ``variants/__init__.py``'s registry.

This package imports nothing from gmgan.config: the config takes its list of variants from the
registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..config import Config


@dataclass
class Batch:
    x: torch.Tensor
    labels: torch.Tensor | None = None      # real: data labels; fake: sampled condition labels
    component: torch.Tensor | None = None   # fake: the mixture component each z came from
    latent: torch.Tensor | None = None      # fake: the z each sample was generated from (InfoGAN reads its codes)


class SimplePrior(nn.Module):
    """z ~ U[-1, 1]^dim or N(0, I): the latent of the non-mixture variants."""

    def __init__(self, dim: int, kind: str = "uniform"):
        super().__init__()
        self.dim, self.kind = dim, kind
        self.register_buffer("anchor", torch.zeros(()))  # follows .to(device)

    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0):
        device = self.anchor.device
        if self.kind == "uniform":
            z = torch.rand(n, self.dim, generator=generator, device=device) * 2 - 1
        else:
            z = torch.randn(n, self.dim, generator=generator, device=device)
        return z * temperature, None


class Variant:
    """The interface the loop calls. Defaults: one D output, z ~ U[-1,1]^d or N(0, I), no
    regulariser, nothing after D steps."""

    name = "base"
    needs_labels = False
    # Settings of the variant's paper, over the dataset's (gmgan.config.DATASET_DEFAULTS); a flag,
    # a file or a preset still wins. gp_weight 0: no gradient penalty unless asked for.
    defaults: dict = dict(n_critic=1, optimizer="adam", gp_weight=0.0)
    toy_defaults: dict = {}   # on the 2-D mixtures (grid25, ring8), over ``defaults``
    image_defaults: dict = {}

    def __init__(self, config: Config, num_classes: int):
        self.config, self.num_classes = config, num_classes

    @classmethod
    def defaults_for(cls, num_modes: int, toy: bool) -> dict:
        """This variant's settings on a dataset with num_modes modes (2-D mixture or images)."""
        return dict(cls.defaults, **(cls.toy_defaults if toy else cls.image_defaults))

    @property
    def d_out(self) -> int:
        return 1

    def make_prior(self) -> nn.Module:
        return SimplePrior(self.config.z_dim, self.config.latent)

    def discriminate(self, D: nn.Module, batch: Batch):
        """(output, features) of D on a batch, conditioned on its labels when configured."""
        return D(batch.x, batch.labels if self.config.conditional else None)

    def critic_score(self, D: nn.Module, batch: Batch) -> torch.Tensor:
        """D's scalar judgement of each sample, (n,): what a gradient penalty differentiates.
        One output: that output (GAN's logit, WGAN's score)."""
        output, _ = self.discriminate(D, batch)
        return output.squeeze(1)

    def discriminator_loss(self, D, real: Batch, fake: Batch) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, D, fake: Batch) -> torch.Tensor:
        raise NotImplementedError

    def regularizer(self, G: nn.Module) -> torch.Tensor | None:
        """Extra generator-side term (DeLiGAN's sigma penalty), or None."""
        return None

    def after_discriminator_step(self, D: nn.Module) -> None:
        """Called after every D update (WGAN's weight clipping)."""


# Every variant by name, in the order the CLI lists them (the order variants/__init__.py imports).
REGISTRY: dict[str, type[Variant]] = {}


def register(cls: type[Variant]) -> type[Variant]:
    """Class decorator: list a variant in REGISTRY under its ``name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"variant name {cls.name!r} is taken by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls
