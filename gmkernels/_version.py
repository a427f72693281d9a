"""The package version and the torch / Triton versions gmkernels supports.

Plain Python with no imports: setup.py reads this file before torch is importable, and
gmkernels/__init__.py takes ``__version__`` from it, so the version is written once.
"""

__version__ = "0.1.0"

# torch: the oldest release the build is checked against (setup.py refuses older ones) and the
# newest one tested. 2.11 is the GPU machine's (2.11+cu130), 2.13.0 this project's CPU and CUDA
# builds.
TORCH_MINIMUM = (2, 11)
TORCH_NEWEST_TESTED = (2, 13)

# Triton: tl.randint4x splits a 64-bit offset into the counter words (offset lo, offset hi, 0, 0)
# of a 32-bit Philox4x32-10 since Triton 3.4.0; older releases run a 64-bit Philox on int64
# offsets, a different stream from the one the C++, CUDA and reference backends reproduce.
TRITON_MINIMUM = (3, 4)


def release(version: str) -> tuple:
    """(major, minor) of a version string such as "2.13.0+cu130" or "3.7.1"."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def triton_version_problem(version: str):
    """Why Triton ``version`` cannot run gmkernels' Triton kernels, or None when it can."""
    if release(version) >= TRITON_MINIMUM:
        return None
    minimum = ".".join(map(str, TRITON_MINIMUM))
    return (f"gmkernels' triton backend needs triton >= {minimum} (the Philox counter mapping of "
            f"tl.randint4x that every backend reproduces); found triton {version}: the triton "
            f"backend is disabled (pip install 'triton>={minimum}' to enable it)")
