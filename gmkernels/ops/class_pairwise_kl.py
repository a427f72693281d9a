"""class_pairwise_kl: for each sample, the mean KL divergence to the samples of its class — the
inner quantity of DeLiGAN's modified inception score — in O(N C) time and O(min(N, K) C) extra
memory.

KL(p_i || p_j) = sum_c p_ic (l_ic - l_jc) is linear in l_j = log max(p_j, eps), so its mean over
the n_k samples j of class k is sum_c p_ic (l_ic - Lbar_kc) with Lbar_k the class mean of l:
one per-class mean and one dot product per row, exact for any N. The kernels return Lbar as a
second output, a table of min(max(N, 1), K) rows (row k for class k when K <= N; with more
classes than samples, one row per class present in class order, then zero rows), and each
sample's row in it as a third; both are saved for the backward, which takes the rows as its
labels (csrc/kernels/class_pairwise_kl.h).
"""
from __future__ import annotations

import math

import torch

from ..reference import class_pairwise_kl as reference
from . import _autograd, _checks, _registry


def check_probabilities(probs, name: str = "probs", normalize: bool = False) -> torch.Tensor:
    """Rows of class probabilities: a float32/float64 (N, C) tensor, C >= 1, finite and >= 0, each
    row summing to 1 within 1e-3 (float32) or 1e-5 (float64); with ``normalize``, each row needs
    a positive sum instead. Shared by the op and the metrics (gmkernels.metrics)."""
    probs = _checks.float_tensor(probs, name)
    _checks.ndim(probs, name, 2, "(N, C)")
    if probs.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class (C >= 1), got shape (N, 0)")
    if _checks.checking_values() and probs.shape[0]:
        # One pass and one call on the CPU (_checks.summary): the five torch ops this took before
        # were most of a call at N = 1000, C = 10.
        low, high, _, sum_low, sum_high = _checks.summary(probs, row_sums=True)
        row_stat = sum_low if normalize else max(1 - sum_low, sum_high - 1)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{name} must be finite")
        if low < 0:
            raise ValueError(f"{name} must be >= 0, got min {low}")
        if normalize:
            if not row_stat > 0:
                raise ValueError(f"{name} rows must have a positive sum to be normalized")
        else:
            tolerance = 1e-3 if probs.dtype == torch.float32 else 1e-5
            if row_stat > tolerance:
                raise ValueError(f"{name} rows must sum to 1 (within {tolerance}), worst row is off by"
                                 f" {row_stat:.3g}; pass normalize=True to renormalize them")
    return probs


def check_labels(labels, num_samples: int, num_classes: int, device) -> torch.Tensor:
    """(N,) int64 labels in [0, num_classes) on `device`."""
    labels = _checks.int64_tensor(labels, "labels")
    if tuple(labels.shape) != (num_samples,):
        raise ValueError(f"labels must have shape (N,) = ({num_samples},), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of probs ({device}), got {labels.device}")
    _checks.index_range(labels, "labels", num_classes)
    return labels


def check_num_classes(num_classes, num_categories: int) -> int:
    """K: num_classes (an int >= 1, Python or NumPy), default C."""
    if num_classes is None:
        return num_categories
    return _checks.int_at_least(num_classes, "num_classes", 1)


def check_eps(eps, dtype: torch.dtype) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a float > 0, got {eps!r}")
    tiny = torch.finfo(dtype).tiny
    if eps < tiny:
        raise ValueError(f"eps must be >= {tiny:.3g} (the smallest normal {str(dtype)[6:]}), got {eps!r}")
    return float(eps)


def _check(probs, labels, eps, num_classes, normalize) -> int:
    probs = check_probabilities(probs, "probs", normalize)
    num_samples, num_categories = probs.shape
    check_eps(eps, probs.dtype)
    num_classes = check_num_classes(num_classes, num_categories)
    if labels is None:
        if num_classes < num_categories:
            raise ValueError(f"num_classes must be >= C = {num_categories} when labels default to"
                             f" argmax(probs), got {num_classes}")
    else:
        check_labels(labels, num_samples, num_classes, probs.device)
    return num_classes


def class_pairwise_kl(probs: torch.Tensor, labels: torch.Tensor | None = None,
                      eps: float = 1e-12, *, num_classes: int | None = None,
                      normalize: bool = False) -> torch.Tensor:
    """out_i = mean over j with labels_j == labels_i (j = i included) of KL(p_i || p_j), with
    log p clamped as log max(p, eps). O(N C) time, O(min(N, K) C) extra memory, exact (not an estimate).

    Args:
        probs: (N, C) class probabilities, float32 or float64; every row must sum to 1 (within
            1e-3 in float32, 1e-5 in float64) unless ``normalize``.
        labels: (N,) int64 in [0, num_classes); default argmax of probs (ties to the lowest index).
        eps: clamp of the probabilities inside the logarithm (``log max(p, eps)``, not
            ``log(p + eps)``); at least the dtype's smallest normal number.
        num_classes: K, the range of labels (default C); classes without samples are fine.
        normalize: divide each row by its sum first (differentiably) instead of requiring sums of 1.

    Returns:
        (N,) mean KL divergences in probs' dtype, differentiable in probs to every order (the
        gradient of the clamp is 1 where p >= eps, 0 below, as torch.clamp's; the double
        backward recomputes the gradient in O(N C) torch ops).
    """
    num_classes = _check(probs, labels, eps, num_classes, normalize)
    eps = float(eps)
    if normalize:
        probs = probs / probs.sum(1, keepdim=True)
    if labels is None:
        labels = probs.argmax(1)
    return _OP(probs.device, probs, labels, eps, num_classes)


def table_rows(num_samples, num_classes):
    """Rows of the class table: every class when K <= N, else the classes present (at most N);
    at least one row, so that the backward's table is never empty."""
    return torch.sym_min(torch.sym_max(num_samples, 1), num_classes)


def _fake(probs, labels, eps, num_classes):
    num_samples = probs.shape[0]
    return (probs.new_empty(num_samples),
            probs.new_empty(table_rows(num_samples, num_classes), probs.shape[1]),
            labels.new_empty(num_samples))


def _fake_backward(grad_kl, probs, labels, class_mean_log, eps):
    return probs.new_empty(probs.shape)


def _setup_context(ctx, inputs, output):
    """The kernels return the compact table of class means Lbar and each sample's row in it,
    saved for the backward (the rows stand for the labels there)."""
    probs, _, eps, _ = inputs
    _, class_mean_log, rows = output
    ctx.save_for_backward(probs, rows, class_mean_log)
    ctx.eps = eps
    ctx.mark_non_differentiable(class_mean_log, rows)


def _backward(ops, ctx, grad_kl, _grad_class_mean_log, _grad_rows):
    probs, rows, class_mean_log = ctx.saved_tensors
    return ops.class_pairwise_kl_backward(grad_kl, probs, rows, class_mean_log, ctx.eps), None, \
        None, None


def _setup_backward_context(ctx, inputs, output):
    grad_kl, probs, labels, class_mean_log, eps = inputs
    ctx.save_for_backward(grad_kl, probs, labels, class_mean_log)
    ctx.eps = eps


def _double_backward(ops, ctx, grad_grad_probs):
    grad_kl, probs, labels, class_mean_log = ctx.saved_tensors
    grads = gradient_vector_jacobian(grad_grad_probs, grad_kl, probs, labels, class_mean_log,
                                     ctx.eps, ctx.needs_input_grad[:2],
                                     fused_cpu_kernel=_registry.runs_fused_cpu_kernel(ops, probs))
    return *grads, None, None, None


def _class_means(values, labels, counts) -> torch.Tensor:
    """(K, C) means of the rows of ``values`` per label, 0 for empty classes; ``counts`` (K, 1):
    the class sizes, at least 1."""
    return values.new_zeros(counts.shape[0], values.shape[1]).index_add(0, labels, values) / counts


def gradient_vector_jacobian(grad_grad_probs, grad_kl, probs, labels, class_mean_log, eps: float,
                             needs, fused_cpu_kernel: bool = False) -> list:
    """The double backward: <grad, v>, grad the first-order gradient (csrc/kernels/
    class_pairwise_kl.h) and v = grad_grad_probs, differentiated in grad_kl and probs (those of
    ``needs``), by its closed form. With q = max(p, eps), m = [p >= eps] and the class means W_k
    of g p, U_k of g v and V_k of m v / q:
      d/dg_j  = sum_c v_jc (l_jc + m_jc - Lbar_{k_j c}) - p_jc V_{k_j c}
      d/dp_jc = m_jc / q_jc (g_j v_jc - U_{k_j c} + v_jc W_{k_j c} / q_jc) - g_j V_{k_j c}
    (the clamp's derivative m is constant, as torch.clamp's). With ``fused_cpu_kernel`` (the cpp
    backend, CPU tensors, a backward that records no graph: a gradient penalty's) the fused
    kernel runs: two passes over the rows, no N x C temporary. Otherwise (create_graph,
    torch.compile, torch.func, other backends and devices) these O(N C) torch ops, whose own
    derivatives give the third and higher orders; there the class means are functions of probs
    (the saved Lbar is not), so derivatives through them are total."""
    grad_grad_probs = _autograd.cotangent(grad_grad_probs)
    if grad_grad_probs is None or not any(needs):
        return [None, None]
    if fused_cpu_kernel:
        grad_grad_kl, grad_probs = torch.ops.gmkernels.class_pairwise_kl_double_backward(
            grad_grad_probs, grad_kl, probs, labels, class_mean_log, eps, needs[0], needs[1])
        return [grad_grad_kl if needs[0] else None, grad_probs if needs[1] else None]
    counts = torch.bincount(labels, minlength=class_mean_log.shape[0]).clamp(min=1)
    counts = counts.to(probs.dtype)[:, None]
    upstream = grad_grad_probs
    clamped = probs.clamp(min=eps)
    passes = (probs >= eps).to(probs.dtype)
    scaled = passes * upstream / clamped                         # m v / q
    upstream_scaled = _class_means(scaled, labels, counts)[labels]           # V
    results = [None, None]
    if needs[0]:
        log_probs = clamped.log()
        class_mean = _class_means(log_probs, labels, counts)[labels]          # Lbar
        results[0] = (upstream * (log_probs + passes - class_mean)
                      - probs * upstream_scaled).sum(1)
    if needs[1]:
        grad = grad_kl[:, None]
        weighted = _class_means(grad * probs, labels, counts)[labels]         # W
        upstream_weighted = _class_means(grad * upstream, labels, counts)[labels]  # U
        results[1] = (passes / clamped * (grad * upstream - upstream_weighted)
                      + scaled * weighted / clamped - grad * upstream_scaled)
    return results


_OP = _registry.register(_registry.OpDeclaration(
    name="class_pairwise_kl",
    schema="class_pairwise_kl(Tensor probs, Tensor labels, float eps, int num_classes)"
           " -> (Tensor, Tensor, Tensor)",
    backward_schema="class_pairwise_kl_backward(Tensor grad_kl, Tensor probs, Tensor labels,"
                    " Tensor class_mean_log, float eps) -> Tensor",
    reference=lambda probs, labels, eps, num_classes: reference.class_pairwise_kl(probs, labels, eps),
    fake=_fake, fake_backward=_fake_backward,
    setup_context=_setup_context, backward=_backward,
    setup_backward_context=_setup_backward_context, double_backward=_double_backward,
    result=lambda outputs: outputs[0],   # kl; the class table and rows are for the backward
))
IMPLEMENTED = _OP.implemented
