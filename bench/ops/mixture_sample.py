"""mixture_sample: fused sampling vs the reference and the plain PyTorch formula
(mu[c] + sigma[c] * torch.randn, or mu[c] + tril(A)[c] @ torch.randn), eager and torch.compile,
forward and forward + backward, on the CPU and (when present) on the GPU.

Forward bandwidth counts the bytes a forward must move: z written once, the component ids, mu
and the scale read once (eps is never stored). Targets: forward + backward at least 5x
the eager reference and faster than torch.compile of it (the peer).
"""
from __future__ import annotations

import torch

import gmkernels
from gmkernels.ops.mixture_sample import IMPLEMENTED, draw_seed, mixture_sample_with_seed
from gmkernels.reference import mixture_sample as reference

from bench.common import Case, Contender, bench_devices, fits_memory, kernel_backends, too_big, CompiledPeers

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


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------
# Peers: the plain formula a user writes (mu[c] + sigma[c] * torch.randn(...), or the gathered
# lower-triangular factor times eps), eager and under torch.compile. The upstream gradient of
# z comes dense, or from z.sum() / z.mean() (a stride-0 expanded gradient); the forward is timed
# under no_grad and with inputs that require grad (what a training step's forward costs).
SWEEP_MODES = ("forward", "forward, inputs require grad", "forward+backward dense",
               "forward+backward z.sum()", "forward+backward z.mean()")
# (N, K, n, full): K in {2, 16, 64, 256, 1024}, N in {1, 10, 100, 1000}, n up to 1e6; the
# issue's measured row (N=64 K=256 n=100000, diag) included. The full-covariance points keep n*K*K
# near 1e8 or below: there both peers take seconds a call (gmkernels 50-100x less), and at
# n = 1000 K = 1024 they were a seventh of the whole sweep's time budget.
SWEEP_SIZES = {
    "full": [(1, 2, 1000000, False), (10, 2, 10000, False), (10, 16, 1000, False), (1000, 16, 100000, False),
             (100, 16, 1000000, False), (1000, 64, 1000, False), (100, 64, 100000, False),
             (1, 64, 300000, False), (64, 256, 100000, False), (1000, 256, 10000, False),
             (10, 256, 1000, False), (10, 1024, 10000, False), (1000, 1024, 30000, False),
             (10, 2, 100000, True), (100, 16, 100000, True), (1000, 16, 1000, True), (10, 64, 10000, True),
             (100, 64, 30000, True), (1000, 256, 1000, True), (10, 1024, 100, True)],
    "quick": [(10, 16, 1000, False), (64, 256, 100000, False), (10, 16, 10000, True)],
    "smoke": [(4, 16, 64, False), (4, 16, 64, True)],
}
QUICK_SWEEP_MODES = ("forward", "forward+backward dense", "forward+backward z.sum()")
# The autograd forward and z.mean() (z.sum()'s stride-0 gradient, scaled) only at these points
# of the full grid (n*K >= 1e6, where the targets are), the three modes above at every point.
ALL_MODES_AT = {(1, 2, 1000000, False), (100, 16, 1000000, False), (64, 256, 100000, False),
                (1000, 1024, 30000, False), (100, 64, 30000, True)}
# The eager reference (a pure-PyTorch Philox, context only) runs up to this many z elements.
SWEEP_REFERENCE_MAX = 1 << 21


def _plain_bytes(num_components, dim, n, full, backward):
    """What the plain formula holds: eps, the gathered mu and scale (n x K x K for a full
    factor), z; a backward about doubles it."""
    gathered = n * dim * (dim if full else 1)
    return 4 * (3 * n * dim + gathered) * (2 if backward else 1)


def _sweep_case(num_components, dim, n, full, mode, backends, device, compiled, seed):
    backward = mode.startswith("forward+backward")
    requires_grad = backward or mode == "forward, inputs require grad"
    plain_bytes = _plain_bytes(num_components, dim, n, full, backward)
    peers, skipped = [], []
    for name in ("plain eager", "plain compile"):
        if fits_memory(plain_bytes):
            peers.append(name)
        else:
            skipped.append(too_big(name, plain_bytes))
    structure = (full, requires_grad)

    def build():
        gen = torch.Generator().manual_seed(seed)
        mu = torch.randn(num_components, dim, generator=gen).to(device).requires_grad_(requires_grad)
        if full:
            scale = torch.randn(num_components, dim, dim, generator=gen) / dim ** 0.5
        else:
            scale = torch.rand(num_components, dim, generator=gen) + 0.1
        scale = scale.to(device).requires_grad_(requires_grad)
        component = torch.randint(num_components, (n,), generator=gen).to(device)
        sample_seed = draw_seed(gen)
        grad_z = torch.randn(n, dim, generator=gen).to(device) if mode == "forward+backward dense" else None

        def step(fn):
            def run():
                if not requires_grad:
                    with torch.no_grad():
                        return fn()
                z = fn()
                if mode == "forward+backward dense":
                    z.backward(grad_z)
                elif mode == "forward+backward z.sum()":
                    z.sum().backward()
                elif mode == "forward+backward z.mean()":
                    z.mean().backward()
                return z
            return run

        out = []
        for name in kernel_backends(backends, torch.device(device), IMPLEMENTED):
            def fused(name=name):
                with gmkernels.use_backend(name):
                    return mixture_sample_with_seed(mu, scale, component, sample_seed)
            out.append(Contender(f"gmkernels[{name}]", step(fused)))
        if "plain eager" in peers:
            out.append(Contender("plain eager", step(lambda: plain_formula(mu, scale, component))))
        if "plain compile" in peers:
            function = compiled(plain_formula, structure)
            out.append(Contender("plain compile", step(lambda: function(mu, scale, component))))
        if n * dim * (dim if full else 1) <= SWEEP_REFERENCE_MAX:
            out.append(Contender("reference eager", step(
                lambda: reference.mixture_sample(mu, scale, component, sample_seed))))
        return out

    size = f"N={num_components} K={dim} n={n}" + (" full" if full else " diag")
    matrix = dim * (dim if full else 1)
    return Case(
        op="mixture_sample", size=size, mode=mode, contenders=[], build=build,
        # z written once, the components, mu and scale read once; a backward also reads the
        # upstream gradient (dense) and writes the gradients of mu and scale.
        bytes_moved=4.0 * (n * dim * (2 if mode == "forward+backward dense" else 1)
                           + num_components * (dim + matrix) * (2 if backward else 1)) + 8.0 * n,
        baseline="plain eager", peer="plain compile", peers=tuple(peers), skipped=skipped,
        work=float(n * dim), work_label="n*K", device=device)


def sweep_cases(kind: str, backends: tuple) -> list:
    compiled = CompiledPeers()
    modes = QUICK_SWEEP_MODES if kind == "quick" else SWEEP_MODES
    result = []
    seed = 0
    for device in bench_devices():
        for num_components, dim, n, full in SWEEP_SIZES[kind]:
            point_modes = SWEEP_MODES if kind != "full" or (num_components, dim, n, full) in ALL_MODES_AT \
                else QUICK_SWEEP_MODES
            for mode in (modes if kind == "quick" else point_modes):
                seed += 1
                result.append(_sweep_case(num_components, dim, n, full, mode, backends, device.type, compiled, seed))
    return result
