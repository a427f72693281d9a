"""What the benchmarks run on: device facts, and the machine's limits measured in the same run.

Every row is reported as a fraction of the limit that binds it: a case's `bytes_moved` against the
best streaming bandwidth measured here, its `flops` against the fp32 matmul rate (of the case's own
`matmul_shape` when it names one). Limits are measured once per device and shape, then cached.
"""
from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from bench.common import measure

MiB = 1 << 20


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def last_level_cache_bytes() -> Optional[int]:
    """Largest CPU cache (sysfs), so the bandwidth buffers can be sized well beyond it."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    sizes = []
    for index in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        text = (_read(os.path.join(root, index, "size")) or "").strip()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
    return max(sizes) if sizes else None


def _memory_total_bytes() -> Optional[int]:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _version(module_name: str) -> Optional[str]:
    try:
        module = __import__(module_name)
    except Exception:   # absent, or present but broken: either way not part of this run
        return None
    return getattr(module, "__version__", "unknown")


def nvml_facts(device_index: int) -> dict:
    """Driver, clocks, memory and power of one GPU through nvidia-ml-py (pynvml), each fact on
    its own so one query the driver refuses leaves the others."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except Exception as error:   # pynvml.NVMLError and library-load failures
        return {"nvml": f"unavailable: {error}"}

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    facts = {}
    try:
        try:
            # torch's own map from a CUDA index to NVML's (honours CUDA_VISIBLE_DEVICES).
            nvml_index = torch.cuda._get_nvml_device_index(device_index)
        except Exception:
            nvml_index = device_index
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        queries = {
            "name": lambda: text(pynvml.nvmlDeviceGetName(handle)),
            "driver": lambda: text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": lambda: pynvml.nvmlSystemGetCudaDriverVersion(),
            "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "memory_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "memory_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "memory_total_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total,
            "memory_used_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used,
            "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3,
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "performance_state": lambda: pynvml.nvmlDeviceGetPerformanceState(handle),
            "persistence_mode": lambda: pynvml.nvmlDeviceGetPersistenceMode(handle),
        }
        for key, query in queries.items():
            try:
                facts[key] = query()
            except Exception:   # NVMLError_NotSupported and friends: leave the fact out
                pass
    except Exception as error:
        facts["nvml"] = f"unavailable: {error}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return facts


def gpu_facts() -> Optional[dict]:
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    facts = {
        "name": torch.cuda.get_device_name(index),
        "capability": "%d.%d" % torch.cuda.get_device_capability(index),
        "multiprocessors": getattr(properties, "multi_processor_count", None),
        "memory_bytes": getattr(properties, "total_memory", None),
        "l2_cache_bytes": getattr(properties, "L2_cache_size", None),
        "torch_cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }
    facts.update(nvml_facts(index))
    return facts


def device_facts() -> dict:
    import gmkernels
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    facts = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": _memory_total_bytes(),
        # Other work on the machine at the start: the first thing to look at when numbers are noisy.
        "load_average": list(load) if load else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "pykeops": _version("pykeops"),
        "gmkernels": gmkernels.build_info(),
        "backends": list(gmkernels.backends()),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "gpu": gpu_facts(),
    }
    return facts


def device_label(facts: dict) -> str:
    name = (facts.get("gpu") or {}).get("name") or facts["cpu"]
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()[:40]


def matmul_flops(shape: tuple) -> float:
    *batch, m, k, n = shape
    return 2.0 * (batch[0] if batch else 1) * m * k * n


class _Precision:
    """fp32 matmuls at a chosen precision ("highest": true fp32; "high": tf32 on GPUs), restored
    afterwards."""

    def __init__(self, precision: str):
        self.precision = precision

    def __enter__(self):
        self.previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.previous)


class Limits:
    """The machine's limits, measured lazily with the suite's own timer and cached for the run.

    Sizes: bandwidth buffers far beyond the last-level cache (CPU) or L2 (GPU), matmuls big
    enough to reach the library's peak; `scale` < 1 shrinks them for smoke runs, where the numbers
    only prove the machinery works."""

    def __init__(self, repeats: int = 10, scale: float = 1.0, max_seconds: float = 10.0):
        self.repeats = repeats
        self.scale = scale
        self.max_seconds = max_seconds
        self._devices = {}
        self._shapes = {}

    def _time(self, fn, device: str) -> float:
        # A limit is the best the machine does: the fastest run, not the median (on a shared
        # machine the median measures the neighbours too).
        return measure(fn, self.repeats, max_seconds=self.max_seconds, device=device)["min_s"]

    def _bandwidth_bytes(self, device: str) -> int:
        if device == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
            nbytes = max(1 << 30, 16 * (l2 or 0))
        else:
            nbytes = min(max(64 * MiB, 4 * (last_level_cache_bytes() or 0)), 1 << 30)
        return max(MiB, int(nbytes * self.scale) // 4 * 4)

    def _square_matmul_size(self, device: str) -> int:
        return max(64, int((8192 if device == "cuda" else 2048) * self.scale ** 0.5) // 64 * 64)

    def _matmul_rate(self, shape: tuple, device: str, dtype: torch.dtype, precision: str) -> float:
        *batch, m, k, n = shape
        left = torch.randn(*batch, m, k, device=device).to(dtype)
        right = torch.randn(*batch, k, n, device=device).to(dtype)
        with _Precision(precision):
            seconds = self._time(lambda: torch.matmul(left, right), device)
        return matmul_flops(shape) / seconds / 1e9

    def for_device(self, device: str) -> dict:
        """Copy and read bandwidth (GB/s), exp rate (Gelem/s) and matmul rates (GFLOP/s) on `device`,
        measured once."""
        if device in self._devices:
            return self._devices[device]
        nbytes = self._bandwidth_bytes(device)
        source = torch.rand(nbytes // 4, device=device)
        target = torch.empty_like(source)
        copy_s = self._time(lambda: target.copy_(source), device)
        read_s = self._time(lambda: source.sum(), device)
        # The rate of torch's vectorized exp over a large tensor: the roof for exp-heavy kernels
        # (one exp per mixture component and point), output preallocated.
        exp_s = self._time(lambda: torch.exp(source, out=target), device)
        del source, target
        size = self._square_matmul_size(device)
        square = (size, size, size)
        limits = {
            "bandwidth_buffer_bytes": nbytes,
            # A copy reads and writes every byte; the sum only reads (and is the better roof for
            # read-heavy kernels: the binding bandwidth is the better of the two).
            "copy_gb_per_s": 2 * nbytes / copy_s / 1e9,
            "read_gb_per_s": nbytes / read_s / 1e9,
            "exp_gelem_per_s": nbytes / 4 / exp_s / 1e9,
            "matmul_size": size,
            "fp32_matmul_gflop_per_s": self._matmul_rate(square, device, torch.float32, "highest"),
        }
        limits["bandwidth_gb_per_s"] = max(limits["copy_gb_per_s"], limits["read_gb_per_s"])
        if device == "cuda":
            limits["tf32_matmul_gflop_per_s"] = self._matmul_rate(square, device, torch.float32, "high")
            limits["bf16_matmul_gflop_per_s"] = self._matmul_rate(square, device, torch.bfloat16, "highest")
        self._devices[device] = limits
        return limits

    def matmul_rate(self, shape: tuple, device: str) -> float:
        """GFLOP/s of a plain fp32 matmul of `shape` ((M, K, N) or (B, M, K, N)), measured once."""
        key = (tuple(int(dim) for dim in shape), device)
        if key not in self._shapes:
            self._shapes[key] = self._matmul_rate(key[0], device, torch.float32, "highest")
        return self._shapes[key]

    def summary(self) -> dict:
        return {"devices": self._devices,
                "matmul_shapes": [{"shape": list(shape), "device": device, "fp32_gflop_per_s": rate}
                                  for (shape, device), rate in self._shapes.items()]}


def judge(row: dict, case, limits: Limits) -> None:
    """Adds to a timed row its rates and the fraction of the limit that binds it: the roofline
    time of the case (bytes at the measured bandwidth, or FLOPs at the matmul rate, whichever is
    longer) over the measured time."""
    seconds = row["median_s"]
    roofs = {}
    if case.bytes_moved:
        bandwidth = limits.for_device(row["device"])["bandwidth_gb_per_s"]
        row["gb_per_s"] = case.bytes_moved / seconds / 1e9
        row["bandwidth_fraction"] = row["gb_per_s"] / bandwidth
        roofs["bandwidth"] = case.bytes_moved / (bandwidth * 1e9)
    if case.flops:
        peak = limits.for_device(row["device"])["fp32_matmul_gflop_per_s"]
        row["gflop_per_s"] = case.flops / seconds / 1e9
        row["flop_fraction"] = row["gflop_per_s"] / peak
        roofs["fp32 matmul"] = case.flops / (peak * 1e9)
        if case.matmul_shape:
            shaped = limits.matmul_rate(case.matmul_shape, row["device"])
            row["matmul_shape_fraction"] = row["gflop_per_s"] / shaped
            # The same-shape matmul replaces the square one for the FLOPs of that shape: it is the
            # rate such a contraction can reach; any others stay at the square rate.
            del roofs["fp32 matmul"]
            in_shape = case.flops if case.shaped_flops is None else case.shaped_flops
            name = "fp32 matmul " + "x".join(str(dim) for dim in case.matmul_shape)
            if in_shape < case.flops:
                name += " + square"
            roofs[name] = in_shape / (shaped * 1e9) + (case.flops - in_shape) / (peak * 1e9)
    if case.exps:
        exp_rate = limits.for_device(row["device"])["exp_gelem_per_s"]
        exp_seconds = case.exps / (exp_rate * 1e9)
        row["exp_fraction"] = exp_seconds / seconds
        matmul_roofs = [name for name in roofs if name.startswith("fp32 matmul")]
        if matmul_roofs:
            # Both must happen: the bound is the matmul time plus the exp time.
            name = matmul_roofs[0]
            roofs[name + " + exp"] = roofs.pop(name) + exp_seconds
        else:
            roofs["vectorized exp"] = exp_seconds
    if case.items:
        row["items_per_s"] = case.items / seconds
    if roofs:
        limit = max(roofs, key=roofs.get)
        row["limit"] = limit
        row["limit_fraction"] = roofs[limit] / seconds
