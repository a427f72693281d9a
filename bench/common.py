"""The one timer, the one memory probe and the case description shared by every benchmark section.

A section (`bench/ops/<op>.py`) returns `Case`s; each case is one op at one size in one mode with
the `Contender`s to run side by side. `bench/run.py` times every contender with `measure`, judges it
against the machine's limits (`bench/machine.py`) and writes the results (`bench/report.py`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional

import torch


@dataclasses.dataclass
class Contender:
    """One implementation timed in a case (a kernel backend, the reference, a compiled formula)."""
    name: str                      # e.g. "gmkernels[cpp]", "reference eager", "plain compile", "pykeops"
    run: Callable[[], object]      # one full call (forward, or forward + backward); return the output
    setup: Optional[Callable[[], None]] = None  # untimed, e.g. torch.compile warm-up
    # Whether the first call compiles (torch.compile, KeOps): `--smoke` leaves these out. None: a
    # name containing "compile", or the pykeops contender.
    jit: Optional[bool] = None

    @property
    def compiles(self) -> bool:
        return self.jit if self.jit is not None else ("compile" in self.name or self.name == "pykeops")

    @property
    def backend(self) -> Optional[str]:
        """The backend this contender stands for ("cpp" for "gmkernels[cpp]", "pykeops"), None for the
        reference and plain-PyTorch contenders (which `--backend` never filters out)."""
        if self.name.startswith("gmkernels[") and self.name.endswith("]"):
            return self.name[len("gmkernels["):-1]
        return "pykeops" if self.name == "pykeops" else None


@dataclasses.dataclass
class Case:
    op: str
    size: str                      # e.g. "N=100 K=512 n=65536" (`--sizes` matches on this label)
    mode: str                      # "forward", "forward+backward" (a training step: "train step")
    contenders: list
    bytes_moved: Optional[float] = None   # minimal bytes a call must read + write (bandwidth fraction)
    flops: Optional[float] = None         # useful FLOPs of a call (FLOP-rate fraction)
    baseline: str = "reference eager"    # speed-ups are reported against this contender
    targets: dict = dataclasses.field(default_factory=dict)  # contender -> min speed-up vs baseline
    # A plain fp32 matmul of this shape, (M, K, N) or (B, M, K, N), is timed in the same run and
    # `flops` is judged against its rate: the honest roof for an op whose work is a contraction of
    # that shape (a huge square matmul's rate is out of reach for a skinny one).
    matmul_shape: Optional[tuple] = None
    # Of `flops`, the part done by matmuls of `matmul_shape` (a forward's skinny product); the
    # rest (e.g. a backward's products, whose inner dimension is the long one) is judged at the
    # square fp32 matmul rate. None: all of `flops`.
    shaped_flops: Optional[float] = None
    # The contender to beat besides the baseline (default: the baseline's compiled twin, e.g.
    # "reference compile" for "reference eager"), and min speed-ups vs that peer.
    peer: Optional[str] = None
    peer_targets: dict = dataclasses.field(default_factory=dict)
    note: str = ""                        # why a row misses its target (shown with the miss)
    # Time the contenders in turn (measure_interleaved) instead of one after the other: for
    # contenders whose difference is smaller than the machine's drift over a run.
    interleave: bool = False
    items: Optional[int] = None           # samples per call (training steps): reported as items/s
    device: Optional[str] = None          # "cpu" / "cuda"; None: the device of the contenders' output
    # torch.set_num_threads while this case runs (the run's setting is restored after); None:
    # the run's. Rows report the count they ran with.
    threads: Optional[int] = None
    # The sweep (`run.py --sweep`): the contenders that are what a user writes (plain eager, its
    # torch.compile, pykeops); the best of those present is the ratio's denominator, never the
    # reference. `exps`: exponentials a call must evaluate (judged at the measured torch.exp rate,
    # added to the matmul time when the case also has `flops`). `work`: the size along the sweep
    # plot's axis, named by `work_label`. `skipped`: (contender, why) left out at this size.
    peers: tuple = ()
    exps: Optional[float] = None
    work: Optional[float] = None
    work_label: str = ""
    skipped: list = dataclasses.field(default_factory=list)
    # Builds the contenders (and their inputs) when the case runs, and they are dropped after it:
    # a sweep of many sizes holds one size's tensors at a time. None: `contenders` as given.
    build: Optional[Callable[[], list]] = None

    @property
    def peer_name(self) -> str:
        return self.peer or self.baseline.replace("eager", "compile")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def output_device(value) -> Optional[str]:
    """Device type of the first tensor in a call's output (tensors, tuples, lists, dicts)."""
    if isinstance(value, torch.Tensor):
        return value.device.type
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = output_device(item)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=None)
def _l2_flush_buffer(device_index: int) -> torch.Tensor:
    """A buffer larger than the GPU's L2 (>= 256 MiB, as triton.testing.do_bench uses): zeroing it
    before each timed call evicts what the previous call left in L2."""
    l2_bytes = getattr(torch.cuda.get_device_properties(device_index), "L2_cache_size", 0) or 0
    size = max(256 << 20, 2 * l2_bytes)
    return torch.empty(size // 4, dtype=torch.int32, device=f"cuda:{device_index}")


def _timed_cuda(fn: Callable[[], object]) -> float:
    flush = _l2_flush_buffer(torch.cuda.current_device())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flush.zero_()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _timed_wall(fn: Callable[[], object]) -> float:
    begin = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - begin


CPU_MEMORY_METHOD = ("high-water mark of live torch CPU-allocator bytes over one call (torch.profiler "
                     "memory events; allocations outside torch's allocator are not seen)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated over one call, minus what was allocated before"


# Lines torch's profiler writes to stderr by itself around a memory probe: Kineto's start and stop
# (logged from C++, whatever KINETO_LOG_LEVEL says once torch is loaded), and the CPU allocator's
# note on every block freed during the probe that was allocated before it started (expected: the
# probe counts what the call allocates, and a training step frees the previous step's tensors).
PROFILER_NOISE = ("] profiler_start", "] profiler_stop",
                  "Memory block of unknown size was allocated before the profiling started")


@contextlib.contextmanager
def _profiler_noise_filtered():
    """Sends file descriptor 2 to a temporary file while the probe runs, then writes back every
    line but the profiler's own: what the probed call itself prints still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(noise in line for noise in PROFILER_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def peak_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Bytes allocated during one call of `fn` above what was live before it, at the worst moment
    (outputs included). None when the probe is unavailable."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        output = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del output
        return peak
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _profiler_noise_filtered():
        try:
            prof.start()
        except RuntimeError:   # another profiler is already running (the suite run under a profiler)
            return None
        try:
            output = fn()
        finally:
            prof.stop()
    del output
    try:
        events = prof.profiler.kineto_results.events()
        changes = sorted((event.start_ns(), event.nbytes()) for event in events
                         if event.name() == "[memory]" and event.device_type().name == "CPU")
    except AttributeError:   # the profiler's result objects differ on this torch build
        return None
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


def warm_up(fn: Callable[[], object], warmup: int, device: Optional[str], track_memory: bool) -> dict:
    """The first call timed alone (it holds compile time), then the other warm-up calls, the
    last one under the memory probe with `track_memory`."""
    calls = max(warmup, 2 if track_memory else 1)
    begin = time.perf_counter()
    output = fn()
    synchronize()
    first_call_s = time.perf_counter() - begin
    device = torch.device(device).type if device else output_device(output) or "cpu"
    del output
    peak = None
    for call in range(1, calls):
        if track_memory and call == calls - 1:
            peak = peak_memory(fn, device)
        else:
            fn()
    synchronize()
    state = {"first_call_s": first_call_s, "device": device,
             "timer": "cuda events, L2 flushed" if device == "cuda" else "wall clock"}
    if track_memory:
        state["peak_bytes"] = peak
    return state


def _summary(state: dict, times: list) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times), **state}


def _time_in_turn(fns: list, states: list, repeats: int, max_seconds: float, min_repeats: int,
                  min_seconds: float = 0.0, max_rounds: int = 0, peers: Optional[list] = None,
                  retire_factor: float = 0.0) -> list:
    """Seconds of each timed call, one list per function: up to `repeats` rounds of one call of
    each in turn (each round starting one function later than the last), fewer (but at least `min_repeats`) once `max_seconds` per function is spent;
    then more rounds, up to `max_rounds` in all, while less than `min_seconds` per function is
    spent: a median of five sub-millisecond calls is decided by the machine's noise (ratios of
    the same build moved 2x between sweeps on a shared 2-core VM), one of fifty much less so.

    With `retire_factor`, gmkernels' functions (``peers[i]`` None) run every round; the others
    (True: a peer, False: context such as the reference) leave the rounds once their fastest call
    took more than `retire_factor` times the fastest peer call so far: a contender that much
    slower cannot be the best peer (the machine's noise is below 2x), and its further calls,
    seconds each at large sizes, would only cost the sweep its time budget."""
    timers = [_timed_cuda if state["device"] == "cuda" else _timed_wall for state in states]
    times = [[] for _ in fns]
    retired = [False] * len(fns)
    started = time.perf_counter()
    round_index = 0
    while True:
        # Round r starts at contender r (mod their number): a call right after a heavy one runs
        # slow (its caches evicted, the memory it freed faulted back in), so a fixed order would
        # charge that to whoever always comes first (measured: one compiled call 0.17 ms in one
        # place of the order, 0.39 ms right after a 4.6 ms contender).
        for step in range(len(fns)):
            index = (round_index + step) % len(fns)
            if not retired[index]:
                times[index].append(timers[index](fns[index]))
        round_index += 1
        if retire_factor and peers is not None:
            fastest_peer = min((min(own) for own, peer in zip(times, peers) if peer), default=None)
            for index, (own, peer) in enumerate(zip(times, peers)):
                if peer is not None and fastest_peer is not None and min(own) > retire_factor * fastest_peer:
                    retired[index] = True
        active = [own for own, gone in zip(times, retired) if not gone]
        if not active:
            break
        rounds, spent = max(len(own) for own in active), time.perf_counter() - started
        if rounds >= min_repeats and spent > max_seconds * len(active):
            break
        if rounds >= repeats and (rounds >= max_rounds or spent >= min_seconds * len(active)):
            break
    return times


def measure(fn: Callable[[], object], repeats: int, warmup: int = 2, max_seconds: float = 20.0,
            min_repeats: int = 3, device: Optional[str] = None, track_memory: bool = False,
            min_seconds: float = 0.0, max_rounds: int = 0) -> dict:
    """Median time of `fn` over `repeats` runs after `warmup` runs (fewer repeats, but at least
    `min_repeats`, once `max_seconds` is spent, so a quick run stays quick).

    GPU work (`device` "cuda", or None and the output lives on a GPU) is timed with CUDA events
    with the L2 flushed before each run; CPU work with a wall clock. The first call is timed on
    its own (it holds compile time). With `track_memory` the last warm-up runs under the memory
    probe (`peak_memory`)."""
    state = warm_up(fn, warmup, device, track_memory)
    return _summary(state, _time_in_turn([fn], [state], repeats, max_seconds, min_repeats,
                                         min_seconds, max_rounds)[0])


def measure_interleaved(fns: list, states: list, repeats: int, max_seconds: float = 20.0,
                        min_repeats: int = 3, min_seconds: float = 0.0, max_rounds: int = 0,
                        peers: Optional[list] = None, retire_factor: float = 0.0) -> list:
    """`measure` for several functions, each already warmed up (`warm_up` gave `states`), timed
    in turn (A B C A B C ...): for contenders whose times differ by less than the machine drifts
    over a run (whole training steps on a shared CPU drift by 30 % within seconds), timing each
    after the other would measure the drift. `max_seconds` is per function, as in `measure`."""
    times = _time_in_turn(fns, states, repeats, max_seconds, min_repeats, min_seconds, max_rounds, peers,
                          retire_factor)
    return [{**_summary(state, own), "timer": state["timer"] + ", interleaved"}
            for state, own in zip(states, times)]


def bench_devices() -> list:
    """The devices an op section times its kernels on: the CPU, and the GPU where there is one."""
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def kernel_backends(backends, device: torch.device, implemented=None) -> list:
    """The gmkernels kernel backends timed on tensors of `device`: cpp on the CPU, cuda and
    triton on a GPU (Triton also runs CPU tensors under its interpreter, a correctness tool, not
    timed); only those in `backends` (usable here) and, when given, in `implemented`."""
    wanted = ("cuda", "triton") if device.type == "cuda" else ("cpp",)
    return [name for name in wanted if name in backends and (implemented is None or name in implemented)]


@functools.lru_cache(maxsize=None)
def pykeops_lazy_tensor():
    """pykeops.torch.LazyTensor when KeOps is installed and loads, else None (an optional extra)."""
    try:
        from pykeops.torch import LazyTensor
    except Exception:   # not installed, or no compiler / CUDA toolkit it can use
        return None
    return LazyTensor


def pykeops_contenders(make_run: Callable[[type], Callable[[], object]]) -> list:
    """[Contender("pykeops", make_run(LazyTensor))] when KeOps is importable, else []: a section adds
    KeOps's lazy-tensor formulation of its op as a peer this way. KeOps compiles a formula on its
    first call (cached on disk), so the contender counts as compiling."""
    lazy_tensor = pykeops_lazy_tensor()
    return [] if lazy_tensor is None else [Contender("pykeops", make_run(lazy_tensor), jit=True)]


# The sweep leaves out a naive peer whose intermediates would need more than this (and says so).
SWEEP_MEMORY_BUDGET_BYTES = 8 << 30


def fits_memory(nbytes: float, budget: float = SWEEP_MEMORY_BUDGET_BYTES) -> bool:
    return nbytes <= budget


def too_big(name: str, nbytes: float) -> tuple:
    """The (contender, why) a sweep case lists in `skipped` for a peer left out for its memory."""
    return (name, f"would hold about {nbytes / 2**30:.1f} GiB (over the sweep's "
                  f"{SWEEP_MEMORY_BUDGET_BYTES / 2**30:.0f} GiB budget)")


class CompiledPeers:
    """torch.compile of a user's formula, one per formula and variant (e.g. the mode, the kind of
    variance), made on first use and kept for the whole sweep: a user's compiled function that
    meets the sweep's sizes in turn runs static-shape code at its first size and dynamic-shape
    code after one recompile, torch.compile's default."""

    def __init__(self):
        self.functions = {}

    def __call__(self, formula: Callable, variant) -> Callable:
        if (formula, variant) not in self.functions:
            self.functions[formula, variant] = torch.compile(formula)
        return self.functions[formula, variant]
