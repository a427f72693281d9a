"""Wasserstein GAN: weight clipping (Arjovsky et al. 2017) and gradient penalty (Gulrajani et al. 2017).

The critic maximises E f(x) - E f(G(z)) (minimises its negative); G minimises -E f(G(z)).
``wgan`` clamps every critic weight to [-clip, clip] after each critic update; ``wgan-gp`` adds
gp_weight * E (||grad f(x_hat)|| - 1)^2 at x_hat = a x + (1 - a) G(z), a ~ U(0, 1) per sample.
"""
from __future__ import annotations

import torch

from .base import Variant


class WGAN(Variant):
    name = "wgan"

    def discriminator_loss(self, D, real, fake, generator):
        real_score, _ = self.discriminate(D, real)
        fake_score, _ = self.discriminate(D, fake)
        return fake_score.mean() - real_score.mean()

    def generator_loss(self, D, fake):
        fake_score, _ = self.discriminate(D, fake)
        return -fake_score.mean()

    def after_discriminator_step(self, D):
        with torch.no_grad():
            for parameter in D.parameters():
                parameter.clamp_(-self.config.clip, self.config.clip)


class WGANGP(WGAN):
    name = "wgan-gp"

    def discriminator_loss(self, D, real, fake, generator):
        shape = (real.x.shape[0],) + (1,) * (real.x.dim() - 1)
        mix = torch.rand(shape, generator=generator, device=real.x.device, dtype=real.x.dtype)
        between = (mix * real.x + (1 - mix) * fake.x).requires_grad_(True)
        # The condition of a mixed point: the real one's (a conditional critic needs one label).
        score, _ = self.discriminate(D, type(real)(between, real.labels))
        (gradient,) = torch.autograd.grad(score.sum(), between, create_graph=True)
        penalty = ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return super().discriminator_loss(D, real, fake, generator) + self.config.gp_weight * penalty

    def after_discriminator_step(self, D):
        """No clipping: the penalty replaces it."""
