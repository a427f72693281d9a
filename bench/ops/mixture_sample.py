"""mixture_sample: fused sampling vs the reference and the plain PyTorch formula
(mu[c] + sigma[c] * torch.randn), eager and torch.compile, forward and forward + backward."""
from __future__ import annotations

import torch

import gmkernels
from gmkernels.ops.mixture_sample import draw_seed, mixture_sample_with_seed
from gmkernels.reference import mixture_sample as reference

from bench.common import Case, Variant

SIZES = [(100, 512, 65536), (10, 64, 8192)]
QUICK_SIZES = [(100, 512, 8192)]
SMOKE_SIZES = [(4, 16, 64)]


def plain_formula(mu, sigma, component):
    """What a user writes without gmkernels: gather, draw and keep eps, scatter back."""
    return mu[component] + sigma[component] * torch.randn(component.shape[0], mu.shape[1])


def _variants(mu, sigma, component, seed, backward, backends):
    def step(fn):
        def run():
            z = fn()
            if backward:
                z.backward(grad_z)
            return z
        return run

    grad_z = torch.randn(component.shape[0], mu.shape[1])
    out = []
    for name in backends:
        if name in ("cpp", "triton") and name in gmkernels.ops.mixture_sample.IMPLEMENTED:
            def fused(name=name):
                with gmkernels.use_backend(name):
                    return mixture_sample_with_seed(mu, sigma, component, seed)
            out.append(Variant(f"gmkernels[{name}]", step(fused)))
    compiled_reference = torch.compile(reference.mixture_sample)
    compiled_plain = torch.compile(plain_formula)
    out += [
        Variant("reference eager", step(lambda: reference.mixture_sample(mu, sigma, component, seed))),
        Variant("reference compile", step(lambda: compiled_reference(mu, sigma, component, seed))),
        Variant("plain eager", step(lambda: plain_formula(mu, sigma, component))),
        Variant("plain compile", step(lambda: compiled_plain(mu, sigma, component))),
    ]
    return out


def cases(quick: bool, backends: tuple, smoke: bool = False) -> list:
    result = []
    for num_components, dim, n in SMOKE_SIZES if smoke else QUICK_SIZES if quick else SIZES:
        mu = torch.randn(num_components, dim, requires_grad=True)
        sigma = (torch.rand(num_components, dim) + 0.1).requires_grad_()
        component = torch.randint(num_components, (n,))
        seed = draw_seed()
        size = f"N={num_components} K={dim} n={n}"
        # z written once, mu/sigma read once (component ids read once).
        bytes_forward = 4 * n * dim + 8 * n + 2 * 4 * num_components * dim
        for backward in (False, True):
            result.append(Case(
                op="mixture_sample", size=size,
                mode="forward+backward" if backward else "forward",
                variants=_variants(mu, sigma, component, seed, backward, backends),
                bytes_moved=bytes_forward if not backward else None,
                targets={"gmkernels[cpp]": 5.0} if backward else {},
            ))
    return result
