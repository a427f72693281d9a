"""MD-GAN (Eghbal-zadeh et al. 2019): D embeds into [-2.5, 2.5]^d, scored by a simplex mixture.

lk(e) = (1/(d+1)) sum_i N(e; v_i, var I) over the d + 1 vertices of a regular simplex (d = 9,
var = 0.25, gmkernels.nn.SimplexGMM on gmkernels.mixture_log_likelihood). D's last layer is
5 sigmoid(x) - 2.5 (the published code). D minimises -E[log lk(D(x)) + log(lambda - lk(D(G(z))))],
G minimises E log(lambda - lk(D(G(z)))) (the paper's saturating form; ``mdgan_saturating false``
uses -E log lk(D(G(z)))), lambda = max lk, all in log space.
"""
from __future__ import annotations

import torch

from gmkernels.nn import SimplexGMM

from .base import Variant, register


@register
class MDGAN(Variant):
    name = "mdgan"

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        self.sgmm = SimplexGMM(config.mdgan_dim, config.mdgan_var)

    @property
    def d_out(self) -> int:
        return self.config.mdgan_dim

    def discriminate(self, D, batch):
        output, features = super().discriminate(D, batch)
        return 5 * torch.sigmoid(output) - 2.5, features

    def discriminator_loss(self, D, real, fake):
        real_embedding, _ = self.discriminate(D, real)
        fake_embedding, _ = self.discriminate(D, fake)
        return self.sgmm.to(real_embedding.device).discriminator_loss(real_embedding, fake_embedding)

    def critic_score(self, D, batch):
        """log lk(D(x)): the simplex mixture's log-likelihood of the embedding, which D raises on
        real data (a penalty differentiates through gmkernels.mixture_log_likelihood)."""
        embedding, _ = self.discriminate(D, batch)
        return self.sgmm.to(embedding.device).log_likelihood(embedding)

    def generator_loss(self, D, fake):
        fake_embedding, _ = self.discriminate(D, fake)
        return self.sgmm.to(fake_embedding.device).generator_loss(fake_embedding,
                                                                  saturating=self.config.mdgan_saturating)
