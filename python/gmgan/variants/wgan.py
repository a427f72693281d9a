"""Wasserstein GAN: weight clipping (Arjovsky et al. 2017) and gradient penalty (Gulrajani et al. 2017).

The critic maximises E f(x) - E f(G(z)) (minimises its negative); G minimises -E f(G(z)).
``wgan`` clamps every critic weight to [-clip, clip] after each critic update; ``wgan-gp`` is the
same critic without clipping and with the training loop's gradient penalty on
(``gp_kind wgan-gp``, ``gp_weight`` 10): gp_weight * E (||grad f(x_hat)|| - 1)^2 at
x_hat = a x + (1 - a) G(z), a ~ U(0, 1) per sample (gmgan.penalty, available to every variant).
"""
from __future__ import annotations

import torch

from .base import Variant, register


@register
class WGAN(Variant):
    name = "wgan"
    # Arjovsky et al.: RMSprop 5e-5, 5 critic steps.
    defaults = dict(Variant.defaults, n_critic=5, optimizer="rmsprop", lr_g=5e-5, lr_d=5e-5)

    def discriminator_loss(self, D, real, fake):
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


@register
class WGANGP(WGAN):
    name = "wgan-gp"
    # Gulrajani et al.: Adam 1e-4, betas (0.5, 0.9), 5 critic steps, lambda 10.
    defaults = dict(WGAN.defaults, optimizer="adam", lr_g=1e-4, lr_d=1e-4, beta1=0.5, beta2=0.9, gp_weight=10.0)

    def after_discriminator_step(self, D):
        """No clipping: the penalty replaces it."""
