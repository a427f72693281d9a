"""GM-GAN (Ben-Yosef & Weinshall 2018): a Gaussian-mixture latent, static or dynamic, and the
supervised variant with an N-way discriminator.

Unsupervised: the GAN losses with p(z) = (1/K) sum_k N(mu_k, Sigma_k). ``mixture static``: mu_k ~
U[-c, c]^d fixed, Sigma_k = sigma^2 I fixed (c = mean_range, sigma = prior_std; the method's
"Sigma = sigma I" makes sigma a variance, we use it as the std, documented in docs/results.md);
``mixture dynamic``: mu_k and A_k learned, z = A_k eps + mu_k (gmkernels.mixture_sample with a
(K, d, d) factor), A_k initialised to sigma I. No published code exists; c, sigma and K are ours.

Supervised (``gmgan-supervised``): D has N sigmoid outputs, D(x)_m = P(x is a real sample of class
m). With y(x) the class of x and f(k) the classes of Gaussian k,
    L(D) = -E_x[log D(x)_y + sum_{m != y} log(1 - D(x)_m)] - E_z[sum_m log(1 - D(G(z))_m)]
    L(G) = -E_z[sum_{m in f(k)} log D(G(z))_m + sum_{m not in f(k)} log(1 - D(G(z))_m)].
f: Gaussian k serves class m iff k = m (mod min(K, N)): K = N one-to-one; K > N several
Gaussians per class (k mod N); K < N each Gaussian serves several classes {m : m mod K = k} (one
Gaussian mapped to several classes), whose outputs its samples then target jointly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gmkernels.nn import GaussianMixturePrior

from .base import register
from .gan import GAN


def class_map(num_components: int, num_classes: int) -> torch.Tensor:
    """(K, N) 0/1 float: row k marks the classes f(k) of Gaussian k."""
    period = min(num_components, num_classes)
    k = torch.arange(num_components)[:, None] % period
    m = torch.arange(num_classes)[None, :] % period
    return (k == m).float()


@register
class GMGAN(GAN):
    name = "gmgan"
    # No published code: c = 1 and sigma are our choice (docs/results.md). sigma 0.1 on the 2-D
    # latents of the toy data, where K means in [-1, 1]^2 lie ~2/sqrt(K) = 0.4 apart (grid25), and
    # 0.2 on the 30-D image latents (DeLiGAN's sigma), where random means are far apart.
    defaults = dict(GAN.defaults, mean_range=1.0, sigma_penalty=0.0, assignment="uniform")
    toy_defaults = dict(prior_std=0.1)
    image_defaults = dict(prior_std=0.2)

    @classmethod
    def defaults_for(cls, num_modes, toy):
        # K = number of modes (the supervised variant then maps K = N Gaussians one-to-one to the
        # N classes), capped at 100 (stacked-digits has 1,000 modes).
        return dict(super().defaults_for(num_modes, toy), components=min(num_modes, 100))

    def make_prior(self):
        config = self.config
        covariance = "fixed" if config.mixture == "static" else "full"
        return GaussianMixturePrior(config.components, config.z_dim, covariance, mean_range=config.mean_range,
                                    std=config.prior_std, assignment=config.assignment)

    def regularizer(self, G):
        if not self.config.sigma_penalty or self.config.mixture == "static":
            return None
        return self.config.sigma_penalty * G.prior.penalty("mean")


@register
class GMGANSupervised(GMGAN):
    name = "gmgan-supervised"
    needs_labels = True

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        self.targets = class_map(config.components, num_classes)

    @property
    def d_out(self) -> int:
        return self.num_classes

    def _bce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()

    def discriminator_loss(self, D, real, fake):
        real_logits, _ = self.discriminate(D, real)
        fake_logits, _ = self.discriminate(D, fake)
        real_targets = F.one_hot(real.labels, self.num_classes).to(real_logits.dtype)
        return self._bce(real_logits, real_targets) + self._bce(fake_logits, torch.zeros_like(fake_logits))

    def generator_loss(self, D, fake):
        fake_logits, _ = self.discriminate(D, fake)
        targets = self.targets.to(fake_logits.device, fake_logits.dtype)[fake.component]
        return self._bce(fake_logits, targets)

    def critic_score(self, D, batch):
        """The output of the sample's own class: D's "real sample of class y" logit (a penalty's
        batch carries the real samples' labels)."""
        logits, _ = self.discriminate(D, batch)
        return logits.gather(1, batch.labels[:, None]).squeeze(1)

    def generated_classes(self, component: torch.Tensor) -> torch.Tensor:
        """The first class f(k) of each sample's Gaussian (its label for class-wise metrics)."""
        return self.targets.to(component.device)[component].argmax(1)
