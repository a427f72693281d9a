"""Build of gmkernels and its extension gmkernels._C (the one build description of the project).

    pip install --no-build-isolation -e .      # against the torch already installed

The C++ CPU kernels are always built (OpenMP, -O3). The CUDA kernels are built when torch has CUDA
and a CUDA toolkit is found; GMKERNELS_CUDA=1 forces them (the build fails without a CUDA toolkit)
and GMKERNELS_CUDA=0 leaves them out. GMKERNELS_MARCH sets -march (default "native"; "" for none).
TORCH_CUDA_ARCH_LIST picks the GPU archs (default DEFAULT_CUDA_ARCHS). The flags below are also
what tests/test_build.py compiles every kernel with.

Supported: torch 2.11 to 2.13 (older ones are refused), Triton >= 3.4 for the triton backend
(gmkernels/_version.py says why).
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.abspath(__file__))

CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
# --fmad=false keeps the Philox normals within a few ulp of the CPU's.
NVCC_FLAGS = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def package_versions() -> dict:
    """gmkernels/_version.py's names, read without importing gmkernels (which needs its _C)."""
    names = {}
    with open(os.path.join(ROOT, "gmkernels", "_version.py")) as source:
        exec(source.read(), names)
    return names


def cuda_toolkit():
    """The CUDA toolkit folder (one holding bin/nvcc and include/cuda_runtime_api.h), or None.

    torch guesses CUDA_HOME from the nvcc on PATH, which is wrong where that nvcc is a wrapper
    script or a symlink outside the toolkit (e.g. /usr/local/bin/nvcc: torch then looks for the
    headers under /usr/local). Candidates, in order: $CUDA_HOME / $CUDA_PATH, the real location of
    the nvcc on PATH, the toolkit that nvcc reports running from (`nvcc --dryrun` prints TOP=),
    /usr/local/cuda. A candidate without nvcc or the runtime headers is skipped, with a note.
    """
    def is_toolkit(folder):
        return bool(folder) and os.path.isfile(os.path.join(folder, "bin", "nvcc")) and \
            os.path.isfile(os.path.join(folder, "include", "cuda_runtime_api.h"))

    for variable in ("CUDA_HOME", "CUDA_PATH"):
        folder = os.environ.get(variable)
        if folder:
            if is_toolkit(folder):
                return folder
            print(f"gmkernels setup: {variable}={folder} has no bin/nvcc and "
                  "include/cuda_runtime_api.h; looking elsewhere", file=sys.stderr)
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            dryrun = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o",
                                     os.devnull], capture_output=True, text=True, timeout=60)
            for line in (dryrun.stdout + dryrun.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    candidates.append(os.path.normpath(line.split("=", 1)[1].strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for folder in candidates:
        if is_toolkit(folder):
            return os.path.realpath(folder)
    return None


def want_cuda(torch, toolkit) -> bool:
    switch = os.environ.get("GMKERNELS_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if switch in ("1", "true", "yes", "on"):
        if torch.version.cuda is None:
            sys.exit(f"gmkernels setup: GMKERNELS_CUDA=1 but torch {torch.__version__} has no CUDA")
        if toolkit is None:
            sys.exit("gmkernels setup: GMKERNELS_CUDA=1 but no CUDA toolkit was found "
                     "(set CUDA_HOME to the folder holding bin/nvcc and include/)")
        return True
    return torch.version.cuda is not None and toolkit is not None


def loaded_libstdcxx() -> str:
    """The path of the libstdc++ shared library this process has loaded (torch links it), or ""
    (not Linux, or a torch without it)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split(maxsplit=5)[-1].strip() for line in maps if line.count(" ") >= 5]
    except OSError:
        return ""
    return next((path for path in paths if os.path.basename(path).startswith("libstdc++.so")), "")


def link_args() -> list:
    """-fopenmp, and the libstdc++ that torch runs with, named as a linker input ahead of the
    compiler's own libraries: a compiler that links libstdc++ statically by default (seen: a GCC
    13.3 in /opt/gcc on a GPU machine's image) put a second libstdc++ into _C beside the one the
    process runs, and the first error message with a number in it (a TORCH_CHECK) crashed the
    process inside the static copy's number formatting. Named here, every libstdc++ symbol binds
    to the shared library, which _C then lists as needed, as torch's own libraries do."""
    libstdcxx = loaded_libstdcxx()
    return ["-fopenmp"] + ([libstdcxx] if libstdcxx else [])


def libstdcxx_problem(library: str) -> str:
    """What is wrong with how `library` takes libstdc++, or "" (also when readelf is missing)."""
    try:
        dynamic = subprocess.run(["readelf", "-dW", library], capture_output=True, text=True)
    except OSError:
        return ""
    if dynamic.returncode != 0 or "Shared library: [libstdc++.so" in dynamic.stdout:
        return ""
    return (f"{os.path.basename(library)} does not load libstdc++ as a shared library: the C++ "
            "compiler linked a copy of it in, and C++ error messages would crash the process. "
            "Build with a compiler that links it as a shared library (e.g. CXX=/usr/bin/g++).")


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def main():
    versions = package_versions()
    try:
        import torch
    except ModuleNotFoundError:
        # What a plain `pip install -e .` meets: pip builds in an isolated environment without
        # torch, and pulling an unpinned (several-GB, maybe ABI-incompatible) torch in there to
        # build against is worse than stopping.
        sys.exit("gmkernels builds against your installed torch: install torch, then run "
                 "`pip install --no-build-isolation -e .` (or `pip install --no-build-isolation .`)")
    minimum = ".".join(map(str, versions["TORCH_MINIMUM"]))
    newest = ".".join(map(str, versions["TORCH_NEWEST_TESTED"]))
    found = versions["release"](torch.__version__)
    if found < versions["TORCH_MINIMUM"]:
        sys.exit(f"gmkernels needs torch >= {minimum} (tested {minimum} to {newest}); "
                 f"found {torch.__version__}")
    if found > versions["TORCH_NEWEST_TESTED"]:
        print(f"gmkernels setup: torch {torch.__version__} is newer than the newest tested "
              f"({newest})", file=sys.stderr)

    toolkit = cuda_toolkit()
    with_cuda = want_cuda(torch, toolkit)
    if with_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is first imported (just below).
        os.environ["CUDA_HOME"] = toolkit
        print(f"gmkernels setup: building the CUDA kernels with the toolkit in {toolkit}",
              file=sys.stderr)

    from setuptools import find_packages, setup
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    class BuildExtensionKeepingObjects(BuildExtension):
        """pip's editable install (`pip install -e .`) builds in a fresh temporary folder each
        time, compiling every file again; keeping the object files in build/ (where
        `setup.py build_ext --inplace` keeps them too) lets ninja recompile only what changed."""

        def finalize_options(self):
            super().finalize_options()
            if getattr(self, "editable_mode", False):
                self.build_temp = os.path.join(
                    ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")

        def build_extension(self, ext):
            super().build_extension(ext)
            problem = libstdcxx_problem(self.get_ext_fullpath(ext.name))
            if problem:
                sys.exit(f"gmkernels setup: {problem}")

    cxx_flags = list(CXX_FLAGS)
    march = os.environ.get("GMKERNELS_MARCH", "native")
    if march:
        cxx_flags.append(f"-march={march}")
    defines = [
        ("GMKERNELS_VERSION", f'"{versions["__version__"]}"'),
        ("GMKERNELS_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    files = sources("csrc/binding/*.cpp") + sources("csrc/cpu/*.cpp")
    if with_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        defines += [("GMKERNELS_WITH_CUDA", None), ("GMKERNELS_CUDA_ARCHS", f'"{arch_list}"')]
        extension = CUDAExtension(
            "gmkernels._C",
            files + sources("csrc/cuda/*.cu"),
            define_macros=defines,
            extra_compile_args={"cxx": cxx_flags, "nvcc": list(NVCC_FLAGS)},
            extra_link_args=link_args(),
        )
    else:
        extension = CppExtension(
            "gmkernels._C",
            files,
            define_macros=defines,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_args(),
        )

    train = ["scikit-learn", "safetensors", "matplotlib", "pyyaml"]
    setup(
        name="gmkernels",
        version=versions["__version__"],
        description="Fused PyTorch kernels for mixture-prior GANs (DeLiGAN, GM-GAN, MD-GAN)",
        packages=find_packages(include=["gmkernels", "gmkernels.*"])
        + find_packages(where="python", include=["gmgan", "gmgan.*"]),
        package_dir={"gmgan": "python/gmgan"},
        ext_modules=[extension],
        cmdclass={"build_ext": BuildExtensionKeepingObjects},
        python_requires=">=3.10",
        # A lower bound only: the build above already refused an older torch, and an upper bound
        # would let pip replace the torch the extension was just built against.
        install_requires=[f"torch>={minimum}", "numpy", "scipy", "tqdm"],
        extras_require={
            "triton": ["triton>={}.{}".format(*versions["TRITON_MINIMUM"])],
            # What `gmgan` (python/gmgan) imports beyond the base package.
            "train": train,
            "test": ["pytest", "hypothesis"] + train,
            "bench": ["matplotlib", "nvidia-ml-py"],
            # KeOps' LazyTensor reductions: a peer in the benchmarks when importable (it compiles
            # its formulas with the system C++ compiler, or nvcc on a GPU).
            "keops": ["pykeops"],
        },
        entry_points={"console_scripts": ["gmgan=gmgan.cli:main"]},
    )


# setuptools (and `python setup.py`) run this file as __main__; tests/test_build.py loads it
# under another name for the flags above, without building.
if __name__ == "__main__":
    main()
