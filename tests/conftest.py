"""Shared test machinery: the backend table, hypothesis profiles and the tolerance rule.

Every op test runs on every backend from one table (pytorch_scatter / Liger-Kernel style). Ground
truth is the float64 reference; a float32 result passes when its error against that truth is at
most ~2x the error of the plain float32 PyTorch computation of the same thing (flash-attention's
rule), so tolerances follow the math instead of being tuned until green.
"""
import os

import torch

# Triton runs on CPU tensors only through its interpreter, which must be switched on before
# gmkernels (and so triton.jit) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import gmkernels  # noqa: E402

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True,
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
