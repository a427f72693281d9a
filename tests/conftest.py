"""Shared test machinery: the backend table, hypothesis profiles and the tolerance rule.

Every op test runs on every backend from one table (pytorch_scatter / Liger-Kernel style). Ground
truth is the float64 reference; a float32 result passes when its error against that truth is at
most ~2x the error of the plain float32 PyTorch computation of the same thing (flash-attention's
rule), so tolerances follow the math instead of being tuned until green.
"""
import importlib.metadata
import os
import runpy

import numpy
import torch

# Read from its file: importing gmkernels (even gmkernels._version) now would detect the backends
# before TRITON_INTERPRET is set below.
VERSION_FILE = os.path.join(os.path.dirname(__file__), "..", "gmkernels", "_version.py")
release = runpy.run_path(VERSION_FILE)["release"]


def triton_interpreter_problem():
    """Why Triton's interpreter cannot run the kernels with this numpy, or None. Triton 3.6 (torch
    2.11's) takes int() of one-element arrays, an error from numpy 2.4 on: every interpreted
    kernel with a loop bound or index from a tensor failed. 3.9 runs them (3.7 and 3.8 untried)."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None
    if release(triton) < (3, 9) and release(numpy.__version__) >= (2, 4):
        return (f"Triton {triton}'s interpreter fails with numpy {numpy.__version__}: the triton "
                "backend is left out on the CPU (numpy<2.4 or Triton >= 3.9 runs it)")
    return None


# Triton runs on CPU tensors only through its interpreter, which must be switched on before
# gmkernels (and so triton.jit) is imported.
TRITON_INTERPRETER_PROBLEM = None if torch.cuda.is_available() else triton_interpreter_problem()
if not torch.cuda.is_available() and TRITON_INTERPRETER_PROBLEM is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_report_header(config):
    return TRITON_INTERPRETER_PROBLEM

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import gmkernels  # noqa: E402

# CI draws 50 random examples per property (a new sample of the input space on every run, not the
# same 12 each time); a failure prints its seed (`@seed(...)`) and a reproduction blob to replay it
# with, and `pytest -p hypothesis --hypothesis-seed=N` repeats a whole run.
settings.register_profile(
    "ci", max_examples=50, deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ALL_BACKENDS = ("reference", "cpp", "triton", "cuda")


def backend_device(name: str) -> torch.device:
    if name == "cuda" or (name == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Runs the test on one backend (skipped where it is not usable here); yields its device."""
    name = request.param
    if name not in gmkernels.backends():
        pytest.skip(f"backend {name!r} is not usable on this machine ({gmkernels.backends()})")
    with gmkernels.use_backend(name):
        yield backend_device(name)


def require_backend(op_module, name: str = None) -> None:
    """Skip when the op has no implementation on the active backend yet."""
    name = name or gmkernels.get_backend()
    if name != "auto" and name not in op_module.IMPLEMENTED:
        pytest.skip(f"{op_module.__name__} has no {name!r} backend")


def max_error(actual: torch.Tensor, truth: torch.Tensor) -> float:
    return (actual.double() - truth.double()).abs().max().item() if truth.numel() else 0.0


def assert_float_rounding(actual, truth, plain32, factor: float = 2.0, floor: float = 1e-12):
    """actual's error vs the float64 truth is at most `factor` x that of the plain float32
    computation (plus a floor for cases where the plain computation happens to be exact)."""
    allowed = factor * max_error(plain32, truth) + floor * (1 + truth.double().abs().max().item())
    error = max_error(actual, truth)
    assert error <= allowed, f"error {error:.3g} > allowed {allowed:.3g}"


def assert_close_per_element(actual, truth, plain32=None, *, scale=None, factor: float = 2.0,
                             ulps: float = 8.0, what: str = ""):
    """Every element within rounding of the float64 truth, at its own scale:

        |actual_i - truth_i| <= factor |plain32_i - truth_i| + ulps eps |scale_i|

    plain32 is the plain float32 computation of the same thing (flash-attention's 2x rule, element
    by element); scale_i is the size of what element i sums (default |truth_i|; for a sum with
    cancellation, the sum of its terms' magnitudes), so outputs that span orders of magnitude are
    each held to their own ulps instead of to those of the largest one (results near the
    smallest normal float32 may be flushed to zero)."""
    actual = actual.detach().cpu().double()
    truth = truth.detach().cpu().double()
    assert actual.shape == truth.shape, (what, actual.shape, truth.shape)
    if not truth.numel():
        return
    eps = torch.finfo(torch.float32).eps
    scale = truth.abs() if scale is None else scale.detach().cpu().double().abs()
    # Kernels may flush terms below exp(-87) ~ 1.6e-38 (near the smallest normal float32) to zero:
    # sums of up to ~60 of them are left unchecked.
    allowed = ulps * eps * scale + 1e-36
    if plain32 is not None:
        allowed = allowed + factor * (plain32.detach().cpu().double() - truth).abs()
    error = (actual - truth).abs()
    bad = ~(error <= allowed)
    if bad.any():
        worst = ((error - allowed) / allowed.clamp(min=1e-300)).flatten().argmax()
        index = tuple(int(k) for k in torch.unravel_index(worst, truth.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {truth.numel()} elements off; worst at {index}: "
            f"got {actual[index].item():.9g}, truth {truth[index].item():.9g}, "
            f"error {error[index].item():.3g} > allowed {allowed[index].item():.3g}")


def spy_on(patch, name, recorded):
    """Replaces torch.ops.gmkernels.<name> through `patch` (a pytest MonkeyPatch) by a wrapper
    that calls it; returns the list to which each call appends recorded(args)."""
    kernel = getattr(torch.ops.gmkernels, name)
    calls = []

    def spy(*args):
        calls.append(recorded(args))
        return kernel(*args)
    patch.setattr(torch.ops.gmkernels, name, spy)
    return calls
