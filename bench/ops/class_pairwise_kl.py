"""class_pairwise_kl: the fused O(N C) op against the eager pairwise reference (O(N^2 C)), and,
the real target, against the best plain O(N C) formulation (``index_add_`` class means of
log p, then gather and dot) eager and under torch.compile, forward and forward + backward.

The fused forward reads P twice (class means, then the row dot products) and allocates O(min(N, K) C + N);
the plain formulation allocates several N x C temporaries (log p, the gathered class means, the
product), its compiled form one (log p, kept for the second pass). ``bytes_moved`` is the bytes
of P read once, so the reported fraction is of one pass over P at copy bandwidth.
"""
from __future__ import annotations

import torch

import gmkernels
from gmkernels.ops import class_pairwise_kl as op
from gmkernels.reference import class_pairwise_kl as reference

from bench.common import Case, CompiledPeers, Contender, bench_devices, fits_memory, kernel_backends, too_big

EPS = 1e-12
CLASS_MEANS_EAGER = "class-means eager"
CLASS_MEANS_COMPILE = "class-means compile"

# (N, C, forward targets?) per mode; N = 10^6, C = 10: many samples, few classes, where the fused
# op needs O(min(N, K) C + N) extra memory and the plain formulation several N x C temporaries.
SIZES = [(20000, 100, False), (200000, 1000, True), (1000000, 10, False)]
QUICK_SIZES = [(20000, 100, False)]
SMOKE_SIZES = [(64, 5, False)]
PAIRWISE_SIZE = {"full": 20000, "quick": 2000, "smoke": 32}


def _inputs(num_samples, num_categories, device, seed=0):
    """A leaf P on `device` (shared by the forward and the forward + backward cases of one size)
    and its argmax labels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = torch.softmax(3 * torch.randn(num_samples, num_categories, generator=gen), 1).to(device)
    return probs.requires_grad_(), probs.argmax(1)


def _step(fn, probs, backward):
    """One timed call: forward (no autograd graph), or forward + backward of sum(kl)."""
    if not backward:
        def run():
            with torch.no_grad():
                return fn(probs)
        return run

    def run():
        probs.grad = None
        kl = fn(probs)
        kl.sum().backward()
        return kl
    return run


def _fused_contenders(backends, num_classes, labels, probs, backward):
    out = []
    for name in kernel_backends(backends, probs.device, op.IMPLEMENTED):
        def fused(p, name=name):
            with gmkernels.use_backend(name):
                return gmkernels.class_pairwise_kl(p, labels, EPS, num_classes=num_classes)
        out.append(Contender(f"gmkernels[{name}]", _step(fused, probs, backward)))
    return out


def _class_means_case(probs, labels, backends, backward, with_targets):
    """Fused vs the O(N C) eager formulation (the baseline) and its torch.compile (the peer)."""
    num_samples, num_categories = probs.shape
    num_classes = num_categories

    def class_means(p):
        return reference.class_pairwise_kl_by_class_means(p, labels, EPS, num_classes)

    compiled = torch.compile(reference.class_pairwise_kl_by_class_means)
    contenders = _fused_contenders(backends, num_classes, labels, probs, backward) + [
        Contender(CLASS_MEANS_EAGER, _step(class_means, probs, backward)),
        Contender(CLASS_MEANS_COMPILE, _step(lambda p: compiled(p, labels, EPS, num_classes), probs,
                                           backward)),
    ]
    fused = [f"gmkernels[{name}]" for name in ("cpp", "cuda", "triton")]
    return Case(
        op="class_pairwise_kl", size=f"N={num_samples} C={num_categories}",
        mode="forward+backward" if backward else "forward", contenders=contenders,
        bytes_moved=None if backward else probs.numel() * probs.element_size(),
        baseline=CLASS_MEANS_EAGER, peer=CLASS_MEANS_COMPILE,
        targets={name: 3.0 for name in fused} if with_targets else {},
        peer_targets={name: 1.0 for name in fused} if with_targets else {},
        note="" if not backward else
        "the backward recomputes log p (no N x C buffer is kept); the compiled formula keeps one"
        " from its forward and reuses it")


def _pairwise_case(num_samples, num_categories, backends, device):
    """Fused vs the literal pairwise reference (expect orders of magnitude)."""
    probs, labels = _inputs(num_samples, num_categories, device)
    contenders = _fused_contenders(backends, num_categories, labels, probs, False) + [
        Contender("reference eager", _step(lambda p: reference.class_pairwise_kl(p, labels, EPS),
                                         probs, False)),
        Contender(CLASS_MEANS_EAGER, _step(
            lambda p: reference.class_pairwise_kl_by_class_means(p, labels, EPS), probs, False)),
    ]
    return Case(op="class_pairwise_kl", size=f"N={num_samples} C={num_categories} pairwise",
                mode="forward", contenders=contenders,
                bytes_moved=probs.numel() * probs.element_size())


def cases(kind: str, backends: tuple) -> list:
    sizes = {"smoke": SMOKE_SIZES, "quick": QUICK_SIZES, "full": SIZES}[kind]
    result = []
    for device in bench_devices():
        result.append(_pairwise_case(PAIRWISE_SIZE[kind], 10, backends, device))
        for num_samples, num_categories, with_targets in sizes:
            probs, labels = _inputs(num_samples, num_categories, device)
            result += [_class_means_case(probs, labels, backends, False, with_targets),
                       _class_means_case(probs, labels, backends, True, False)]
    return result


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------
# Peers: the pairwise form a user writes first (the N x N matrix of KL divergences from one
# matrix product, masked to same-class pairs), and the O(N C) class-means formulation, eager and
# under torch.compile. The literal pairwise reference is not run (the naive form is its twin).
NAIVE_EAGER, NAIVE_COMPILE = "naive pairwise eager", "naive pairwise compile"
# (N, C): C in {2, 10, 100, 1000, 10000}, N up to 1e6 (the N=200000 C=1000 included).
SWEEP_SIZES = {
    "full": [(10000, 2), (1000000, 2), (1000, 10), (100000, 10), (1000000, 10), (10000, 100),
             (100000, 100), (1000000, 100), (1000, 1000), (200000, 1000), (1000, 10000)],
    "quick": [(1000, 10), (100000, 100)],
    "smoke": [(64, 5)],
}
# The naive form is left out (and listed) above this many FLOPs per call: 2 N^2 C for its product.
NAIVE_MAX_FLOPS = 1e11


def naive_pairwise(probs, labels, eps):
    """KL(p_i || p_j) for every pair, from one matrix product, averaged over same-class j."""
    log_probs = torch.log(torch.clamp(probs, min=eps))
    kl = (probs * log_probs).sum(1, keepdim=True) - probs @ log_probs.T
    same_class = labels[:, None] == labels[None, :]
    return (kl * same_class).sum(1) / same_class.sum(1)


def _sweep_case(num_samples, num_categories, backward, backends, device, compiled, seed):
    naive_bytes = num_samples ** 2 * (4 * 2 + 1) * (2 if backward else 1)   # kl, the product, the mask
    naive_flops = 2.0 * num_samples ** 2 * num_categories * (3 if backward else 1)
    peers = [CLASS_MEANS_EAGER, CLASS_MEANS_COMPILE]
    skipped = []
    for name in (NAIVE_EAGER, NAIVE_COMPILE):
        if not fits_memory(naive_bytes):
            skipped.append(too_big(name, naive_bytes))
        elif naive_flops > NAIVE_MAX_FLOPS:
            skipped.append((name, f"{naive_flops:.1e} FLOPs a call (over the sweep's {NAIVE_MAX_FLOPS:.0e})"))
        else:
            peers.append(name)
    mode = "forward+backward" if backward else "forward"

    def build():
        probs, labels = _inputs(num_samples, num_categories, device, seed)
        out = _fused_contenders(backends, num_categories, labels, probs, backward)
        formulas = {
            CLASS_MEANS_EAGER: lambda p: reference.class_pairwise_kl_by_class_means(p, labels, EPS, num_categories),
            NAIVE_EAGER: lambda p: naive_pairwise(p, labels, EPS)}
        compiled_formulas = {CLASS_MEANS_COMPILE: (reference.class_pairwise_kl_by_class_means,
                                                   lambda f: lambda p: f(p, labels, EPS, num_categories)),
                             NAIVE_COMPILE: (naive_pairwise, lambda f: lambda p: f(p, labels, EPS))}
        for name in peers:
            if name in formulas:
                out.append(Contender(name, _step(formulas[name], probs, backward)))
            else:
                formula, bind = compiled_formulas[name]
                out.append(Contender(name, _step(bind(compiled(formula, mode)), probs, backward)))
        return out

    return Case(
        op="class_pairwise_kl", size=f"N={num_samples} C={num_categories}", mode=mode, contenders=[], build=build,
        # P read once (forward); read again and its gradient written (backward).
        bytes_moved=4.0 * num_samples * num_categories * (3 if backward else 1),
        baseline=CLASS_MEANS_EAGER, peer=CLASS_MEANS_COMPILE, peers=tuple(peers), skipped=skipped,
        work=float(num_samples * num_categories), work_label="N*C", device=device.type)


def sweep_cases(kind: str, backends: tuple) -> list:
    compiled = CompiledPeers()
    result, seed = [], 0
    for device in bench_devices():
        for num_samples, num_categories in SWEEP_SIZES[kind]:
            for backward in (False, True):
                seed += 1
                result.append(_sweep_case(num_samples, num_categories, backward, backends, device, compiled, seed))
    return result
