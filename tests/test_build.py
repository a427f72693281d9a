"""The build: every CUDA kernel compiles with plain nvcc (no torch headers) and every CPU kernel
with the plain C++ compiler, both with setup.py's own flags; one version string; the Triton in
place runs the Philox counter mapping every backend reproduces."""
import glob
import os
import runpy
import shutil
import subprocess

import pytest
import torch

import gmkernels
from gmkernels import _version
from gmkernels.reference.philox import philox4x32_10

from conftest import backend_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
# setup.py's names (flags, archs, versions); loaded under another name, it builds nothing.
SETUP = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="gmkernels_setup")


def test_cuda_kernels_include_no_torch_header():
    for path in CUDA_SOURCES + glob.glob(os.path.join(ROOT, "csrc", "kernels", "*.h")) + \
            glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")):
        text = open(path).read()
        for header in ("<torch/", "<ATen/", "<c10/"):
            assert header not in text, f"{path} includes {header}: kernels must stay torch-free"


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=os.path.basename)
def test_nvcc_compiles_kernel_for_the_default_archs(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: CUDA kernels are not compile-checked on this machine")
    archs = [arch.replace(".", "") for arch in SETUP["DEFAULT_CUDA_ARCHS"].split(";")]
    gencode = [flag for arch in archs for flag in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    command = [nvcc, "-c", source, "-o", str(tmp_path / "kernel.o"), "-std=c++17",
               *SETUP["NVCC_FLAGS"], *gencode]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def test_cpu_kernels_build_without_torch(tmp_path):
    """The torch-free kernel library compiles with the plain C++ compiler and setup.py's flags
    (at -O1: this checks the code, not the optimizer, and -O3 takes minutes on a small machine)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    flags = [flag for flag in SETUP["CXX_FLAGS"] if not flag.startswith("-O")] + ["-O1"]
    for source in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))):
        command = [compiler, "-std=c++17", *flags, "-c", source,
                   "-o", str(tmp_path / "kernel.o")]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.skipif(not (shutil.which("g++") and shutil.which("readelf")), reason="needs g++ and readelf")
def test_link_args_bind_libstdcxx_to_the_shared_library_even_where_the_compiler_links_it_in(tmp_path):
    """A compiler that links libstdc++ statically by default (seen on a GPU machine's image: the
    first TORCH_CHECK message with a number crashed there) is played by g++ -static-libstdc++:
    its library carries a copy and setup's check names it; with setup.py's link arguments the
    library lists libstdc++ as needed and carries none."""
    source = tmp_path / "number.cpp"
    source.write_text('#include <sstream>\n#include <string>\n'
                      'std::string number(long n) { std::ostringstream s; s << n; return s.str(); }\n')
    compiled = {}
    for name, extra in (("static", []), ("setup", SETUP["link_args"]())):
        compiled[name] = tmp_path / f"lib{name}.so"
        command = ["g++", "-shared", "-fPIC", "-static-libstdc++", str(source), "-o", str(compiled[name]), *extra]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]
    assert "does not load libstdc++ as a shared library" in SETUP["libstdcxx_problem"](str(compiled["static"]))
    assert SETUP["libstdcxx_problem"](str(compiled["setup"])) == ""


def test_the_built_extension_loads_libstdcxx_as_a_shared_library():
    if not gmkernels.build_info()["compiled"] or not shutil.which("readelf"):
        pytest.skip("no compiled extension, or no readelf")
    assert SETUP["libstdcxx_problem"](gmkernels._C.__file__) == ""


def test_one_version_string_for_the_package_setup_and_the_extension():
    assert gmkernels.__version__ == _version.__version__ == SETUP["package_versions"]()["__version__"]
    info = gmkernels.build_info()
    if info["compiled"]:
        assert info["version"] == _version.__version__, "gmkernels._C is stale: rebuild it"


@pytest.mark.parametrize("version, usable", [("3.3.1", False), ("3.4.0", True), ("3.6.0", True),
                                             ("3.7.1", True), ("3.10.0", True), ("2.3.1", False)])
def test_triton_older_than_the_philox_mapping_is_refused(version, usable):
    problem = _version.triton_version_problem(version)
    assert (problem is None) == usable
    if problem:
        assert "triton >= 3.4" in problem and version in problem


def test_installed_triton_philox_equals_the_reference_beyond_32_bit_offsets():
    """tl.randint4x on int64 offsets is the 32-bit Philox4x32-10 with counter (offset lo, offset
    hi, 0, 0) and key (seed lo, seed hi) — what every backend reproduces. Triton < 3.4 runs a
    64-bit Philox on such offsets and fails here."""
    if "triton" not in gmkernels.backends():
        pytest.skip(f"triton backend not usable here ({gmkernels.backends()})")
    import triton
    import triton.language as tl

    @triton.jit
    def randint4x_kernel(out_ptr, seed, first_offset, BLOCK: tl.constexpr):
        index = tl.arange(0, BLOCK)
        a, b, c, d = tl.randint4x(seed, first_offset + index.to(tl.int64))
        tl.store(out_ptr + 4 * index, a)
        tl.store(out_ptr + 4 * index + 1, b)
        tl.store(out_ptr + 4 * index + 2, c)
        tl.store(out_ptr + 4 * index + 3, d)

    seed, first_offset, block = 2**40 + 12345, 2**32 - 3, 8   # offsets cross 2^32
    out = torch.empty(block, 4, dtype=torch.int32, device=backend_device("triton"))
    randint4x_kernel[(1,)](out, seed, first_offset, BLOCK=block)
    want = torch.stack(philox4x32_10(torch.tensor(seed), torch.arange(first_offset, first_offset + block)), 1)
    assert torch.equal(out.cpu().to(torch.int64) & 0xFFFFFFFF, want)
