"""mixture_log_likelihood: the fused kernels against the reference, the plain matmul formula,
torch.compile of both and pykeops' LogSumExp reduction (when importable), side by side.

Two cases, forward and forward + backward:
- Parzen windows (B=4096 test points, C=10000 samples, d=784, isotropic, uniform weights). The
  eager reference builds a B x C x d tensor (128 GB here; torch.compile of it runs the forward
  only), so at this size the baseline is the plain matmul formula (||x||^2 - 2 x mu^T + ||mu||^2, then logsumexp: what torch.cdist-style code
  does); a "matmul" variant times the bare x @ means^T of the same shape, and ``flops`` is the
  2 B C d of that product, so every row's gflop_per_s can be read as a fraction of the measured
  matrix-product rate. The fused kernels hold O((B + C) d + B x 1024) memory (never B x C);
  the plain formula holds several B x C float32 tensors (164 MB each at this size).
- MD-GAN's simplex head (B=65536 embeddings, d=9, C=10, var 0.25).
"""
from __future__ import annotations

import math

import torch

import gmkernels
from gmkernels.reference.mixture_log_likelihood import mixture_log_likelihood as reference

from bench.common import Case, Variant

PARZEN = (4096, 10000, 784)
PARZEN_QUICK = (128, 512, 32)
SIMPLEX = (65536, 9)
SIMPLEX_QUICK = (8192, 9)
# The reference materialises B x C x d; above this many elements it is left out.
REFERENCE_MAX_ELEMENTS = 1 << 26


def plain_formula(x, means, var, log_weights):
    """What a PyTorch user writes for speed: squared distances from a matrix product, then
    logsumexp (isotropic var, a float)."""
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means * means).sum(1)
    log_norm = 0.5 * x.shape[1] * math.log(2 * math.pi * var)
    return torch.logsumexp(log_weights - 0.5 * squared / var - log_norm, 1)


def keops_formula():
    """pykeops' LogSumExp reduction of the same mixture, or None when pykeops is missing."""
    try:
        from pykeops.torch import LazyTensor
    except ImportError:
        return None

    def run(x, means, var, log_weights):
        squared = ((LazyTensor(x[:, None, :]) - LazyTensor(means[None, :, :])) ** 2).sum(-1)
        exponent = LazyTensor(log_weights[None, :, None]) - squared / (2 * var)
        log_norm = 0.5 * x.shape[1] * math.log(2 * math.pi * var)
        return exponent.logsumexp(dim=1).view(-1) - log_norm

    return run


def _variants(inputs, var, grad_inputs, backends, device):
    """One Variant per implementation; with grad_inputs, each run is forward + backward of
    sum(log-likelihood) into those inputs."""
    x, means, log_weights = inputs

    def step(fn):
        def run():
            if not grad_inputs:
                with torch.no_grad():
                    return fn()
            out = fn()
            torch.autograd.grad(out.sum(), grad_inputs)
            return out
        return run

    out = []
    for name in backends:
        if name in ("cuda", "cpp", "triton") and name in gmkernels.ops.mixture_log_likelihood.IMPLEMENTED:
            if (name == "cpp") != (device.type == "cpu") or (name == "triton" and device.type != "cuda"):
                continue

            def fused(name=name):
                with gmkernels.use_backend(name):
                    return gmkernels.mixture_log_likelihood(x, means, var, log_weights)
            out.append(Variant(f"gmkernels[{name}]", step(fused)))
    var_tensor = torch.full((means.shape[0],), var, dtype=x.dtype, device=device)
    small = x.shape[0] * means.shape[0] * x.shape[1] <= REFERENCE_MAX_ELEMENTS
    if small:
        out.append(Variant("reference eager", step(lambda: reference(x, means, var_tensor, log_weights))))
    if small or not grad_inputs:
        # Inductor fuses the reference's forward into one loop nest (no B x C x d tensor), so it
        # runs at full size; its backward would materialise B x C x d.
        compiled_reference = torch.compile(reference)
        out.append(Variant("reference compile",
                           step(lambda: compiled_reference(x, means, var_tensor, log_weights))))
    compiled_plain = torch.compile(plain_formula)
    out += [
        Variant("plain eager", step(lambda: plain_formula(x, means, var, log_weights))),
        Variant("plain compile", step(lambda: compiled_plain(x, means, var, log_weights))),
    ]
    keops = keops_formula()
    if keops is not None:
        out.append(Variant("pykeops LogSumExp", step(lambda: keops(x, means, var, log_weights))))
    if not grad_inputs:
        detached = x.detach(), means.detach()
        out.append(Variant("matmul x @ means^T", lambda: detached[0] @ detached[1].T))
    return out


def _cases(label, x, means, var, targets, backends, device, baseline):
    num_rows, dim = x.shape
    num_components = means.shape[0]
    size = f"{label} B={num_rows} C={num_components} d={dim}"
    log_weights = torch.full((num_components,), -math.log(num_components), device=device)
    result = []
    for mode, grad_names in (("forward", ()), ("forward+backward x", ("x",)),
                             ("forward+backward x,means", ("x", "means"))):
        if label == "simplex" and "means" in grad_names:
            continue   # the simplex's means are fixed vertices
        x_run = x.detach().requires_grad_("x" in grad_names)
        means_run = means.detach().requires_grad_("means" in grad_names)
        grad_inputs = tuple(t for t in (x_run, means_run) if t.requires_grad)
        result.append(Case(
            op="mixture_log_likelihood", size=size, mode=mode,
            variants=_variants((x_run, means_run, log_weights), var, grad_inputs, backends, device),
            flops=2.0 * num_rows * num_components * dim,
            baseline=baseline,
            targets={name: target for name, target in targets.get(mode, {}).items()},
        ))
    return result


def cases(quick: bool, backends: tuple) -> list:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    result = []

    num_rows, num_components, dim = PARZEN_QUICK if quick else PARZEN
    # MNIST-like data in [0, 1] and the bandwidth the published grid picks there (sigma ~ 0.2).
    test = torch.rand(num_rows, dim, generator=gen).to(device)
    samples = torch.rand(num_components, dim, generator=gen).to(device)
    kernels = {f"gmkernels[{name}]": 2.0 for name in ("cpp", "cuda", "triton")}
    # At full size the reference cannot run (B x C x d); the plain matmul formula is the baseline.
    parzen_baseline = "reference eager" if num_rows * num_components * dim <= REFERENCE_MAX_ELEMENTS \
        else "plain eager"
    result += _cases("parzen", test, samples, 0.04,
                     {"forward": kernels, "forward+backward x": kernels, "forward+backward x,means": kernels},
                     backends, device, parzen_baseline)

    num_rows, dim = SIMPLEX_QUICK if quick else SIMPLEX
    embeddings = (torch.rand(num_rows, dim, generator=gen) * 5 - 2.5).to(device)
    vertices = gmkernels.simplex_vertices(dim, dtype=torch.float32, device=device)
    simplex_targets = {f"gmkernels[{name}]": 3.0 for name in ("cpp", "cuda", "triton")}
    result += _cases("simplex", embeddings, vertices, 0.25, {"forward+backward x": simplex_targets},
                     backends, device, "reference eager")
    return result
