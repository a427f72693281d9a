"""mixture_log_likelihood: the fused kernels against the reference, the plain matmul formula,
torch.compile of both and pykeops' LogSumExp reduction (when importable), side by side, forward
and forward + backward (into x, and into x and the means).

- Parzen windows (B=4096 test points, C=10000 samples, d=784, isotropic, uniform weights,
  sigma = 0.2 on data in [0, 1], the bandwidth the published grid picks there). The eager
  reference builds a B x C x d tensor (128 GB here) and torch.compile of it runs only the
  forward (its backward would materialise that tensor), so at this size the baseline is the plain
  matmul formula (||x||^2 - 2 x mu^T + ||mu||^2, then logsumexp: what torch.cdist-style code
  does) and its compiled form the peer. ``flops`` is the 2 B C d of the distance product and
  ``matmul_shape`` (B, d, C) makes the run time a plain fp32 matmul of that shape, so each row
  reports its fraction of the measured same-shape matmul rate (target: >= 60% forward). The
  fused kernels hold O((B + C) d) plus one B x 1024 tile, never B x C; the plain formula holds
  several B x C float32 tensors (164 MB each here): see the rows' peak memory.
- MD-GAN's simplex head (B=65536 embeddings, d=9, C=10, var 0.25): the direct kernel.
"""
from __future__ import annotations

import math

import torch

import gmkernels
from gmkernels.ops.mixture_log_likelihood import IMPLEMENTED
from gmkernels.reference.mixture_log_likelihood import mixture_log_likelihood as reference

from bench.common import (Case, Contender, bench_devices, fits_memory, kernel_backends, pykeops_contenders,
                          pykeops_lazy_tensor, too_big, CompiledPeers)

# Size grids (the last full size of each is the issue's).
PARZEN = {"full": [(512, 2000, 784), (4096, 10000, 784)], "quick": [(128, 512, 32)], "smoke": [(16, 80, 8)]}
SIMPLEX = {"full": [(8192, 9), (65536, 9)], "quick": [(8192, 9)], "smoke": [(64, 9)]}
PARZEN_VAR, SIMPLEX_VAR = 0.04, 0.25
# The eager reference materialises B x C x d; above this many elements it is left out.
REFERENCE_MAX_ELEMENTS = 1 << 26
MODES = (("forward", ()), ("forward+backward x", ("x",)), ("forward+backward x,means", ("x", "means")))


def plain_formula(x, means, var, log_weights):
    """What a PyTorch user writes for speed: squared distances from a matrix product, then
    logsumexp (isotropic var, a float)."""
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means * means).sum(1)
    log_norm = 0.5 * x.shape[1] * math.log(2 * math.pi * var)
    return torch.logsumexp(log_weights - 0.5 * squared / var - log_norm, 1)


def keops_formula(lazy_tensor, x, means, var, log_weights):
    """pykeops' LogSumExp reduction of the same mixture."""
    squared = ((lazy_tensor(x[:, None, :]) - lazy_tensor(means[None, :, :])) ** 2).sum(-1)
    exponent = lazy_tensor(log_weights[None, :, None]) - squared / (2 * var)
    return exponent.logsumexp(dim=1).view(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi * var)


def _timed_call(fn, grad_inputs):
    """fn() under no_grad, or with grad_inputs forward + backward of sum(fn()) into them."""
    def run():
        if not grad_inputs:
            with torch.no_grad():
                return fn()
        out = fn()
        torch.autograd.grad(out.sum(), grad_inputs)
        return out
    return run


def _contenders(x, means, var, log_weights, grad_inputs, fused_backends):
    """One Contender per implementation; with grad_inputs each call is forward + backward of
    sum(log-likelihood) into those inputs."""
    def step(fn):
        return _timed_call(fn, grad_inputs)

    out = []
    for name in fused_backends:
        def fused(name=name):
            with gmkernels.use_backend(name):
                return gmkernels.mixture_log_likelihood(x, means, var, log_weights)
        out.append(Contender(f"gmkernels[{name}]", step(fused)))
    var_tensor = torch.full((means.shape[0],), var, dtype=x.dtype, device=x.device)
    small = x.shape[0] * means.shape[0] * x.shape[1] <= REFERENCE_MAX_ELEMENTS
    if small:
        out.append(Contender("reference eager", step(lambda: reference(x, means, var_tensor, log_weights))))
    if small or not grad_inputs:
        # Inductor fuses the reference's forward into one loop nest (no B x C x d tensor), so it
        # runs at full size; its backward would materialise B x C x d.
        compiled_reference = torch.compile(reference)
        out.append(Contender("reference compile",
                           step(lambda: compiled_reference(x, means, var_tensor, log_weights))))
    compiled_plain = torch.compile(plain_formula)
    out += [
        Contender("plain eager", step(lambda: plain_formula(x, means, var, log_weights))),
        Contender("plain compile", step(lambda: compiled_plain(x, means, var, log_weights))),
    ]
    out += pykeops_contenders(lambda lazy: step(lambda: keops_formula(lazy, x, means, var, log_weights)))
    return out


def _cases(label, x, means, var, fused_backends, mode_targets, backward_note=""):
    """The cases of one input set, one per mode in mode_targets, which maps the mode to the
    minimum speed-up of every fused backend over the baseline (None: no target)."""
    num_rows, dim = x.shape
    num_components = means.shape[0]
    log_weights = torch.full((num_components,), -math.log(num_components), device=x.device)
    small = num_rows * num_components * dim <= REFERENCE_MAX_ELEMENTS
    baseline = "reference eager" if small else "plain eager"
    peer = "reference compile" if small else "plain compile"
    fused_names = [f"gmkernels[{name}]" for name in fused_backends]
    result = []
    for mode, grad_names in MODES:
        if mode not in mode_targets:
            continue
        x_run = x.detach().requires_grad_("x" in grad_names)
        means_run = means.detach().requires_grad_("means" in grad_names)
        grad_inputs = tuple(t for t in (x_run, means_run) if t.requires_grad)
        target = mode_targets.get(mode)
        result.append(Case(
            op="mixture_log_likelihood", size=f"{label} B={num_rows} C={num_components} d={dim}",
            mode=mode,
            contenders=_contenders(x_run, means_run, var, log_weights, grad_inputs, fused_backends),
            flops=2.0 * num_rows * num_components * dim,
            matmul_shape=(num_rows, dim, num_components),
            baseline=baseline, peer=peer,
            targets={name: target for name in fused_names} if target else {},
            peer_targets={name: 1.0 for name in fused_names},
            note=backward_note if grad_names else "", device=x.device.type,
        ))
    return result


def cases(kind: str, backends: tuple) -> list:
    result = []
    for device in bench_devices():
        fused_backends = kernel_backends(backends, device, IMPLEMENTED)
        gen = torch.Generator().manual_seed(0)
        for num_rows, num_components, dim in PARZEN[kind]:
            test = torch.rand(num_rows, dim, generator=gen).to(device)
            samples = torch.rand(num_components, dim, generator=gen).to(device)
            # Quick runs keep one case per kernel path and direction (each compiling contender
            # costs seconds of compile time).
            parzen_targets = {"forward": 2.0, "forward+backward x,means": 2.0}
            if kind == "full":
                parzen_targets["forward+backward x"] = 2.0
            result += _cases(
                "parzen", test, samples, PARZEN_VAR, fused_backends, parzen_targets,
                backward_note="the fused backward recomputes each tile's product (FlashAttention-style, "
                              "no B x C buffer) where the compiled plain formula keeps its B x C matrix: "
                              "one product more; the tiled products also wait more on a shared core")
        for num_rows, dim in SIMPLEX[kind]:
            embeddings = (torch.rand(num_rows, dim, generator=gen) * 5 - 2.5).to(device)
            vertices = gmkernels.simplex_vertices(dim, dtype=torch.float32, device=device)
            # The simplex's means are fixed vertices: no gradient into them.
            simplex_targets = {"forward+backward x": 3.0}
            if kind == "full":
                simplex_targets["forward"] = None
            result += _cases("simplex", embeddings, vertices, SIMPLEX_VAR, fused_backends, simplex_targets)
    return result


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------
# Peers are what a user writes for the log-likelihood of a Gaussian mixture: squared distances by
# torch.cdist, by the matrix-product expansion, or by broadcasting, then logsumexp; eager and
# under torch.compile. The reference is context only.

def _log_weights_or_uniform(log_weights, num_components, like):
    return like.new_full((num_components,), -math.log(num_components)) if log_weights is None else log_weights


def _log_normal(squared, var, dim, log_weights):
    """logsumexp_c(log w_c - squared / (2 var_c) - log normaliser) for scalar or (C,) var."""
    log_norm = 0.5 * dim * torch.log(2 * math.pi * torch.as_tensor(var, dtype=squared.dtype))
    return torch.logsumexp(log_weights - 0.5 * squared / var - log_norm, 1)


def matmul_formula(x, means, var, log_weights=None):
    """||x||^2 - 2 x mu^T + ||mu||^2 (each term over var for a (C, d) var), then logsumexp."""
    log_weights = _log_weights_or_uniform(log_weights, means.shape[0], x)
    if isinstance(var, torch.Tensor) and var.dim() == 2:
        inverse = 1 / var
        squared = (x * x) @ inverse.T - 2 * x @ (means * inverse).T + (means * means * inverse).sum(1)
        log_norm = 0.5 * (x.shape[1] * math.log(2 * math.pi) + torch.log(var).sum(1))
        return torch.logsumexp(log_weights - 0.5 * squared - log_norm, 1)
    squared = (x * x).sum(1, keepdim=True) - 2 * x @ means.T + (means * means).sum(1)
    return _log_normal(squared, var, x.shape[1], log_weights)


def cdist_formula(x, means, var, log_weights=None):
    """torch.cdist, squared, then logsumexp (scalar or (C,) var)."""
    log_weights = _log_weights_or_uniform(log_weights, means.shape[0], x)
    return _log_normal(torch.cdist(x, means).square(), var, x.shape[1], log_weights)


def broadcast_formula(x, means, var, log_weights=None):
    """The B x C x d difference, squared and summed (over var for a (C, d) var), then logsumexp."""
    log_weights = _log_weights_or_uniform(log_weights, means.shape[0], x)
    difference = x[:, None, :] - means[None, :, :]
    if isinstance(var, torch.Tensor) and var.dim() == 2:
        squared = (difference.square() / var).sum(-1)
        log_norm = 0.5 * (x.shape[1] * math.log(2 * math.pi) + torch.log(var).sum(1))
        return torch.logsumexp(log_weights - 0.5 * squared - log_norm, 1)
    return _log_normal(difference.square().sum(-1), var, x.shape[1], log_weights)


# (d, [(B, C), ...]) of the full grid, scalar var, uniform weights: B*C from 1e5 to 1e8, square
# shapes (Parzen windows) and few components (C = 10, MD-GAN's simplex head), the matmul work
# 2 B C d kept under about 2e10 per call so the grid fits its time budget; the measured
# rows (B=2048 C=20000 d=256, B=8192 C=5000 d=64) included.
SWEEP_GRID = {
    "full": [
        (2, [(316, 316), (3162, 3162), (100000, 10)]),
        (9, [(1000, 1000), (10000, 10), (1000000, 10), (3000000, 10)]),
        (16, [(316, 316), (1000, 1000), (3162, 3162), (10000, 10000), (100000, 10)]),
        (64, [(316, 316), (1000, 1000), (3162, 3162), (10000, 10000), (8192, 5000)]),
        (128, [(316, 316), (3162, 3162)]),
        (256, [(1000, 1000), (3162, 3162), (2048, 20000)]),
        (784, [(316, 316), (1000, 1000), (3162, 3162)]),
        (2048, [(316, 316), (1000, 1000), (1000, 3162)]),
    ],
    "quick": [(9, [(10000, 10)]), (64, [(1000, 1000)]), (784, [(316, 316)])],
    "smoke": [(3, [(16, 20)])],
}
# Gradients into x alone at these dimensions (and the rows); into x and the means at all.
X_ONLY_DIMS = (9, 64, 256, 784)
# Variance kinds and log_weights at a few shapes: (d, B, C) per kind.
SWEEP_VARIANTS = {
    "full": [(9, 100000, 10), (64, 1000, 1000)],
    "quick": [(64, 1000, 1000)],
    "smoke": [(3, 16, 20)],
}
# The quick sweep keeps the (C, d) variance with log_weights, the farthest from the main grid.
QUICK_VARIANTS = (("(C,d)", True),)
VARIANTS = (("scalar", False), ("scalar", True), ("(C,)", True), ("(C,d)", True))
# Broadcasting is what a user writes for a few dimensions (and torch.compile turns into one loop
# nest); from d = 64 it does d times the work of the matmul expansion through B x C x d memory
# (measured 5-20x slower than the matmul peers at d = 64 and 784), so it is not run there.
BROADCAST_MAX_DIM = 16
# The eager reference (context only) runs up to this many B x C x d elements.
SWEEP_REFERENCE_MAX_ELEMENTS = 1 << 22


def _sweep_var(kind, num_components, dim, gen, device):
    if kind == "scalar":
        return PARZEN_VAR
    shape = (num_components,) if kind == "(C,)" else (num_components, dim)
    return (PARZEN_VAR * (1 + torch.rand(shape, generator=gen))).to(device)


def _sweep_case(num_rows, num_components, dim, var_kind, with_log_weights, mode, grad_names, backends,
                device, compiled, seed):
    """One grid point in one mode; the inputs are made when the case runs."""
    element = 4
    reference_fits = num_rows * num_components * dim <= SWEEP_REFERENCE_MAX_ELEMENTS
    # The broadcast peer's B x C x d difference (and its square / its gradient in a backward).
    broadcast_bytes = element * num_rows * num_components * dim * (2 if not grad_names else 4)
    backward = bool(grad_names)
    variant = (var_kind, with_log_weights, mode)
    peers = ["matmul eager", "matmul compile"]
    if var_kind != "(C,d)":
        peers.insert(0, "cdist eager")
    skipped = []
    if dim <= BROADCAST_MAX_DIM:
        if fits_memory(broadcast_bytes):
            peers.append("broadcast eager")
        else:
            skipped.append(too_big("broadcast eager", broadcast_bytes))
        # Inductor fuses the forward into one loop nest; its backward keeps B x C x d.
        if not backward or fits_memory(broadcast_bytes):
            peers.append("broadcast compile")
        else:
            skipped.append(too_big("broadcast compile", broadcast_bytes))
    if pykeops_lazy_tensor() is not None and var_kind == "scalar":
        peers.append("pykeops")

    def build():
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(num_rows, dim, generator=gen).to(device).requires_grad_("x" in grad_names)
        means = torch.rand(num_components, dim, generator=gen).to(device).requires_grad_("means" in grad_names)
        var = _sweep_var(var_kind, num_components, dim, gen, device)
        log_weights = torch.log_softmax(torch.randn(num_components, generator=gen), 0).to(device) \
            if with_log_weights else None
        grad_inputs = tuple(t for t in (x, means) if t.requires_grad)

        def step(fn):
            return _timed_call(fn, grad_inputs)

        out = []
        for name in kernel_backends(backends, torch.device(device), IMPLEMENTED):
            def fused(name=name):
                with gmkernels.use_backend(name):
                    return gmkernels.mixture_log_likelihood(x, means, var, log_weights)
            out.append(Contender(f"gmkernels[{name}]", step(fused)))
        formulas = {"cdist": cdist_formula, "matmul": matmul_formula, "broadcast": broadcast_formula}
        for name in peers:
            formula, _, how = name.partition(" ")
            if name == "pykeops":
                continue
            function = formulas[formula] if how == "eager" else compiled(formulas[formula], variant)
            out.append(Contender(name, step(lambda function=function: function(x, means, var, log_weights))))
        if "pykeops" in peers:
            out += pykeops_contenders(lambda lazy: step(lambda: keops_formula(
                lazy, x, means, var, _log_weights_or_uniform(log_weights, num_components, x))))
        if reference_fits:
            var_table = var if isinstance(var, torch.Tensor) else torch.full((num_components,), var, device=device)
            out.append(Contender("reference eager", step(lambda: reference(
                x, means, var_table, _log_weights_or_uniform(log_weights, num_components, x)))))
        return out

    # B x C x d products a call cannot avoid: the forward's inner products (with a (C, d) variance
    # two: x^2 against 1 / var and x against mu / var), the x gradient's (W against mu / var, and
    # with a (C, d) variance also W against 1 / var), the means gradient's (W^T against x).
    diagonal = var_kind == "(C,d)"
    products = {"forward": 1, "forward+backward x": 2, "forward+backward x,means": 3}[mode] \
        + {"forward": 1, "forward+backward x": 2, "forward+backward x,means": 2}[mode] * diagonal
    forward_products = 1 + diagonal   # of shape (B, d, C); the gradients' have C or B inner
    label = f"B={num_rows} C={num_components} d={dim}"
    if (var_kind, with_log_weights) != ("scalar", False):
        label += f" var {var_kind}" + (" log_weights" if with_log_weights else "")
    return Case(
        op="mixture_log_likelihood", size=label, mode=mode, contenders=[], build=build,
        # The least a call must do: each product once (forward; the gradients' products), and one
        # exp per point and component.
        flops=2.0 * products * num_rows * num_components * dim, exps=float(num_rows * num_components),
        matmul_shape=(num_rows, dim, num_components) if dim >= 64 else None,
        shaped_flops=2.0 * forward_products * num_rows * num_components * dim,
        baseline="matmul eager", peer="matmul compile", peers=tuple(peers), skipped=skipped,
        work=float(num_rows * num_components * dim), work_label="B*C*d", device=device)


def sweep_cases(kind: str, backends: tuple) -> list:
    compiled = CompiledPeers()
    result = []
    for device in bench_devices():
        seed = 0
        points = [(B, C, d, "scalar", False) for d, shapes in SWEEP_GRID[kind] for B, C in shapes]
        points += [(B, C, d, var_kind, with_log_weights) for d, B, C in SWEEP_VARIANTS[kind]
                   for var_kind, with_log_weights in (VARIANTS[1:] if kind == "full" else QUICK_VARIANTS)]
        for B, C, d, var_kind, with_log_weights in points:
            for mode, grad_names in MODES:
                if mode == "forward+backward x" and (kind == "quick" or (kind == "full" and d not in X_ONLY_DIMS)):
                    continue   # each mode of each compiled peer costs seconds to compile, each point seconds to run
                seed += 1
                result.append(_sweep_case(B, C, d, var_kind, with_log_weights, mode, grad_names, backends,
                                          device.type, compiled, seed))
    return result
