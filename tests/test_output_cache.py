"""The CPU output cache (gmkernels/memory.py, csrc/binding/output_memory.cpp): the ops' large CPU
outputs (8 MiB or more) take the kept blocks of freed ones, within GMKERNELS_OUTPUT_CACHE_BYTES,
and a reused block is overwritten whole: no value of an earlier output shows through."""
import gc
import os
import signal
import sys
import threading
import time

import pytest
import torch

import gmkernels
from gmkernels import memory
from test_bindings import _large_outputs, run_isolated

pytestmark = pytest.mark.skipif(not gmkernels.build_info()["compiled"],
                                reason="the cache is the compiled extension's")

MiB = 1 << 20


def sample(rows: int, dim: int = 64) -> torch.Tensor:
    """A mixture_sample output of rows x dim float32 (rows * dim * 4 bytes)."""
    gen = torch.Generator().manual_seed(rows)
    mu, scale = torch.randn(4, dim, generator=gen), torch.rand(4, dim, generator=gen)
    component = torch.randint(4, (rows,), generator=gen)
    return torch.ops.gmkernels.mixture_sample(mu, scale, component, torch.tensor(rows))


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.delenv("GMKERNELS_OUTPUT_CACHE_BYTES", raising=False)
    gc.collect()   # no output of an earlier test left in a cycle, to be freed into a count here
    gmkernels.release_output_cache()
    yield
    gmkernels.release_output_cache()


def test_a_freed_output_is_kept_and_taken_by_the_next_of_its_size():
    z = sample(40000)
    address, size = z.data_ptr(), z.numel() * z.element_size()
    assert gmkernels.output_cache_bytes() == 0
    del z
    assert gmkernels.output_cache_bytes() == size
    again = sample(40000)
    assert again.data_ptr() == address
    assert gmkernels.output_cache_bytes() == 0


def test_small_outputs_do_not_use_the_cache():
    z = sample(30000)   # 7.3 MiB, below the 8 MiB the cache starts at
    del z
    assert gmkernels.output_cache_bytes() == 0


def test_an_output_takes_the_smallest_kept_block_of_at_most_twice_its_size():
    big, middle, little = sample(80000), sample(50000), sample(40000)   # 20.5, 12.8, 10.2 MB
    big_address, middle_address = big.data_ptr(), middle.data_ptr()
    little_address = little.data_ptr()
    del big, middle, little
    small = sample(36000)               # 9.2 MB: the middle and little blocks fit, not the big
    assert small.data_ptr() == little_address
    smaller = sample(34000)             # 8.7 MB: the middle block fits, the big is over 2x
    assert smaller.data_ptr() == middle_address
    smallest = sample(33000)            # 8.4 MB: the big block is over 2x, so a fresh one
    assert smallest.data_ptr() not in (big_address, middle_address, little_address)
    assert gmkernels.output_cache_bytes() == 80000 * 64 * 4
    larger = sample(70000)              # 17.9 MB: fits the big block
    assert larger.data_ptr() == big_address
    assert gmkernels.output_cache_bytes() == 0


def test_the_cache_keeps_the_most_recently_freed_within_its_limit(monkeypatch):
    monkeypatch.setenv("GMKERNELS_OUTPUT_CACHE_BYTES", str(15 * MiB))
    first, second = sample(40000), sample(40000)   # 10.24 MB each: one fits in 15 MiB
    second_address = second.data_ptr()
    del first
    del second
    assert gmkernels.output_cache_bytes() == 40000 * 64 * 4
    assert sample(40000).data_ptr() == second_address
    too_big = sample(70000)                        # 17.9 MB: over the limit, never kept
    del too_big
    assert gmkernels.output_cache_bytes() == 40000 * 64 * 4


def test_a_limit_of_zero_keeps_nothing_and_a_bad_one_names_the_variable(monkeypatch):
    monkeypatch.setenv("GMKERNELS_OUTPUT_CACHE_BYTES", "0")
    z = sample(40000)
    del z
    assert gmkernels.output_cache_bytes() == 0
    for setting in ("-1", "1e9", "lots", " 5"):
        monkeypatch.setenv("GMKERNELS_OUTPUT_CACHE_BYTES", setting)
        with pytest.raises(ValueError, match="GMKERNELS_OUTPUT_CACHE_BYTES"):
            sample(40000)


def test_the_default_limit_is_the_documented_one():
    assert gmkernels.backend.compiled_module().output_cache_limit() == memory.OUTPUT_CACHE_BYTES


def test_release_returns_every_kept_block():
    outputs = [sample(40000), sample(50000)]
    del outputs
    assert gmkernels.output_cache_bytes() == (40000 + 50000) * 64 * 4
    gmkernels.release_output_cache()
    assert gmkernels.output_cache_bytes() == 0


def test_an_output_freed_on_another_thread_is_kept():
    outputs = [sample(40000)]
    thread = threading.Thread(target=outputs.clear)
    thread.start()
    thread.join()
    assert gmkernels.output_cache_bytes() == 40000 * 64 * 4


def test_reused_blocks_are_overwritten_whole():
    """Each large output computed again into the blocks of the first results filled with NaN
    (fresh memory is zeros, which would hide an entry a kernel leaves unwritten)."""
    first = _large_outputs()
    truth = {name: tensor.clone() for name, tensor in first.items()}
    addresses = set()
    for tensor in first.values():
        tensor.fill_(float("nan"))
        addresses.add(tensor.data_ptr())
    del first, tensor
    second = _large_outputs()
    assert {tensor.data_ptr() for tensor in second.values()} == addresses
    for name, tensor in second.items():
        assert torch.equal(tensor, truth[name]), name


def test_an_output_from_the_cache_is_an_ordinary_tensor():
    z = sample(40000)
    values = z.clone()
    z.resize_(50000, 64)                           # a resize goes through the same allocator
    assert torch.equal(z[:40000], values)
    shared = sample(40000).share_memory_()
    assert shared.is_shared() and torch.equal(shared, values)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_forked_child_allocates_and_frees_outputs():
    """The cache's lock is taken around a fork and released on both sides (a DataLoader's
    workers fork): a child holding a copy of kept blocks reuses them and frees its outputs. The
    child runs on one thread, as a DataLoader worker does: OpenMP's thread pool does not survive
    a fork (torch's own ops hang in it too)."""
    kept = sample(40000)
    del kept
    pid = os.fork()
    if pid == 0:   # the child: never back into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            z = sample(40000)
            code = 0 if gmkernels.output_cache_bytes() == 0 else 2
            del z
            code = code or (0 if gmkernels.output_cache_bytes() == 40000 * 64 * 4 else 3)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:   # a child stuck on the lock fails the test instead of hanging it
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not done:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done, "the forked child hung"
    assert os.waitstatus_to_exitcode(status) == 0
    assert gmkernels.output_cache_bytes() == 40000 * 64 * 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux counts it")
def test_where_the_system_refuses_a_block_the_kept_ones_are_freed_first():
    """Under an address-space limit that has room for a new 123 MB output only without the kept
    102 MB block (a fresh process: the limit would bind pytest too)."""
    result = run_isolated("""
        import resource
        from test_output_cache import sample
        kept = sample(400000)                 # 102.4 MB
        del kept
        assert gmkernels.output_cache_bytes() == 400000 * 64 * 4
        with open("/proc/self/status") as status:
            size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        # 60 MB more than now (the kept block counted in it): too little for a new 123 MB block
        # beside it, room enough once it is gone
        resource.setrlimit(resource.RLIMIT_AS, (size + (60 << 20), resource.RLIM_INFINITY))
        z = sample(480000)                    # 122.9 MB: fits only once the kept block is gone
        assert gmkernels.output_cache_bytes() == 0
        print("ok", z.shape[0])
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ok", "480000"]
