"""mixture_sample: fused sampling vs the reference and the plain PyTorch formula
(mu[c] + sigma[c] * torch.randn, or mu[c] + tril(A)[c] @ torch.randn), eager and torch.compile,
forward and forward + backward, on the CPU and (when present) on the GPU.

Forward bandwidth counts the bytes a forward must move: z written once, the component ids, mu
and the scale read once (eps is never stored). Targets (issue 3): forward + backward at least 5x
the eager reference and faster than torch.compile of it (the peer).
"""
from __future__ import annotations

import torch

import gmkernels
from gmkernels.ops.mixture_sample import IMPLEMENTED, draw_seed, mixture_sample_with_seed
from gmkernels.reference import mixture_sample as reference

from bench.common import Case, Contender, bench_devices, kernel_backends

# (N, K, n, full). The case is N=100 K=512 n=65536 (diagonal). The full-scale case is
# sized so that the reference, which gathers an (n, K, K) factor, fits in memory.
SIZES = [(10, 64, 8192, False), (100, 512, 8192, False), (100, 512, 65536, False), (10, 64, 16384, True)]
QUICK_SIZES = [(100, 512, 8192, False), (4, 16, 2048, True)]
SMOKE_SIZES = [(4, 16, 64, False), (4, 16, 64, True)]


def plain_formula(mu, scale, component):
    """What a user writes without gmkernels: gather, draw and keep eps, scatter back."""
    eps = torch.randn(component.shape[0], mu.shape[1], device=mu.device, dtype=mu.dtype)
    if scale.dim() == 2:
        return mu[component] + scale[component] * eps
    return mu[component] + (torch.tril(scale)[component] @ eps.unsqueeze(-1)).squeeze(-1)


def forward_bytes(mu, scale, component) -> int:
    """z written once; component, mu and scale read once."""
    itemsize = mu.element_size()
    return (itemsize * (component.shape[0] * mu.shape[1] + mu.numel() + scale.numel())
            + component.element_size() * component.shape[0])


def _contenders(mu, scale, component, seed, backward, fused_backends):
    grad_z = torch.randn(component.shape[0], mu.shape[1], device=mu.device, dtype=mu.dtype)

    def step(fn):
        def run():
            z = fn()
            if backward:
                z.backward(grad_z)
            return z
        return run

    out = []
    for name in fused_backends:
        def fused(name=name):
            with gmkernels.use_backend(name):
                return mixture_sample_with_seed(mu, scale, component, seed)
        out.append(Contender(f"gmkernels[{name}]", step(fused)))
    compiled_reference = torch.compile(reference.mixture_sample)
    compiled_plain = torch.compile(plain_formula)
    out += [
        Contender("reference eager", step(lambda: reference.mixture_sample(mu, scale, component, seed))),
        Contender("reference compile", step(lambda: compiled_reference(mu, scale, component, seed))),
        Contender("plain eager", step(lambda: plain_formula(mu, scale, component))),
        Contender("plain compile", step(lambda: compiled_plain(mu, scale, component))),
    ]
    return out


def cases(kind: str, backends: tuple) -> list:
    sizes = {"full": SIZES, "quick": QUICK_SIZES, "smoke": SMOKE_SIZES}[kind]
    result = []
    for device in bench_devices():
        fused_backends = kernel_backends(backends, device, IMPLEMENTED)
        fused_names = [f"gmkernels[{name}]" for name in fused_backends]
        for num_components, dim, n, full in sizes:
            mu = torch.randn(num_components, dim, device=device, requires_grad=True)
            if full:
                scale = torch.randn(num_components, dim, dim, device=device) / dim**0.5
            else:
                scale = torch.rand(num_components, dim, device=device) + 0.1
            scale.requires_grad_()
            component = torch.randint(num_components, (n,), device=device)
            seed = draw_seed()
            size = f"N={num_components} K={dim} n={n}" + (" full" if full else "")
            for backward in (False, True):
                result.append(Case(
                    op="mixture_sample", size=size,
                    mode="forward+backward" if backward else "forward",
                    contenders=_contenders(mu, scale, component, seed, backward, fused_backends),
                    bytes_moved=None if backward else forward_bytes(mu, scale, component),
                    targets={name: 5.0 for name in fused_names} if backward else {},
                    peer_targets={name: 1.0 for name in fused_names} if backward else {},
                    device=device.type,
                ))
    return result
