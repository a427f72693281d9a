"""What the ops' value checks cost a call: each op timed with them on and off, side by side.

    python bench/value_checks.py [--smoke] [--device cuda]

On a GPU a value check reads a few numbers back to the host: the call waits for the GPU, and
calls no longer queue up behind each other. Each row times a loop of calls with one
synchronization at its end (what a training loop does), checks on and off in alternating
rounds, and prints a Markdown table: the median time per call of each, and their ratio.
`gmkernels.value_checks(False)` is the switch a user would flip.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import gmkernels

# op: (size label, the call's inputs at full size, at smoke size)
SIZES = {
    "class_pairwise_kl": ("N={} C={}", (20000, 100), (64, 5)),
    "mixture_log_likelihood": ("B={} C={} d={}", (1024, 1000, 64), (16, 8, 4)),
    "mixture_sample": ("N={} K={} n={}", (100, 64, 65536), (4, 4, 64)),
    "minibatch_discrimination": ("N={} B={} C={}", (256, 100, 5), (16, 4, 3)),
}


def make_call(op: str, size: tuple, device: torch.device):
    """The op's call on random inputs of `size` on `device` (inputs made once, outside the timing)."""
    gen = torch.Generator().manual_seed(0)
    if op == "class_pairwise_kl":
        samples, categories = size
        probs = torch.softmax(3 * torch.randn(samples, categories, generator=gen), 1).to(device)
        labels = probs.argmax(1)
        return lambda: gmkernels.class_pairwise_kl(probs, labels)
    if op == "mixture_log_likelihood":
        batch, components, dim = size
        x = torch.randn(batch, dim, generator=gen).to(device)
        means = torch.randn(components, dim, generator=gen).to(device)
        var = (torch.rand(components, generator=gen) + 0.5).to(device)
        return lambda: gmkernels.mixture_log_likelihood(x, means, var)
    if op == "mixture_sample":
        components, dim, n = size
        mu = torch.randn(components, dim, generator=gen).to(device)
        sigma = (torch.rand(components, dim, generator=gen) + 0.1).to(device)
        component = torch.randint(components, (n,), generator=gen).to(device)
        return lambda: gmkernels.mixture_sample(mu, sigma, n, component=component)
    rows, kernels, dim = size
    M = torch.randn(rows, kernels, dim, generator=gen).to(device)
    return lambda: gmkernels.minibatch_discrimination(M)


def per_call_seconds(call, device: torch.device, calls: int, checks: bool) -> float:
    with gmkernels.value_checks(checks):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / calls


def measure(device: torch.device, smoke: bool = False, rounds: int = 5, calls: int = 20) -> list:
    """One row per op: median seconds per call with the checks on and off (alternating rounds)."""
    rows = []
    for op, (label, full, tiny) in SIZES.items():
        size = tiny if smoke else full
        call = make_call(op, size, device)
        for checks in (True, False):          # warm-up: first calls, caches, Triton/CUDA setup
            per_call_seconds(call, device, 2, checks)
        times = {True: [], False: []}
        for index in range(1 if smoke else rounds):
            for checks in ((True, False) if index % 2 == 0 else (False, True)):
                times[checks].append(per_call_seconds(call, device, 1 if smoke else calls, checks))
        checked, unchecked = statistics.median(times[True]), statistics.median(times[False])
        rows.append({"op": op, "size": label.format(*size), "device": device.type,
                     "backend": gmkernels.get_backend(), "checked_s": checked, "unchecked_s": unchecked})
    return rows


def markdown(rows: list) -> str:
    lines = ["| op | size | device | checks on, ms/call | off, ms/call | on / off |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['op']} | {row['size']} | {row['device']} | {1e3 * row['checked_s']:.3f} | "
                     f"{1e3 * row['unchecked_s']:.3f} | {row['checked_s'] / row['unchecked_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the script only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"# value checks on and off, {device.type}, gmkernels backends {gmkernels.backends()} (auto)")
    print(markdown(measure(device, smoke=args.smoke)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
