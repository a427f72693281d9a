"""gmkernels benchmark suite: every op against the eager reference and torch.compile, side by side
in one run.

    python bench/run.py [--quick] [--op mixture_sample ...] [--backend cpp ...] [--threads 2]

Prints a table and writes JSON and Markdown under bench/results/ named by device and date.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import gmkernels  # noqa: E402
from bench.common import measure  # noqa: E402

OPS = tuple(sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(ROOT, "bench", "ops"))
                    if name.endswith(".py") and not name.startswith("_")))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_facts() -> dict:
    facts = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gmkernels": gmkernels.build_info(),
        "backends": list(gmkernels.backends()),
        "python": platform.python_version(),
    }
    try:
        import triton
        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def device_label(facts: dict) -> str:
    name = facts.get("gpu") or facts["cpu"]
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()[:40]


def run_case(case, repeats: int, only_backends) -> list:
    rows = []
    for variant in case.variants:
        if only_backends and variant.name.startswith("gmkernels[") and \
                variant.name[len("gmkernels["):-1] not in only_backends:
            continue
        if variant.setup:
            variant.setup()
        timing = measure(variant.run, repeats)
        rows.append({"op": case.op, "size": case.size, "mode": case.mode, "variant": variant.name, **timing})
    by_name = {row["variant"]: row for row in rows}
    baseline = by_name.get(case.baseline)
    compiled = by_name.get(case.baseline.replace("eager", "compile"))
    for row in rows:
        if baseline:
            row["speedup_vs_baseline"] = baseline["median_s"] / row["median_s"]
        if compiled:
            row["speedup_vs_compile"] = compiled["median_s"] / row["median_s"]
        if case.bytes_moved:
            row["gb_per_s"] = case.bytes_moved / row["median_s"] / 1e9
        if case.flops:
            row["gflop_per_s"] = case.flops / row["median_s"] / 1e9
        target = case.targets.get(row["variant"])
        if target is not None:
            row["target_speedup"] = target
            row["meets_target"] = row.get("speedup_vs_baseline", 0) >= target
    return rows


def format_table(rows: list) -> str:
    header = f"{'op':<26} {'size':<28} {'mode':<17} {'variant':<22} {'ms':>10} {'x base':>8} {'x comp':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['op']:<26} {row['size']:<28} {row['mode']:<17} {row['variant']:<22} "
            f"{1e3 * row['median_s']:>10.3f} {row.get('speedup_vs_baseline', float('nan')):>8.2f} "
            f"{row.get('speedup_vs_compile', float('nan')):>8.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI smoke run)")
    parser.add_argument("--op", action="append", choices=OPS, help="only these op families")
    parser.add_argument("--backend", action="append", help="only these gmkernels backends")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (reported)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results folder")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    facts = device_facts()
    print(f"# device: {facts['cpu']} | threads {facts['threads']} | torch {facts['torch']} | "
          f"backends {facts['backends']}", flush=True)
    rows = []
    for op in args.op or OPS:
        module = importlib.import_module(f"bench.ops.{op}")
        for case in module.cases(args.quick, gmkernels.backends()):
            case_rows = run_case(case, repeats, args.backend)
            print(format_table(case_rows).split("\n", 2)[-1] if rows else format_table(case_rows), flush=True)
            rows += case_rows
    missed = [r for r in rows if r.get("meets_target") is False]
    if missed:
        print("\nBelow target:")
        for row in missed:
            print(f"  {row['op']} {row['size']} {row['mode']} {row['variant']}: "
                  f"{row['speedup_vs_baseline']:.2f}x < {row['target_speedup']}x")
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        kind = "quick" if args.quick else "full"
        base = os.path.join(args.out, f"{device_label(facts)}-{stamp}-{kind}")
        with open(base + ".json", "w") as handle:
            json.dump({"device": facts, "quick": args.quick, "rows": rows}, handle, indent=1)
        with open(base + ".md", "w") as handle:
            handle.write(f"# gmkernels benchmark ({kind}), {stamp}\n\nDevice: {facts['cpu']}, "
                         f"{facts['threads']} threads, torch {facts['torch']}\n\n```\n{format_table(rows)}\n```\n")
        print(f"\nresults: {base}.json, {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
