"""DeLiGAN (Gurumurthy et al. 2017): a GAN whose latent is a learnable Gaussian mixture.

p(z) = (1/N) sum_i N(mu_i, diag(sigma_i)^2), mu ~ U(-1, 1), sigma initialised to prior_std
(0.2 on images, 0.02 on toy data, as the published code), trained with G through the
reparameterisation z = mu_i + sigma_i eps (gmkernels.mixture_sample). G's loss adds
sigma_penalty * mean((1 - sigma)^2) over all N K entries (the published code's form; the paper
writes sum_i ||1 - sigma_i||^2 / N, K times larger). ``assignment per_row`` gives batch row s the
component s mod N (the published code, N = batch size); ``uniform`` draws components at random.
"""
from __future__ import annotations

from gmkernels.nn import GaussianMixturePrior

from .base import register
from .gan import GAN


@register
class DeLiGAN(GAN):
    name = "deligan"
    # The published code: N = 50, mu ~ U(-1, 1); sigma 0.02 and penalty 0.1 on toy data, sigma 0.2
    # and penalty 1/3 on images.
    defaults = dict(GAN.defaults, components=50, mean_range=1.0, assignment="uniform")
    toy_defaults = dict(prior_std=0.02, sigma_penalty=0.1)
    image_defaults = dict(prior_std=0.2, sigma_penalty=1 / 3)

    def make_prior(self):
        config = self.config
        return GaussianMixturePrior(config.components, config.z_dim, "diag", mean_range=config.mean_range,
                                    std=config.prior_std, assignment=config.assignment)

    def regularizer(self, G):
        if not self.config.sigma_penalty:
            return None
        return self.config.sigma_penalty * G.prior.penalty("mean")
