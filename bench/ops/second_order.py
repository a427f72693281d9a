"""Second order: what a gradient penalty (WGAN-GP, R1, DRAGAN) costs through each op. One timed
call is the forward, the gradient at the op's first input with ``create_graph=True``, then the
backward of that gradient's squared norm into every input that requires a gradient: the
computation a penalty adds to a discriminator step.

Contenders: each kernel backend whose second derivative equals the reference backend's (checked
here on a tiny float64 problem before anything is timed; a backend that raises or disagrees is
left out with a line saying so), the reference backend eager, and, in full runs, the reference
under torch.compile. torch.compile cannot differentiate its own graphs twice ("aot_autograd does
not currently support double backward"), so the compiled contender computes the first gradient
with ``torch.func.grad`` inside the compiled function, where it becomes part of the forward graph,
and takes one ordinary backward of the result. Its first call compiles for tens of seconds on a
2-core CPU, which is why quick runs leave it out.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import torch

import gmkernels
from gmkernels.ops.mixture_sample import draw_seed, mixture_sample_with_seed
from gmkernels.reference.class_pairwise_kl import class_pairwise_kl as reference_class_pairwise_kl
from gmkernels.reference.class_pairwise_kl import \
    class_pairwise_kl_by_class_means as reference_class_pairwise_kl_by_class_means
from gmkernels.reference.minibatch_discrimination import minibatch_discrimination as reference_minibatch
from gmkernels.reference.mixture_log_likelihood import mixture_log_likelihood as reference_log_likelihood
from gmkernels.reference.mixture_sample import mixture_sample as reference_mixture_sample

from bench.common import Case, Contender, bench_devices, fits_memory, kernel_backends, too_big
from bench.ops import class_pairwise_kl as kl_user
from bench.ops import minibatch_discrimination as minibatch_user
from bench.ops import mixture_log_likelihood as log_likelihood_user
from bench.ops import mixture_sample as sample_user


@dataclasses.dataclass
class Problem:
    """One op at one size: `call(*inputs)` through gmkernels (the active backend), `reference(*inputs)`
    the reference function (what torch.compile gets), `inputs[0]` the point the penalty is taken at."""
    op: str
    size: str
    inputs: tuple                       # leaves; those requiring grad receive the penalty's backward
    call: Callable
    reference: Callable
    # The scalar whose gradient is penalised: sum of the output, or of its square for an output
    # linear in the penalised input (mixture_sample's z in its scale), whose gradient would
    # otherwise not depend on it.
    outer: Callable = torch.sum
    # What a user writes for the op (name -> function of the same inputs as `call`): the sweep's
    # peers, differentiated twice by autograd.
    users: dict = dataclasses.field(default_factory=dict)


def _log_likelihood(rows, components, dim, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(rows, dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    means = torch.rand(components, dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    var = 0.04
    log_weights = torch.full((components,), -math.log(components), dtype=dtype, device=device)
    var_table = torch.full((components,), var, dtype=dtype, device=device)
    return Problem(
        "mixture_log_likelihood", f"B={rows} C={components} d={dim}", (x, means),
        lambda x, means: gmkernels.mixture_log_likelihood(x, means, var, log_weights),
        lambda x, means: reference_log_likelihood(x, means, var_table, log_weights),
        users={"matmul": lambda x, means: log_likelihood_user.matmul_formula(x, means, var, log_weights)})


def _mixture_sample(components, dim, n, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    scale = (torch.rand(components, dim, generator=gen, dtype=dtype) + 0.1).to(device).requires_grad_()
    mu = torch.randn(components, dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    component = torch.randint(components, (n,), generator=gen).to(device)
    seed = draw_seed(gen)
    return Problem(
        "mixture_sample", f"N={components} K={dim} n={n}", (scale, mu),
        lambda scale, mu: mixture_sample_with_seed(mu, scale, component, seed),
        lambda scale, mu: reference_mixture_sample(mu, scale, component, seed),
        outer=lambda z: z.square().sum(),
        users={"plain": lambda scale, mu: sample_user.plain_formula(mu, scale, component)})


def _class_pairwise_kl(samples, categories, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(samples, categories, generator=gen, dtype=dtype), 1).to(device)
    labels = probs.argmax(1)
    return Problem(
        "class_pairwise_kl", f"N={samples} C={categories}", (probs.requires_grad_(),),
        lambda p: gmkernels.class_pairwise_kl(p, labels, 1e-12),
        lambda p: reference_class_pairwise_kl(p, labels, 1e-12),
        users={"class-means": lambda p: reference_class_pairwise_kl_by_class_means(p, labels, 1e-12, categories),
               "naive pairwise": lambda p: kl_user.naive_pairwise(p, labels, 1e-12)})


def _minibatch(rows, kernels, dim, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(rows, kernels, dim, generator=gen, dtype=dtype).to(device).requires_grad_()
    return Problem("minibatch_discrimination", f"N={rows} B={kernels} C={dim}", (M,),
                   gmkernels.minibatch_discrimination, reference_minibatch,
                   users={"naive": minibatch_user.naive_minibatch})


# Each op at one size per kind. The reference is what makes the sizes small: the
# log-likelihood's holds B x C x d, minibatch discrimination's N x N x B x C, the pairwise KL's
# N x N x C, and a penalty keeps several of each for its second backward.
SIZES = {
    "full": [(_log_likelihood, (1024, 512, 32)), (_mixture_sample, (100, 64, 8192)),
             (_class_pairwise_kl, (2000, 10)), (_minibatch, (256, 50, 5))],
    "quick": [(_log_likelihood, (256, 64, 16)), (_mixture_sample, (16, 16, 2048)),
              (_class_pairwise_kl, (500, 10)), (_minibatch, (64, 20, 5))],
    "smoke": [(_log_likelihood, (16, 8, 4)), (_mixture_sample, (4, 4, 64)),
              (_class_pairwise_kl, (32, 5)), (_minibatch, (16, 4, 3))],
}
# The correctness check runs each op at these sizes in float64.
CHECK_SIZES = {_log_likelihood: (6, 4, 3), _mixture_sample: (3, 2, 16), _class_pairwise_kl: (12, 4),
               _minibatch: (5, 3, 2)}


def penalty_step(call: Callable, inputs: tuple, outer: Callable) -> torch.Tensor:
    """Forward, gradient at inputs[0] with create_graph, backward of its squared norm; returns the
    penalty (the inputs' .grad hold the result)."""
    for tensor in inputs:
        tensor.grad = None
    (gradient,) = torch.autograd.grad(outer(call(*inputs)), inputs[0], create_graph=True)
    penalty = gradient.square().sum()
    penalty.backward()
    return penalty


def compiled_penalty(reference: Callable, outer: Callable) -> Callable:
    """The penalty of `reference` under torch.compile: the first gradient by torch.func.grad inside
    the compiled graph (torch.compile cannot run a double backward of its own graphs)."""
    def penalty(*inputs):
        gradient = torch.func.grad(lambda first, *rest: outer(reference(first, *rest)))(*inputs)
        return gradient.square().sum()
    compiled = torch.compile(penalty)

    def step(*inputs):
        for tensor in inputs:
            tensor.grad = None
        value = compiled(*inputs)
        value.backward()
        return value
    return step


def second_derivative_problem(make: Callable, backend: str, device: torch.device):
    """None when `backend` gives the penalty gradient of the reference backend for the op `make`
    builds (float64, tiny size), else why not."""
    results = []
    for name in (backend, "reference"):
        problem = make(*CHECK_SIZES[make], device, dtype=torch.float64)
        try:
            with gmkernels.use_backend(name), warnings.catch_warnings():
                # PyTorch's "autograd kernel was not registered" deprecation note on a kernel's
                # unregistered double backward: what this check is here to catch.
                warnings.simplefilter("ignore")
                penalty_step(problem.call, problem.inputs, problem.outer)
        except Exception as error:   # any failure means: not timed yet, say why
            return f"raises {type(error).__name__}: {str(error).splitlines()[0][:100]}"
        results.append([tensor.grad for tensor in problem.inputs])
    for mine, reference in zip(*results):
        if mine is None or not torch.allclose(mine, reference, rtol=1e-6, atol=1e-9):
            return "its second derivative differs from the reference backend's"
    return None


def _differentiable_twice(make, backends, device) -> list:
    """The kernel backends whose second derivative of ``make``'s op runs on ``device``; each one
    left out is said in a line."""
    kernels = []
    for name in kernel_backends(backends, device):
        why_not = second_derivative_problem(make, name, device)
        if why_not:
            print(f"# {make.__name__.strip('_')} gradient penalty: gmkernels[{name}] not timed on "
                  f"{device.type}, {why_not}", flush=True)
        else:
            kernels.append(name)
    return kernels


def cases(kind: str, backends: tuple) -> list:
    result = []
    for device in bench_devices():
        for make, size in SIZES[kind]:
            problem = make(*size, device)
            kernels = _differentiable_twice(make, backends, device)
            contenders = []
            for name in kernels + ["reference"]:
                def run(name=name, problem=problem):
                    with gmkernels.use_backend(name):
                        return penalty_step(problem.call, problem.inputs, problem.outer)
                contenders.append(Contender("reference eager" if name == "reference" else f"gmkernels[{name}]", run))
            if kind == "full":
                step = compiled_penalty(problem.reference, problem.outer)
                contenders.append(Contender("reference compile", lambda step=step, problem=problem: step(*problem.inputs)))
            result.append(Case(op=problem.op, size=problem.size, mode="gradient penalty",
                               contenders=contenders, device=device.type))
    return result


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------
# Peers: what a user writes for each op (bench/ops/<op>.py's plain / naive / class-means
# formulas) differentiated twice by autograd, eager; in the full sweep also torch.compile of the
# first of them (its gradient by torch.func.grad inside the compiled function, as above; compiled
# anew at each size, tens of seconds a size on 2 cores, hence two sizes per op; three for the
# log-likelihood, whose full-run size B = 1024, C = 512, d = 32 the kernels lose at). The
# reference backend is context only.
SWEEP_SIZES = {
    "full": [(_log_likelihood, [(256, 256, 16), (1024, 512, 32), (2048, 2048, 256)]),
             (_mixture_sample, [(16, 16, 10000), (64, 256, 100000)]),
             (_class_pairwise_kl, [(1000, 10), (100000, 100)]),
             (_minibatch, [(64, 50, 5), (1024, 16, 4)])],
    "quick": [(_log_likelihood, [(256, 256, 16)]), (_mixture_sample, [(16, 16, 10000)]),
              (_class_pairwise_kl, [(1000, 10)]), (_minibatch, [(64, 50, 5)])],
    "smoke": [(make, [size]) for make, size in SIZES["smoke"]],
}
# The sweep plot's axis for each op, as its own section plots it.
WORK = {_log_likelihood: ("B*C*d", lambda B, C, d: B * C * d), _mixture_sample: ("n*K", lambda N, K, n: n * K),
        _class_pairwise_kl: ("N*C", lambda N, C: N * C), _minibatch: ("N^2*B*C", lambda N, B, C: N * N * B * C)}
SIZE_LABELS = {_log_likelihood: "B={} C={} d={}", _mixture_sample: "N={} K={} n={}",
               _class_pairwise_kl: "N={} C={}", _minibatch: "N={} B={} C={}"}


def user_penalty_bytes(make, size) -> float:
    """What a user's formula holds through a penalty's double backward (about eight copies of its
    largest intermediate): the naive pairwise forms are the ones that outgrow memory."""
    if make is _class_pairwise_kl:
        return 8 * 4.0 * size[0] ** 2
    if make is _minibatch:
        rows, kernels, dim = size
        return 8 * 4.0 * rows ** 2 * kernels * dim
    if make is _log_likelihood:
        return 8 * 4.0 * size[0] * size[1]
    _, dim, n = size
    return 8 * 4.0 * n * dim


def _sweep_case(make, size, kernels, device, with_compile, with_reference):
    check = make(*CHECK_SIZES[make], device, dtype=torch.float64)   # tiny: the op and its user formulas
    peers, skipped = [], []
    for index, user in enumerate(check.users):
        names = [f"{user} eager"] + ([f"{user} compile"] if with_compile and index == 0 else [])
        for name in names:
            nbytes = user_penalty_bytes(make, size) if user != "class-means" else 0
            if fits_memory(nbytes):
                peers.append(name)
            else:
                skipped.append(too_big(name, nbytes))

    def build():
        problem = make(*size, device)
        contenders = []
        for name in kernels + (["reference"] if with_reference else []):
            def run(name=name):
                with gmkernels.use_backend(name):
                    return penalty_step(problem.call, problem.inputs, problem.outer)
            contenders.append(Contender("reference eager" if name == "reference" else f"gmkernels[{name}]", run))
        for name in peers:
            user, _, how = name.rpartition(" ")
            formula = problem.users[user]
            if how == "eager":
                contenders.append(Contender(name, lambda formula=formula: penalty_step(formula, problem.inputs,
                                                                                         problem.outer)))
            else:
                step = compiled_penalty(formula, problem.outer)
                contenders.append(Contender(name, lambda step=step: step(*problem.inputs)))
        return contenders

    return Case(op=check.op, size=SIZE_LABELS[make].format(*size), mode="gradient penalty", contenders=[],
                build=build, baseline=peers[0] if peers else "reference eager", peers=tuple(peers), skipped=skipped,
                work=float(WORK[make][1](*size)), work_label=WORK[make][0], device=device.type)


def sweep_cases(kind: str, backends: tuple) -> list:
    result = []
    for device in bench_devices():
        for make, sizes in SWEEP_SIZES[kind]:
            kernels = _differentiable_twice(make, backends, device)
            # The reference backend (context) at the first, smallest size only: its
            # log-likelihood holds B x C x d, its pairwise KL takes N^2 C, through a double backward.
            result += [_sweep_case(make, size, kernels, device, kind == "full", index == 0)
                       for index, size in enumerate(sizes)]
    return result
