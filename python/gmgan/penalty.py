"""Gradient penalties on the discriminator, an option of every variant (``gp_weight`` > 0).

``wgan-gp`` (Gulrajani et al. 2017): E (||grad_x D(x_hat)|| - 1)^2 at x_hat = a x + (1 - a) G(z),
a ~ U(0, 1) per sample; the ``wgan-gp`` variant is WGAN's critic with this penalty (weight 10) in
place of clipping. ``r1`` (Mescheder et al. 2018): (1/2) E ||grad_x D(x)||^2 on real data, so
``gp_weight`` is the paper's gamma. D(x) is the variant's scalar judgement of a sample
(``Variant.critic_score``: GAN's logit, WGAN's score, MD-GAN's simplex log-likelihood of the
embedding, the supervised GM-GAN's logit of the sample's class).

The penalty's gradient with respect to D's parameters is a second derivative through D: through
``gmkernels.minibatch_discrimination`` with ``--minibatch-discrimination`` and through
``gmkernels.mixture_log_likelihood`` with MD-GAN's head. A minibatch-discrimination D judges a
sample by its whole batch, so the gradient of the summed scores is the penalty's gradient there
too (as in every WGAN-GP implementation).
"""
from __future__ import annotations

import torch
from torch import nn

from .variants import Batch, Variant

KINDS = ("wgan-gp", "r1")


def gradient_penalty(variant: Variant, D: nn.Module, real: Batch, fake: Batch, kind: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The penalty of ``kind`` (module docstring), differentiable with respect to D's parameters.
    ``generator`` draws WGAN-GP's mixing weights."""
    if kind == "wgan-gp":
        shape = (real.x.shape[0],) + (1,) * (real.x.dim() - 1)
        mix = torch.rand(shape, generator=generator, device=real.x.device, dtype=real.x.dtype)
        points = mix * real.x.detach() + (1 - mix) * fake.x.detach()
    elif kind == "r1":
        points = real.x.detach()
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    points.requires_grad_(True)
    # A mixed point takes the real one's condition (a conditional D needs one label).
    score = variant.critic_score(D, Batch(points, real.labels))
    (gradient,) = torch.autograd.grad(score.sum(), points, create_graph=True)
    if kind == "r1":
        return 0.5 * gradient.flatten(1).pow(2).sum(1).mean()
    return ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()
