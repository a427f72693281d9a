"""Which implementation the ops run on.

Backends, fastest first: ``cuda`` (compiled CUDA kernels), ``triton`` (Triton kernels; on CPU
tensors only under ``TRITON_INTERPRET=1``, for testing), ``cpp`` (compiled C++ CPU kernels) and
``reference`` (readable pure PyTorch, the ground truth). ``auto`` picks, per call, the fastest
usable backend for the inputs' device that implements the op. The environment variable
``GMKERNELS_BACKEND`` sets the choice at import.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import Iterable, Iterator

import torch

from ._version import triton_version_problem

_AUTO = "auto"


def _load_compiled():
    try:
        from gmkernels import _C
    except ImportError:
        return None
    return _C


_compiled = _load_compiled()


def compiled_module():
    """The extension module ``gmkernels._C``, or None when it was not built."""
    return _compiled


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_recent_enough() -> bool:
    import triton

    problem = triton_version_problem(triton.__version__)
    if problem is not None:
        warnings.warn(problem, stacklevel=2)
    return problem is None


def _detect_usable() -> tuple:
    usable = []
    cuda_built = _compiled is not None and bool(_compiled.build_info()["cuda"])
    if cuda_built and torch.cuda.is_available():
        usable.append("cuda")
    if importlib.util.find_spec("triton") is not None and (
        torch.cuda.is_available() or _triton_interpreted()
    ) and _triton_recent_enough():
        usable.append("triton")
    if _compiled is not None:
        usable.append("cpp")
    usable.append("reference")
    return tuple(usable)


# Decided once at import: the ops read these plain globals, which torch.compile traces cheaply.
_usable = _detect_usable()


def backends() -> tuple:
    """Names of the backends usable on this machine, fastest first."""
    return _usable


def _validated(name: str) -> str:
    if not isinstance(name, str) or (name != _AUTO and name not in _usable):
        valid = ", ".join(repr(n) for n in (_AUTO,) + _usable)
        raise ValueError(f"backend must be one of {valid} on this machine, got {name!r}")
    return name


_choice = _validated(os.environ.get("GMKERNELS_BACKEND", _AUTO))


def set_backend(name: str) -> None:
    """Choose the backend for every op (``"auto"`` or one of :func:`backends`)."""
    global _choice
    _choice = _validated(name)


def get_backend() -> str:
    """The current choice (``"auto"`` unless set)."""
    return _choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """``with use_backend("reference"): ...`` runs the block on that backend, then restores the
    previous choice (also when the block raises)."""
    global _choice
    previous = _choice
    _choice = _validated(name)
    try:
        yield name
    finally:
        _choice = previous


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "cpp":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())


def resolve(op: str, implemented: Iterable[str], device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device`` under the current choice."""
    implemented = tuple(implemented)
    if _choice == _AUTO:
        for name in _usable:
            # The Triton interpreter is a correctness tool: auto never picks it for CPU tensors.
            if name == "triton" and device.type != "cuda":
                continue
            if name in implemented and _runs_on(name, device):
                return name
        raise NotImplementedError(f"{op} has no backend for {device.type} tensors")
    if not _runs_on(_choice, device):
        raise ValueError(f"backend {_choice!r} cannot run {op} on {device.type} tensors")
    if _choice not in implemented:
        raise NotImplementedError(
            f"{op} has no {_choice!r} backend; it has {', '.join(implemented)}"
        )
    return _choice
