"""Build of gmkernels and its extension gmkernels._C.

The C++ CPU kernels are always built (OpenMP, -O3). The CUDA kernels are built when torch has CUDA
and nvcc is found; GMKERNELS_CUDA=1 forces them (the build fails without a CUDA toolchain) and
GMKERNELS_CUDA=0 leaves them out. GMKERNELS_MARCH sets -march (default "native"; "" for none).
"""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    switch = os.environ.get("GMKERNELS_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if switch in ("1", "true", "yes", "on"):
        return True
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    return torch.version.cuda is not None and has_nvcc


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    with_cuda = want_cuda()
    march = os.environ.get("GMKERNELS_MARCH", "native")
    cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    if march:
        cxx_flags.append(f"-march={march}")
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    defines = [
        ("GMKERNELS_VERSION", f'"{VERSION}"'),
        ("GMKERNELS_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    files = sources("csrc/binding/*.cpp") + sources("csrc/cpu/*.cpp")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", arch_list)
        defines += [("GMKERNELS_WITH_CUDA", None), ("GMKERNELS_CUDA_ARCHS", f'"{arch_list}"')]
        return CUDAExtension(
            "gmkernels._C",
            files + sources("csrc/cuda/*.cu"),
            define_macros=defines,
            extra_compile_args={
                "cxx": cxx_flags,
                # --fmad=false keeps the Philox normals within a few ulp of the CPU's.
                "nvcc": ["-O3", "--fmad=false", "--expt-relaxed-constexpr"],
            },
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "gmkernels._C",
        files,
        define_macros=defines,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="gmkernels",
    version=VERSION,
    description="Fused PyTorch kernels for mixture-prior GANs (DeLiGAN, GM-GAN, MD-GAN)",
    packages=find_packages(include=["gmkernels", "gmkernels.*"])
    + find_packages(where="python", include=["gmgan", "gmgan.*"]),
    package_dir={"gmgan": "python/gmgan"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "scipy", "tqdm"],
    extras_require={
        "triton": ["triton"],
        "train": ["scikit-learn", "safetensors", "matplotlib", "pyyaml"],
        "test": ["pytest", "hypothesis", "scikit-learn", "safetensors", "matplotlib", "pyyaml"],
        "bench": ["matplotlib", "nvidia-ml-py"],
        # KeOps' LazyTensor reductions: a peer in the benchmarks when importable (it compiles its
        # formulas with the system C++ compiler, or nvcc on a GPU).
        "keops": ["pykeops"],
    },
    entry_points={"console_scripts": ["gmgan=gmgan.cli:main"]},
)
