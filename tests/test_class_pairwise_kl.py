"""class_pairwise_kl on every backend: the O(N C) identity against the literal pairwise float64
reference (values and gradients; exact zeros, one class, every sample its own class, empty
classes), float32 within float rounding, gradcheck, opcheck, determinism, bad input, compile."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import class_pairwise_kl as op
from gmkernels.reference.class_pairwise_kl import (class_pairwise_kl as pairwise,
                                                   class_pairwise_kl_by_class_means)

from conftest import assert_close_per_element, backend_device, require_backend

EPS = 1e-12


def loop_over_pairs(probs, labels, eps):
    """The definition, one pair at a time: an independent check of the pairwise reference."""
    out = []
    for i in range(probs.shape[0]):
        same = [j for j in range(probs.shape[0]) if labels[j] == labels[i]]
        kls = [float((probs[i] * (torch.log(probs[i].clamp(min=eps)) - torch.log(probs[j].clamp(min=eps)))).sum())
               for j in same]
        out.append(sum(kls) / len(kls))
    return torch.tensor(out, dtype=torch.float64)


def make_probs(num_samples, num_categories, seed, zeros=False, dtype=torch.float64, sharpness=3.0):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharpness * torch.randn(num_samples, num_categories, generator=gen,
                                                  dtype=torch.float64), 1)
    if zeros and num_samples and num_categories > 1:
        # Exact zeros, in a whole column and scattered: log max(0, eps) = log eps.
        probs[:, 0] = 0
        probs[torch.rand(num_samples, num_categories, generator=gen) < 0.2] = 0
        probs[:, -1] += 1e-3
        probs = probs / probs.sum(1, keepdim=True)
    return probs.to(dtype)


LABEL_KINDS = ("argmax", "random", "one_class", "own_class", "empty_classes")


def make_labels(kind, probs, seed):
    """(labels or None, num_classes or None) for one labelling scheme."""
    num_samples, num_categories = probs.shape
    gen = torch.Generator().manual_seed(seed)
    if kind == "argmax":
        return None, None
    if kind == "random":
        return torch.randint(num_categories, (num_samples,), generator=gen), None
    if kind == "one_class":
        return torch.zeros(num_samples, dtype=torch.int64), 1
    if kind == "own_class":
        return torch.arange(num_samples), max(1, num_samples)
    # Labels drawn from a few of many classes: most classes are empty.
    return 3 * torch.randint(2, (num_samples,), generator=gen) + 1, num_categories + 7


# C = 1 (KL identically 0) in about 1 draw of 40; otherwise both sides of the CPU kernel's switch
# between short rows (C < 16) and long rows.
CATEGORIES = st.integers(0, 39).map(lambda k: 1 if k == 0 else (2 + k % 8 if k % 2 else 14 + k % 7))
# N = 0 and 1 are drawn as often as any other size: the 0 / 1 / class-of-one edges.
SAMPLES = st.one_of(st.integers(0, 3), st.integers(4, 24))


def with_duplicates(probs, seed):
    """Some rows copied onto others (ties: identical rows in a class give KL exactly 0)."""
    gen = torch.Generator().manual_seed(seed)
    if probs.shape[0] > 1:
        copies = torch.randint(probs.shape[0], (probs.shape[0] // 2,), generator=gen)
        probs = probs.clone()
        probs[torch.randperm(probs.shape[0], generator=gen)[:copies.numel()]] = probs[copies]
    return probs


def usable_backends():
    return [name for name in gmkernels.backends() if name in op.IMPLEMENTED]


def values_and_grad(probs, labels, num_classes, grad_kl, eps=EPS):
    probs = probs.detach().requires_grad_()
    kl = gmkernels.class_pairwise_kl(probs, labels, eps, num_classes=num_classes)
    (grad,) = torch.autograd.grad(kl, probs, grad_kl) if probs.shape[0] else (torch.zeros_like(probs),)
    return kl.detach(), grad


def pairwise_truth(probs, labels, grad_kl, eps=EPS):
    probs = probs.detach().double().requires_grad_()
    labels = probs.argmax(1) if labels is None else labels
    kl = pairwise(probs, labels, eps)
    (grad,) = torch.autograd.grad(kl, probs, grad_kl.double()) if probs.shape[0] else (torch.zeros_like(probs),)
    return kl.detach(), grad


def assert_close64(got, want, scale=1.0):
    tolerance = 1e-10 * (1 + want.abs().max().item() if want.numel() else 1) * scale
    assert (got.double() - want).abs().max().item() <= tolerance if want.numel() else got.numel() == 0


def test_pairwise_reference_equals_the_definition_pair_by_pair():
    probs = make_probs(9, 4, 0, zeros=True)
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 2, 3, 0])
    assert torch.allclose(pairwise(probs, labels, EPS), loop_over_pairs(probs, labels, EPS),
                          rtol=1e-12, atol=1e-12)


@given(n=SAMPLES, categories=CATEGORIES, zeros=st.booleans(), duplicates=st.booleans(),
       kind=st.sampled_from(LABEL_KINDS), seed=st.integers(0, 2**31 - 1))
def test_class_means_identity_equals_pairwise_in_value_and_gradient(n, categories, zeros, duplicates, kind, seed):
    probs = make_probs(n, categories, seed, zeros)
    probs = with_duplicates(probs, seed) if duplicates else probs
    labels, num_classes = make_labels(kind, probs, seed)
    labels_used = probs.argmax(1) if labels is None else labels
    grad_kl = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    leaf = probs.clone().requires_grad_()
    kl = class_pairwise_kl_by_class_means(leaf, labels_used, EPS, num_classes)
    grad = torch.autograd.grad(kl, leaf, grad_kl)[0] if n else torch.zeros_like(probs)
    truth, truth_grad = pairwise_truth(probs, labels, grad_kl)
    assert_close64(kl.detach(), truth)
    # Gradients scale like 1/p near eps; compare relative to their size.
    assert_close64(grad, truth_grad)


@given(n=SAMPLES, categories=CATEGORIES, zeros=st.booleans(), duplicates=st.booleans(),
       kind=st.sampled_from(LABEL_KINDS), seed=st.integers(0, 2**31 - 1))
def test_every_backend_equals_pairwise_float64_in_value_and_gradient(n, categories, zeros, duplicates, kind, seed):
    probs = make_probs(n, categories, seed, zeros)
    probs = with_duplicates(probs, seed) if duplicates else probs
    labels, num_classes = make_labels(kind, probs, seed)
    grad_kl = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    truth, truth_grad = pairwise_truth(probs, labels, grad_kl)
    for name in usable_backends():
        device = backend_device(name)
        with gmkernels.use_backend(name):
            kl, grad = values_and_grad(probs.to(device), None if labels is None else labels.to(device),
                                       num_classes, grad_kl.to(device))
        assert kl.shape == (n,) and kl.dtype == torch.float64, name
        assert_close64(kl.cpu(), truth)
        assert_close64(grad.cpu(), truth_grad)


def magnitudes(probs, labels, grad_kl, eps=EPS):
    """What each value and gradient entry sums, in absolute value (float64), for per-element
    tolerances: out_i = sum_c p_ic (l_ic - Lbar_kc) cancels, so its scale is
    sum_c p_ic (|l_ic| + |Lbar_kc|); dout/dp_mc = g_m (l_mc + 1 - Lbar_kc) - (sum_{i in k} g_i p_ic)
    / (n_k p_mc) (the second term only where p_mc > eps), scale the same sums of magnitudes."""
    probs, grad_kl = probs.double(), grad_kl.double()
    labels = probs.argmax(1) if labels is None else labels
    classes = int(labels.max()) + 1 if labels.numel() else 1
    log_probs = torch.log(probs.clamp(min=eps))
    counts = torch.zeros(classes, dtype=torch.float64).index_add_(0, labels, torch.ones_like(grad_kl))
    mean_log = torch.zeros(classes, probs.shape[1], dtype=torch.float64).index_add_(0, labels, log_probs)
    mean_log = (mean_log / counts.clamp(min=1)[:, None])[labels]
    value_scale = (probs * (log_probs.abs() + mean_log.abs())).sum(1)
    weighted = torch.zeros(classes, probs.shape[1], dtype=torch.float64).index_add_(
        0, labels, grad_kl.abs()[:, None] * probs)
    weighted = (weighted / counts.clamp(min=1)[:, None])[labels]
    inverse = torch.where(probs > eps, 1 / probs.clamp(min=eps), torch.zeros_like(probs))
    grad_scale = grad_kl.abs()[:, None] * (log_probs.abs() + 1 + mean_log.abs()) + weighted * inverse
    return value_scale, grad_scale


@pytest.mark.parametrize("categories", [7, 20])    # short rows (C < 16) and long rows
@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("zeros", [False, True])
def test_float32_within_float_rounding_of_the_float64_truth(backend, kind, zeros, categories):
    """Every value and every gradient entry within rounding of the float64 pairwise truth at its
    own scale (2x the plain float32 formula's error there, or a few ulps of what the entry sums).
    Gradients ~ 1/p span orders of magnitude: a tolerance set by the largest would let 0.3-3%
    errors on the typical entries through. The truth is computed from the float32 inputs."""
    require_backend(op)
    probs32 = make_probs(160, categories, 11, zeros).float()
    probs = probs32.double()
    labels, num_classes = make_labels(kind, probs, 11)
    grad_kl = torch.randn(160, generator=torch.Generator().manual_seed(3))
    truth, truth_grad = pairwise_truth(probs, labels, grad_kl.double())
    with gmkernels.use_backend("reference"):
        plain, plain_grad = values_and_grad(probs32, labels, num_classes, grad_kl)
    kl, grad = values_and_grad(probs32.to(backend), None if labels is None else labels.to(backend),
                               num_classes, grad_kl.to(backend))
    assert kl.dtype == torch.float32
    value_scale, grad_scale = magnitudes(probs, labels, grad_kl)
    assert_close_per_element(kl, truth, plain, scale=value_scale, what="value")
    assert_close_per_element(grad, truth_grad, plain_grad, scale=grad_scale, what="gradient")


def test_many_rows_per_class_and_several_threads_match_the_float64_identity():
    """Sizes that use several accumulation slots and the float-to-double flushes (cpp)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = make_probs(6000, 40, 5, zeros=True)
    labels = torch.randint(5, (6000,), generator=torch.Generator().manual_seed(0))
    grad_kl = torch.rand(6000, dtype=torch.float64)
    leaf = probs.clone().requires_grad_()
    truth = class_pairwise_kl_by_class_means(leaf, labels, EPS, 5)
    truth_grad = torch.autograd.grad(truth, leaf, grad_kl)[0]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with gmkernels.use_backend("cpp"):
            for dtype, tolerance in ((torch.float64, 1e-11), (torch.float32, 3e-5)):
                kl, grad = values_and_grad(probs.to(dtype), labels, 5, grad_kl.to(dtype))
                assert (kl.double() - truth.detach()).abs().max() <= tolerance * truth.abs().max()
                relative = (grad.double() - truth_grad).abs() / (truth_grad.abs() + 1)
                assert relative.max() <= tolerance
    finally:
        torch.set_num_threads(threads)


def penalty_truth(probs, labels, grad_kl, upstream, eps=EPS):
    """The double backward's truth: <d kl / d probs (grad_kl), upstream> differentiated in grad_kl
    and probs by autograd through the pairwise reference."""
    probs = probs.detach().double().requires_grad_()
    grad_kl = grad_kl.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(pairwise(probs, labels, eps), probs, grad_kl, create_graph=True)
    return torch.autograd.grad((grad * upstream.double()).sum(), (grad_kl, probs),
                               allow_unused=True, materialize_grads=True)


def fused_double_backward(probs, labels, num_classes, grad_kl, upstream, needs, eps=EPS):
    """The CPU kernel of the double backward, called on the forward kernel's class table."""
    _, class_mean_log, rows = torch.ops.gmkernels.class_pairwise_kl(probs, labels, eps, num_classes)
    return torch.ops.gmkernels.class_pairwise_kl_double_backward(
        upstream, grad_kl, probs, rows, class_mean_log, eps, *needs), (rows, class_mean_log)


NEEDS = st.sampled_from([(True, True), (True, False), (False, True)])


def double_backward_scales(probs, labels, grad_kl, upstream, eps=EPS):
    """What each entry of the double backward sums, in absolute value, for per-element tolerances
    (its terms cancel: exactly, for a sample alone in its class): the formulas of
    gmkernels/ops/class_pairwise_kl.py's gradient_vector_jacobian with every term and every class
    mean taken of absolute values."""
    def class_means(values):
        sums = torch.zeros(int(labels.max()) + 1, values.shape[1], dtype=values.dtype)
        counts = torch.bincount(labels, minlength=sums.shape[0]).clamp(min=1)[:, None]
        return (sums.index_add(0, labels, values) / counts)[labels]
    grad, upstream = grad_kl.abs()[:, None], upstream.abs()
    inverse = torch.where(probs >= eps, 1 / probs.clamp(min=eps), torch.zeros_like(probs))
    log_probs = probs.clamp(min=eps).log().abs()
    upstream_scaled = class_means(upstream * inverse)
    grad_kl_scale = (upstream * (log_probs + 1 + class_means(log_probs))
                     + probs * upstream_scaled).sum(1)
    probs_scale = (inverse * (grad * upstream + class_means(grad * upstream)
                              + upstream * class_means(grad * probs) * inverse)
                   + grad * upstream_scaled)
    return grad_kl_scale, probs_scale


@given(n=st.integers(1, 24), categories=CATEGORIES, zeros=st.booleans(), duplicates=st.booleans(),
       kind=st.sampled_from(LABEL_KINDS), needs=NEEDS, seed=st.integers(0, 2**31 - 1))
def test_fused_double_backward_and_its_torch_form_equal_autograd_through_pairwise(
        n, categories, zeros, duplicates, kind, needs, seed):
    """A gradient penalty's backward on the cpp backend takes the fused kernel; with create_graph
    and on the other backends the closed form in torch ops runs. Both against autograd twice
    through the pairwise reference, with clamped zeros, classes of one, empty classes and more
    classes than samples (a compact table)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = make_probs(n, categories, seed, zeros)
    probs = with_duplicates(probs, seed) if duplicates else probs
    labels, num_classes = make_labels(kind, probs, seed)
    labels = probs.argmax(1) if labels is None else labels
    num_classes = num_classes or categories
    gen = torch.Generator().manual_seed(seed)
    grad_kl = torch.randn(n, dtype=torch.float64, generator=gen)
    upstream = torch.randn(n, categories, dtype=torch.float64, generator=gen)
    truth = penalty_truth(probs, labels, grad_kl, upstream)
    fused, (rows, class_mean_log) = fused_double_backward(probs, labels, num_classes, grad_kl,
                                                          upstream, needs)
    torch_form = op.gradient_vector_jacobian(upstream, grad_kl, probs, rows, class_mean_log, EPS,
                                             needs)
    scales = double_backward_scales(probs, labels, grad_kl, upstream)
    for index, need in enumerate(needs):
        if not need:
            assert fused[index].numel() == 0 and torch_form[index] is None
            continue
        for got in (fused[index], torch_form[index]):
            error = (got - truth[index]).abs()
            assert (error <= 1e-12 * (scales[index] + 1)).all(), error.max().item()


def test_fused_double_backward_over_several_slots_and_in_float32():
    """Sizes whose class tables are summed in several slots on 2 threads (N 3C >= 2^17): float64
    against the torch form, and float32 against it on the same (float32) inputs: the kernel sums
    and combines in double, so only the final rounding remains (the terms of d/dp cancel, so a
    comparison with the unrounded inputs would measure the inputs' rounding, not the kernel)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = make_probs(3000, 30, 4, zeros=True)
    labels = torch.randint(7, (3000,), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    grad_kl = torch.rand(3000, dtype=torch.float64, generator=gen)
    upstream = torch.randn(3000, 30, dtype=torch.float64, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for dtype, tolerance in ((torch.float64, 1e-11), (torch.float32, 1e-6)):
            inputs = [t.to(dtype) for t in (probs, grad_kl, upstream)]
            exact = [t.double() for t in inputs]
            _, class_mean_log, rows = torch.ops.gmkernels.class_pairwise_kl(exact[0], labels, EPS, 7)
            want = op.gradient_vector_jacobian(exact[2], exact[1], exact[0], rows, class_mean_log,
                                               EPS, (True, True))
            got, _ = fused_double_backward(inputs[0], labels, 7, inputs[1], inputs[2], (True, True))
            for g, w in zip(got, want):
                assert g.dtype == dtype
                relative = (g.double() - w).abs() / (w.abs() + 1)
                assert relative.max() <= tolerance, (dtype, relative.max().item())
    finally:
        torch.set_num_threads(threads)


def test_cpp_is_identical_across_runs_and_within_rounding_for_any_thread_count():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = make_probs(5000, 30, 2)
    labels = probs.argmax(1)
    grad_kl = torch.randn(5000, dtype=torch.float64)
    # The float64 truth from the reference (the class-means identity, tested above against the
    # pairwise definition), never from the kernel under test.
    leaf = probs.float().double().requires_grad_()
    truth_kl = class_pairwise_kl_by_class_means(leaf, labels, EPS, 30)
    truth = truth_kl.detach(), torch.autograd.grad(truth_kl, leaf, grad_kl)[0]
    with gmkernels.use_backend("reference"):
        plain = values_and_grad(probs.float(), labels, None, grad_kl.float())
    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2, 2, 1):
            torch.set_num_threads(count)
            with gmkernels.use_backend("cpp"):
                results.setdefault(count, []).append(
                    values_and_grad(probs.float(), labels, None, grad_kl.float()))
    finally:
        torch.set_num_threads(threads)
    for runs in results.values():
        assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
        scales = magnitudes(probs.float().double(), labels, grad_kl)
        for got, want, plain32, scale, what in zip(runs[0], truth, plain, scales, ("value", "gradient")):
            assert_close_per_element(got, want, plain32, scale=scale, what=what)


def test_gradcheck_float64(backend):
    require_backend(op)
    # Mild probabilities: finite differences of log p are accurate only where p >> 1e-6.
    probs = make_probs(8, 4, 1, sharpness=1.0).to(backend).requires_grad_()
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 2, 5], device=backend)   # classes 3 and 4 empty
    assert torch.autograd.gradcheck(
        lambda p: gmkernels.class_pairwise_kl(p, labels, num_classes=6), (probs,))


def test_gradcheck_float64_through_normalize(backend):
    require_backend(op)
    gen = torch.Generator().manual_seed(4)
    weights = (torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.1).to(backend).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: gmkernels.class_pairwise_kl(w, normalize=True), (weights,))


def compiled_namespaces():
    """(op namespace, device) of every usable compiled or Triton backend."""
    namespaces = {"cpp": "gmkernels", "cuda": "gmkernels", "triton": "gmkernels_triton"}
    return [(namespaces[name], backend_device(name)) for name in ("cpp", "cuda", "triton")
            if name in op.IMPLEMENTED and name in gmkernels.backends()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward_and_backward_ops(dtype):
    namespaces = compiled_namespaces()
    if not namespaces:
        pytest.skip("no compiled or Triton ops here")
    for namespace, device in namespaces:
        probs = make_probs(13, 5, 7, zeros=True, dtype=dtype).to(device).requires_grad_()
        labels = torch.tensor([0, 1, 1, 4, 0, 1, 1, 4, 4, 0, 1, 1, 0], device=device)   # classes 2, 3 empty
        ops = getattr(torch.ops, namespace)
        torch.library.opcheck(ops.class_pairwise_kl.default, (probs, labels, EPS, 6))
        # More classes than samples: the table has N rows, not K.
        torch.library.opcheck(ops.class_pairwise_kl.default, (probs, labels * 7, EPS, 50))
        _, class_mean_log, rows = ops.class_pairwise_kl(probs.detach(), labels, EPS, 6)
        torch.library.opcheck(ops.class_pairwise_kl_backward.default,
                              (torch.randn(13, dtype=dtype, device=device), probs.detach(), rows,
                               class_mean_log, EPS))


@pytest.mark.parametrize("num_classes", [5, 10, 11, 10**7])   # K <= N (5, 10) and K > N (11, 10^7)
def test_class_table_outputs_are_the_class_means_and_each_samples_row(num_classes):
    """The second output has min(N, K) rows: row k the mean of log p over class k when K <= N,
    else row r the mean over the r-th smallest class present; zero rows for the rest. The third
    output is each sample's row."""
    namespaces = compiled_namespaces()
    if not namespaces:
        pytest.skip("no compiled or Triton ops here")
    probs = make_probs(10, 3, 9, zeros=True)
    labels = torch.tensor([0, 0, 2, 2, 2, 0, 4, 4, 0, 2]) * (num_classes // 5)
    classes = torch.arange(num_classes) if num_classes <= 10 else labels.unique()
    log_probs = torch.log(probs.clamp(min=EPS))
    for namespace, device in namespaces:
        kl, class_mean_log, rows = getattr(torch.ops, namespace).class_pairwise_kl(
            probs.to(device), labels.to(device), EPS, num_classes)
        class_mean_log, rows = class_mean_log.cpu(), rows.cpu()
        assert class_mean_log.shape == (min(10, num_classes), 3) and rows.dtype == torch.int64
        assert torch.equal(rows, torch.searchsorted(classes, labels)), namespace
        for row, k in enumerate(classes):
            expected = log_probs[labels == k].mean(0) if (labels == k).any() else torch.zeros(3, dtype=torch.float64)
            assert torch.allclose(class_mean_log[row], expected, rtol=1e-12, atol=1e-12), (namespace, row)
        assert not class_mean_log[len(classes):].any(), namespace


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("num_samples, num_categories, num_classes, present", [
    (3000, 64, 5000, 3000),     # about every class of one to a few samples, most of K absent
    (400, 300, 10**6, 37),      # a few classes out of a million (the sorted-ranks path)
    (14000, 10, 2000, 2000),    # a few samples per class, every class present, short rows
])
def test_many_classes_match_the_float64_identity_in_value_and_gradient(
        num_samples, num_categories, num_classes, present, dtype, threads):
    """Many classes (cpp: each thread takes whole classes, no K x C table), with absent
    classes among them: values and gradients against the float64 class-means identity, the
    same bits on a second run."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(num_classes)
    probs = make_probs(num_samples, num_categories, 6, zeros=True)
    classes = torch.randperm(num_classes, generator=gen)[:present]
    labels = classes[torch.randint(present, (num_samples,), generator=gen)]
    grad_kl = torch.randn(num_samples, dtype=torch.float64, generator=gen)
    leaf = probs.to(dtype).double().requires_grad_()
    # The truth on the labels renumbered 0, 1, ... (the same classes): a K x C table would be
    # gigabytes.
    compact = labels.unique(return_inverse=True)[1]
    truth = class_pairwise_kl_by_class_means(leaf, compact, EPS, present)
    truth_grad = torch.autograd.grad(truth, leaf, grad_kl)[0]
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with gmkernels.use_backend("cpp"):
            first = values_and_grad(probs.to(dtype), labels, num_classes, grad_kl.to(dtype))
            second = values_and_grad(probs.to(dtype), labels, num_classes, grad_kl.to(dtype))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    kl, grad = first
    if dtype == torch.float64:
        assert (kl - truth.detach()).abs().max() <= 1e-11 * (1 + truth.abs().max())
        assert ((grad - truth_grad).abs() / (truth_grad.abs() + 1)).max() <= 1e-11
        return
    # float32: within rounding of the truth at each element's own scale (the gradient cancels
    # two large terms where p is small), against the plain float32 formula's error there.
    with gmkernels.use_backend("reference"):
        plain = values_and_grad(probs.float(), compact, present, grad_kl.float())
    scales = magnitudes(probs.float().double(), compact, grad_kl)
    for got, want, plain32, scale, what in zip(first, (truth, truth_grad), plain, scales,
                                               ("value", "gradient")):
        assert_close_per_element(got, want, plain32, scale=scale, what=what)


def test_non_contiguous_inputs_give_the_contiguous_result(backend):
    require_backend(op)
    probs = make_probs(12, 5, 3).to(backend)
    wide = torch.zeros(12, 10, dtype=torch.float64, device=backend)
    wide[:, ::2] = probs
    strided = wide[:, ::2]
    labels = torch.randint(5, (12, 2), device=backend)[:, 1]
    assert not (strided.is_contiguous() or labels.is_contiguous())
    expected = gmkernels.class_pairwise_kl(probs, labels.contiguous())
    assert torch.equal(gmkernels.class_pairwise_kl(strided, labels), expected)


def test_zero_samples_give_an_empty_result_and_gradient(backend):
    require_backend(op)
    probs = torch.empty(0, 4, device=backend, requires_grad=True)
    kl = gmkernels.class_pairwise_kl(probs)
    assert kl.shape == (0,)
    kl.sum().backward()
    assert probs.grad is not None and probs.grad.shape == (0, 4)


def test_default_labels_are_argmax_with_ties_to_the_lowest_index(backend):
    require_backend(op)
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.4, 0.2, 0.4], [0.1, 0.1, 0.8]],
                         dtype=torch.float64, device=backend)
    labels = torch.tensor([0, 1, 0, 2], device=backend)
    assert torch.equal(gmkernels.class_pairwise_kl(probs), gmkernels.class_pairwise_kl(probs, labels))


def test_identical_rows_in_a_class_give_zero_and_a_sample_alone_gives_zero(backend):
    require_backend(op)
    row = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    probs = torch.stack([row, row, row, torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)]).to(backend)
    kl = gmkernels.class_pairwise_kl(probs)
    assert kl.abs().max() <= 1e-15


def test_two_samples_give_half_their_kl_divergence(backend):
    require_backend(op)
    p, q = torch.tensor([0.6, 0.4], dtype=torch.float64), torch.tensor([0.9, 0.1], dtype=torch.float64)
    kl = gmkernels.class_pairwise_kl(torch.stack([p, q]).to(backend)).cpu()
    assert torch.allclose(kl, torch.stack([(p * (p / q).log()).sum(), (q * (q / p).log()).sum()]) / 2,
                          rtol=1e-13, atol=0)


def test_normalize_renormalizes_rows(backend):
    require_backend(op)
    weights = torch.rand(20, 4, dtype=torch.float64, device=backend) + 0.01
    probs = weights / weights.sum(1, keepdim=True)
    assert torch.allclose(gmkernels.class_pairwise_kl(3 * weights, normalize=True),
                          gmkernels.class_pairwise_kl(probs), rtol=1e-12, atol=1e-14)


def test_works_under_torch_compile_fullgraph(backend):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    probs = make_probs(30, 5, 8, dtype=torch.float32).to(backend).requires_grad_()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def mean_kl(p):
        return gmkernels.class_pairwise_kl(p).mean()

    loss = mean_kl(probs)
    loss.backward()
    expected = gmkernels.class_pairwise_kl(probs.detach()).mean()
    assert torch.allclose(loss.detach(), expected) and probs.grad is not None


def test_works_under_inductor_fullgraph():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = make_probs(30, 5, 8, dtype=torch.float32)
    labels = torch.randint(3, (30,))
    with gmkernels.use_backend("cpp"):
        compiled = torch.compile(lambda p: gmkernels.class_pairwise_kl(p, labels, num_classes=3).exp(),
                                 fullgraph=True)
        assert torch.allclose(compiled(probs), gmkernels.class_pairwise_kl(probs, labels, num_classes=3).exp())


BAD_INPUTS = [
    (dict(probs=torch.full((3,), 1 / 3)), ValueError, r"probs must be \(N, C\)"),
    (dict(probs=torch.zeros(3, 0)), ValueError, "at least one class"),
    (dict(probs=torch.tensor([[1, 0], [0, 1]])), TypeError, "probs must have dtype"),
    (dict(probs=torch.tensor([[0.5, 0.6], [0.5, 0.5]])), ValueError, "sum to 1"),
    (dict(probs=torch.tensor([[0.5, 0.5], [0.4, 0.4]])), ValueError, "sum to 1"),
    (dict(probs=torch.tensor([[1.5, -0.5], [0.5, 0.5]])), ValueError, "probs must be >= 0"),
    (dict(probs=torch.tensor([[math.nan, 1.0], [0.5, 0.5]])), ValueError, "probs must be finite"),
    (dict(probs=torch.tensor([[math.inf, 1.0], [0.5, 0.5]])), ValueError, "probs must be finite"),
    (dict(probs=torch.tensor([[0.0, 0.0], [0.5, 0.5]]), normalize=True), ValueError, "positive sum"),
    (dict(labels=torch.tensor([0, 2])), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(labels=torch.tensor([0, 2]), num_classes=2), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(labels=torch.tensor([-1, 0]), num_classes=5), ValueError, r"labels must lie in \[0, 5\)"),
    (dict(labels=torch.tensor([0])), ValueError, r"labels must have shape \(N,\)"),
    (dict(labels=torch.tensor([0.0, 1.0])), TypeError, "labels must have dtype int64"),
    (dict(labels=torch.tensor([0, 1], dtype=torch.int32)), TypeError, "labels must have dtype int64"),
    (dict(eps=0.0), ValueError, "eps must be a float > 0"),
    (dict(eps="1e-12"), ValueError, "eps must be a float > 0"),
    (dict(eps=1e-45), ValueError, "eps must be >= "),
    (dict(num_classes=0, labels=torch.tensor([0, 0])), ValueError, "num_classes must be >= 1"),
    (dict(num_classes=2.0), TypeError, "num_classes must be a Python int"),
    (dict(num_classes=1), ValueError, "num_classes must be >= C = 2 when labels default"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(probs=torch.tensor([[0.25, 0.75], [0.5, 0.5]]), labels=None, eps=1e-12)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.class_pairwise_kl(**args)


def test_binding_guards_direct_calls_with_out_of_range_labels():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 2\)"):
        torch.ops.gmkernels.class_pairwise_kl(probs, torch.tensor([0, 2]), EPS, 2)
