"""f-GAN (Nowozin et al. 2016): GAN training of any f-divergence through its variational bound.

D_f(P || Q) = E_q[f(p/q)] >= sup_T E_p[T(x)] - E_q[f*(T(x))], with equality at T = f'(p/q).
D's raw output v is mapped into the domain of the conjugate f* by the output activation g_f,
T = g_f(v) (the paper's Table 2 / 6):

    divergence   f(u)                                g_f(v)                    f*(t)
    kl           u log u                             v                         exp(t - 1)
    reverse-kl   -log u                              -exp(-v)                  -1 - log(-t)
    pearson      (u - 1)^2                           v                         t^2 / 4 + t
    hellinger    (sqrt(u) - 1)^2                     1 - exp(-v)               t / (1 - t)
    js           -(u + 1) log((1 + u) / 2) + u log u log 2 - log(1 + exp(-v))  -log(2 - exp(t))
    gan          u log u - (u + 1) log(u + 1)        -log(1 + exp(-v))         -log(1 - exp(t))

(``js`` is the paper's f, whose D_f is twice the Jensen-Shannon divergence; ``gan`` is 2 JSD -
log 4, the original GAN's objective. Their activations and conjugates differ by constants only,
so ``js`` and ``gan`` train identically, losses shifted by 2 log 2 for D and log 2 for G.) The losses evaluate f*(g_f(v)) in a closed form of v
(``conjugate_of_activation``, e.g. softplus(v) for gan) that stays finite where composing the two
functions in floating point would not.

D minimises -(E_p[g_f(v)] - E_q[f*(g_f(v))]). G takes the single step the paper recommends
(its Section 3.2): it maximises E_q[g_f(v)], i.e. minimises -E_q[g_f(v)] (``gan_loss
nonsaturating``, the default: for ``gan`` this is the non-saturating GAN loss softplus(-v));
``gan_loss minimax`` minimises the bound itself, -E_q[f*(g_f(v))].
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .base import Variant, register

_LOG2 = math.log(2.0)


class Divergence(NamedTuple):
    activation: Callable                 # g_f(v): D's output into the conjugate's domain
    conjugate: Callable                  # f*(t)
    conjugate_of_activation: Callable    # f*(g_f(v)), written stably in v


DIVERGENCES = {
    "kl": Divergence(lambda v: v, lambda t: torch.exp(t - 1), lambda v: torch.exp(v - 1)),
    "reverse-kl": Divergence(lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t), lambda v: v - 1),
    "pearson": Divergence(lambda v: v, lambda t: t * t / 4 + t, lambda v: v * v / 4 + v),
    "hellinger": Divergence(lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t), lambda v: torch.expm1(v)),
    "js": Divergence(lambda v: _LOG2 - F.softplus(-v), lambda t: -torch.log(2 - torch.exp(t)),
                     lambda v: F.softplus(v) - _LOG2),
    "gan": Divergence(lambda v: -F.softplus(-v), lambda t: -torch.log(-torch.expm1(t)), lambda v: F.softplus(v)),
}


def variational_bound(divergence: str, real_output: torch.Tensor, fake_output: torch.Tensor) -> torch.Tensor:
    """E_p[g_f(v)] - E_q[f*(g_f(v))] over D's outputs v on real and generated samples."""
    chosen = DIVERGENCES[divergence]
    return chosen.activation(real_output).mean() - chosen.conjugate_of_activation(fake_output).mean()


@register
class FGAN(Variant):
    name = "fgan"

    def discriminator_loss(self, D, real, fake):
        real_output, _ = self.discriminate(D, real)
        fake_output, _ = self.discriminate(D, fake)
        return -variational_bound(self.config.divergence, real_output, fake_output)

    def generator_loss(self, D, fake):
        fake_output, _ = self.discriminate(D, fake)
        chosen = DIVERGENCES[self.config.divergence]
        if self.config.gan_loss == "minimax":
            return -chosen.conjugate_of_activation(fake_output).mean()
        return -chosen.activation(fake_output).mean()
