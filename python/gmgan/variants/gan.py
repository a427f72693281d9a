"""GAN (Goodfellow et al. 2014) with the minimax or the non-saturating generator loss.

D maximises E log D(x) + E log(1 - D(G(z))), written with logits l: softplus(-l_real) +
softplus(l_fake). G minimises E log(1 - D(G(z))) = -softplus(l_fake) (minimax, saturates when D
wins) or -E log D(G(z)) = softplus(-l_fake) (non-saturating, the survey's fix).
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Variant, register


@register
class GAN(Variant):
    name = "gan"

    def discriminator_loss(self, D, real, fake):
        real_logit, _ = self.discriminate(D, real)
        fake_logit, _ = self.discriminate(D, fake)
        return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()

    def generator_loss(self, D, fake):
        fake_logit, _ = self.discriminate(D, fake)
        if self.config.gan_loss == "minimax":
            return -F.softplus(fake_logit).mean()
        return F.softplus(-fake_logit).mean()
