"""InfoGAN (Chen et al. 2016): latent codes whose mutual information with G's output is maximised.

z = (noise, c): noise of ``z_dim`` (U[-1, 1] or N(0, I), ``latent``), a one-hot categorical code of
``categories`` classes (uniform; default 10, on the 2-D mixtures the number of modes) and
``continuous_codes`` codes ~ U[-1, 1]. G reads all of z. Q shares D's body: D's one linear head
has 1 + categories + continuous_codes outputs on D's features, the GAN logit, Q's class logits and
Q's means of the continuous codes. The mutual-information term is the variational lower bound of
I(c; G(z)) up to the constant H(c), as the published code writes it:

    L_I = E[CE(Q_cat(G(z)), c_cat)] + E[sum_j (c_j - mu_j(G(z)))^2 / 2]

(the continuous codes' Gaussian negative log-likelihood with the std fixed at 1, constants dropped).
lambda L_I (``info_weight``, 1 as published) is added to D's loss, which trains Q with D's
optimizer on the D step's fakes, and to G's loss (the GAN part as gmgan.variants.gan, minimax or
non-saturating). Clustering (gmgan.clustering): cluster(x) = argmax Q_cat(x). With
``minibatch_discrimination`` Q, like the GAN logit, reads the minibatch features, so its class of
a sample depends on the batch it is judged in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, SimplePrior, register
from .gan import GAN


class InfoGANPrior(nn.Module):
    """z = (noise, one-hot c_cat, c_cont): ``dim`` = noise_dim + categories + continuous.
    sample() returns (z, c_cat): the categorical code is the sample's "component"."""

    def __init__(self, noise_dim: int, categories: int, continuous: int, kind: str = "uniform"):
        super().__init__()
        self.noise = SimplePrior(noise_dim, kind)
        self.categories, self.continuous = categories, continuous
        self.num_components = categories
        self.dim = noise_dim + categories + continuous

    def _latent(self, noise, category, generator):
        continuous = torch.rand(noise.shape[0], self.continuous, generator=generator, device=noise.device) * 2 - 1
        one_hot = F.one_hot(category, self.categories).to(noise.dtype)
        return torch.cat([noise, one_hot, continuous], 1)

    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0):
        """temperature scales the noise only (the codes keep their ranges)."""
        noise, _ = self.noise.sample(n, generator=generator, temperature=temperature)
        category = torch.randint(0, self.categories, (n,), generator=generator, device=noise.device)
        return self._latent(noise, category, generator), category

    def sample_component(self, k: int, n: int, *, generator: torch.Generator | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
        """n latents with categorical code k (what ``gmgan sample --component k`` draws)."""
        noise, _ = self.noise.sample(n, generator=generator, temperature=temperature)
        category = torch.full((n,), k, dtype=torch.int64, device=noise.device)
        return self._latent(noise, category, generator)


@register
class InfoGAN(GAN):
    name = "infogan"
    # The published MNIST setting: lambda 1, 10 classes and 2 continuous codes (Config defaults);
    # the optimisation stays the dataset's.
    defaults = dict(GAN.defaults)

    @classmethod
    def defaults_for(cls, num_modes, toy):
        return dict(super().defaults_for(num_modes, toy), categories=num_modes if toy else 10)

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        if config.feature_matching:
            from ..config import ConfigError   # here: gmgan.config imports this package

            raise ConfigError("infogan's generator loss carries the mutual-information term; "
                              "feature matching would replace it (drop --feature-matching)")

    @property
    def d_out(self) -> int:
        return 1 + self.config.categories + self.config.continuous_codes

    def make_prior(self):
        config = self.config
        return InfoGANPrior(config.z_dim, config.categories, config.continuous_codes, config.latent)

    def _outputs(self, D, batch):
        """(GAN logit (n, 1), Q's class logits (n, categories), Q's code means (n, continuous))."""
        output, _ = super().discriminate(D, batch)
        return output.split([1, self.config.categories, self.config.continuous_codes], 1)

    def discriminate(self, D, batch):
        """The GAN logit and D's features (what a gradient penalty reads through critic_score)."""
        output, features = super().discriminate(D, batch)
        return output[:, :1], features

    def category_logits(self, D, x: torch.Tensor) -> torch.Tensor:
        """Q's class logits of samples x (unconditional D): what clustering takes the argmax of."""
        return self._outputs(D, Batch(x))[1]

    def information_loss(self, class_logits, code_means, fake) -> torch.Tensor:
        """L_I of the module docstring for the fakes' codes (read back from their latents)."""
        category, continuous = self.codes(fake.latent)
        loss = F.cross_entropy(class_logits, category)
        if continuous.shape[1]:
            loss = loss + 0.5 * (continuous - code_means).pow(2).sum(1).mean()
        return loss

    def codes(self, latent):
        """(categorical code (n,), continuous codes (n, continuous_codes)) of InfoGANPrior latents."""
        if latent is None:
            raise ValueError("infogan needs the fakes' latents (Batch.latent) to score its codes")
        noise_dim = self.config.z_dim
        categories = self.config.categories
        return latent[:, noise_dim:noise_dim + categories].argmax(1), latent[:, noise_dim + categories:]

    def discriminator_loss(self, D, real, fake):
        real_logit, _ = self.discriminate(D, real)
        fake_logit, class_logits, code_means = self._outputs(D, fake)
        gan = F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()
        return gan + self.config.info_weight * self.information_loss(class_logits, code_means, fake)

    def generator_loss(self, D, fake):
        fake_logit, class_logits, code_means = self._outputs(D, fake)
        if self.config.gan_loss == "minimax":
            gan = -F.softplus(fake_logit).mean()
        else:
            gan = F.softplus(-fake_logit).mean()
        return gan + self.config.info_weight * self.information_loss(class_logits, code_means, fake)
