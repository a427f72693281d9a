"""The one timer and the case description shared by every benchmark section."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch


@dataclasses.dataclass
class Variant:
    name: str                      # e.g. "gmkernels[cpp]", "reference eager", "plain compile"
    run: Callable[[], object]      # one full call (forward, or forward + backward)
    setup: Optional[Callable[[], None]] = None  # untimed, e.g. torch.compile warm-up


@dataclasses.dataclass
class Case:
    op: str
    size: str                      # e.g. "N=100 K=512 n=65536"
    mode: str                      # "forward" or "forward+backward"
    variants: list
    bytes_moved: Optional[float] = None   # minimal bytes a forward must touch (bandwidth fraction)
    flops: Optional[float] = None         # useful FLOPs (FLOP-rate fraction)
    baseline: str = "reference eager"    # speed-ups are reported against this variant
    targets: dict = dataclasses.field(default_factory=dict)  # variant -> min speed-up vs baseline


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], repeats: int, warmup: int = 2, max_seconds: float = 20.0) -> dict:
    """Median wall time of `fn` over `repeats` runs after `warmup` runs (fewer repeats when one run
    is slow, so a quick run stays quick)."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    started = time.perf_counter()
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - begin)
        if time.perf_counter() - started > max_seconds and len(times) >= 3:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}
