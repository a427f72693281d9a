"""Argument checks shared by the op wrappers: one place for the messages users read.

Value checks (signs, finiteness, ranges) read tensor data, which torch.compile cannot trace
without a graph break; they run in eager mode and are skipped while compiling. On a GPU reading
the data back costs a device-to-host synchronization per call, so they can be switched off
(``gmkernels.set_value_checks(False)``, ``with gmkernels.value_checks(False):`` or
``GMKERNELS_VALUE_CHECKS=0`` at import). Shapes, dtypes, devices and index ranges (labels,
components) are checked either way: the Triton kernels index tables with those indices.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Iterator, NamedTuple, Optional

import torch

from .. import backend

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _value_checks_from_environment() -> bool:
    setting = os.environ.get("GMKERNELS_VALUE_CHECKS", "1")
    if setting not in ("0", "1"):
        raise ValueError(f"GMKERNELS_VALUE_CHECKS must be 0 or 1, got {setting!r}")
    return setting == "1"


# A plain global, like the backend choice: the ops read it on every call.
_value_checks = _value_checks_from_environment()


def set_value_checks(enabled: bool) -> None:
    """Switch the ops' value checks (finite, signs, probability rows summing to 1) on or off for
    the process; shapes, dtypes, devices and index ranges are checked either way."""
    global _value_checks
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _value_checks = enabled


def value_checks_enabled() -> bool:
    return _value_checks


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """``with gmkernels.value_checks(False):`` runs its block without the value checks and
    restores the previous setting, also on exceptions."""
    previous = _value_checks
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def checking_values() -> bool:
    # is_compiling first: a compiled graph then never reads (nor guards on) the switch.
    return not torch.compiler.is_compiling() and _value_checks


class Summary(NamedTuple):
    """What value checks read of a tensor: its extremes and total and, for a 2-D tensor asked for
    them, the extremes of its row totals (over the last dimension). A NaN anywhere makes every
    float field NaN, so that any comparison a check makes with them fails."""
    low: float
    high: float
    total: float
    row_low: Optional[float] = None
    row_high: Optional[float] = None


def summary(value: torch.Tensor, row_sums: bool = False) -> Summary:
    """The Summary of a non-empty float32/float64/int64 tensor. On the CPU with the compiled
    extension one pass and one call (gmkernels._C.value_summary): each torch reduction costs a
    dispatch, an output tensor and a wake-up of the thread pool, and a check made of four or five
    of them was most of a small op call. Elsewhere (CUDA, half types, tensors inside torch.func
    transforms, no extension) torch ops, read back in one host sync (int64 extremes come back
    exact, as ints)."""
    data = value.detach()
    compiled = backend.compiled_module()
    # A tensor wrapped by a torch.func transform has no storage for the compiled pass to read.
    if (compiled is not None and data.device.type == "cpu" and data.dtype in _SUMMARIZED_DTYPES
            and not torch._C._functorch.is_functorch_wrapped_tensor(data)):
        return Summary(*compiled.value_summary(data, row_sums))
    low, high = torch.aminmax(data)
    if not data.is_floating_point():   # int64: exact extremes (a float64 would round them)
        low, high, total = torch.stack([low, high, data.sum()]).tolist()
        return Summary(low, high, float(total))
    parts = [low.double(), high.double(), data.sum(dtype=torch.float64)]
    if row_sums:
        parts += list(torch.aminmax(data.sum(1, dtype=torch.float64)))
    values = torch.stack(parts).tolist()
    if values[0] != values[0]:   # aminmax is NaN where some element is
        values = [math.nan] * len(values)
    return Summary(*values)


_SUMMARIZED_DTYPES = (torch.float32, torch.float64, torch.int64)


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensor(value, name: str, allow_half_on_gpu: bool = False) -> torch.Tensor:
    value = tensor(value, name)
    allowed = FLOAT_DTYPES
    if allow_half_on_gpu and value.device.type == "cuda":
        allowed = FLOAT_DTYPES + HALF_DTYPES
    if value.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names}; got {str(value.dtype).replace('torch.', '')}")
    return value


def int64_tensor(value, name: str) -> torch.Tensor:
    value = tensor(value, name)
    if value.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype int64, got {str(value.dtype).replace('torch.', '')}")
    return value


def ndim(value: torch.Tensor, name: str, dims: int, layout: str) -> None:
    if value.dim() != dims:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(value.shape)}")


def same_dtype(named: dict) -> None:
    items = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = items[0]
    for name, value in items[1:]:
        if value.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the dtype of {first_name} ({str(first.dtype).replace('torch.', '')}),"
                f" got {str(value.dtype).replace('torch.', '')}; nothing is promoted silently"
            )


def same_device(named: dict) -> None:
    items = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = items[0]
    for name, value in items[1:]:
        if value.device != first.device:
            raise ValueError(
                f"{name} must be on the device of {first_name} ({first.device}), got {value.device}"
            )


def finite(value: torch.Tensor, name: str) -> None:
    if not checking_values() or not value.numel():
        return
    if value.is_floating_point() and value.dtype in _SUMMARIZED_DTYPES:
        extremes = summary(value)
        if math.isfinite(extremes.low) and math.isfinite(extremes.high):
            return
    elif bool(torch.isfinite(value).all()):
        return
    raise ValueError(f"{name} must be finite")


def index_range(value: torch.Tensor, name: str, upper: int) -> None:
    # Not switched off with the value checks: the Triton kernels index tables with these.
    if not torch.compiler.is_compiling() and value.numel():
        ends = summary(value)
        low, high = int(ends.low), int(ends.high)
        if low < 0 or high >= upper:
            raise ValueError(f"{name} must lie in [0, {upper}), got values in [{low}, {high}]")


def int_at_least(value, name: str, minimum: int) -> int:
    """value as a Python int, checked to be an integer >= minimum.

    NumPy integers are accepted (they come out of configs and arrays); bool is not an integer here.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a Python int or NumPy integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def non_negative_int(value, name: str) -> int:
    return int_at_least(value, name, 0)
