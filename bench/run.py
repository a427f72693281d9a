"""gmkernels benchmark suite: every op against the eager reference and torch.compile, side by side
in one run, judged against the machine's limits measured in the same run.

    python bench/run.py [--sweep] [--quick | --smoke] [--op mixture_sample ...] [--backend cpp ...]
                        [--sizes "n=8192" ...] [--threads 2] [--repeats 10] [--out DIR] [--no-save]

Prints a table and writes JSON, Markdown and a PNG speed-up plot under bench/results/, named by
device, date and kind (full / quick / smoke). Rows below their target are listed first in the
Markdown, with the reason, and after the table of a full run.

Sections: each bench/ops/<name>.py exposes `cases(kind, backends) -> list[Case]` (see
bench/common.py and bench/ops/__init__.py), `kind` one of "full", "quick", "smoke".

`--sweep` runs each section's `sweep_cases(kind, backends)` instead: a grid of sizes per op and
mode against what a user writes (the contenders a case names in `peers`: plain eager formulas,
their torch.compile, pykeops where installed; the reference is context only). Its Markdown leads
with one line per op and mode: the worst ratio of gmkernels' best backend to the best peer over
the grid, where it happens, the median, and gmkernels' fraction of the machine limit; then every
grid point. A full unfiltered sweep saved to bench/results/ also copies that headline into
bench/results/README.md. `--sweep --quick` keeps a few points per op.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import os
import shutil
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import gmkernels  # noqa: E402
from bench import report  # noqa: E402
from bench.common import measure, measure_interleaved, warm_up  # noqa: E402
from bench.machine import Limits, device_facts, device_label, judge  # noqa: E402

OPS = tuple(sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(ROOT, "bench", "ops"))
                    if name.endswith(".py") and not name.startswith("_")))

# repeats, warm-up calls (the last one under the memory probe), seconds after which a contender
# stops repeating, the fewest repeats before it may stop, and the size of the limit measurements.
MODES = {
    "full": dict(repeats=10, warmup=3, max_seconds=20.0, min_repeats=3, limit_scale=1.0),
    "quick": dict(repeats=3, warmup=2, max_seconds=3.0, min_repeats=1, limit_scale=1.0),
    "smoke": dict(repeats=1, warmup=2, max_seconds=1.0, min_repeats=1, limit_scale=1 / 64),
}
# The sweep times many sizes: fewer repeats, each contender stops after `max_seconds` (at least
# `min_repeats` runs), and cheap contenders are timed for at least `min_seconds`, up to
# `max_rounds` runs (five runs were not enough on a shared VM: the same build's sub-millisecond
# ratios moved 2x between two sweeps).
# A contender other than gmkernels' leaves the rounds once a call of its took `retire_factor` times
# the fastest peer's (bench.common._time_in_turn): it cannot be the best peer, and at the largest
# sizes its repeats were a third of the sweep's time.
SWEEP_MODES = {
    "full": dict(repeats=5, warmup=2, max_seconds=1.5, min_repeats=2, limit_scale=1.0,
                 min_seconds=0.2, max_rounds=50, retire_factor=3.0),
    "quick": dict(repeats=3, warmup=2, max_seconds=0.5, min_repeats=1, limit_scale=0.25,
                  min_seconds=0.1, max_rounds=20, retire_factor=3.0),
    "smoke": dict(repeats=1, warmup=2, max_seconds=1.0, min_repeats=1, limit_scale=1 / 64),
}
# torch.compile peers meet many sizes and variants in a sweep: recompiles past dynamo's default
# limit (8 per function) would silently fall back to eager; the sweep raises the limit and makes
# hitting it an error (a failed contender in the report, never a slow "compiled" row).
SWEEP_RECOMPILE_LIMIT = 64


def load_cases(op: str, kind: str, sweep: bool = False) -> list:
    """The section's cases; with `sweep` its `sweep_cases` grid ([] for a section without one)."""
    module = importlib.import_module(f"bench.ops.{op}")
    if sweep:
        return module.sweep_cases(kind, gmkernels.backends()) if hasattr(module, "sweep_cases") else []
    return module.cases(kind, gmkernels.backends())


def select_contenders(case, only_backends, drop_compiling: bool) -> list:
    """The contenders to run: `--backend` drops other gmkernels/pykeops backends (never the
    reference and plain-PyTorch contenders the speed-ups are measured against); `--smoke` and
    `--no-compile` drop every contender that compiles on its first call."""
    return [contender for contender in case.contenders
            if not (drop_compiling and contender.compiles)
            and not (only_backends and contender.backend is not None and contender.backend not in only_backends)]


def select_cases(cases: list, sizes) -> list:
    """`--sizes`: the cases whose size label contains one of the given texts."""
    return [case for case in cases if not sizes or any(text in case.size for text in sizes)]


def _roof_reason(row: dict, reference: dict, target: float, against: str):
    """Why a target may be out of reach, from the limits: the roofline bounds the speed-up over
    `reference` by 1 / (the fraction of the limit `reference` already reaches)."""
    fraction = reference.get("limit_fraction")
    if fraction and target > 1 / fraction:
        return (f"target above the roofline: {against} already runs at {100 * fraction:.0f}% of "
                f"{reference['limit']}, so at most {1 / fraction:.2f}x is possible")
    if row.get("limit_fraction") is not None:
        return f"runs at {100 * row['limit_fraction']:.0f}% of {row['limit']}"
    return None


def compare(rows: list, case, dropped=frozenset()) -> None:
    """Speed-ups over the baseline and the peer, and the verdict on each target, in place. A
    target whose reference contender was `dropped` by the filters gets no verdict; one whose
    reference is missing otherwise (it failed, or the case names a contender it lacks) is a miss."""
    by_name = {row["variant"]: row for row in rows}
    baseline, peer = by_name.get(case.baseline), by_name.get(case.peer_name)
    for row in rows:
        row["baseline"] = case.baseline
        if baseline:
            row["speedup_vs_baseline"] = baseline["median_s"] / row["median_s"]
        if peer:
            row["speedup_vs_compile"] = peer["median_s"] / row["median_s"]
            row["peer"] = case.peer_name
        checks = [(case.targets.get(row["variant"]), "speedup_vs_baseline", baseline, case.baseline),
                  (case.peer_targets.get(row["variant"]), "speedup_vs_compile", peer, case.peer_name)]
        misses, reasons = [], []
        for target, key, reference, against in checks:
            if target is None:
                continue
            if reference is None and against in dropped:
                continue
            row.setdefault("targets", {})[against] = target
            if reference is None:
                misses.append(f"no {against} row to compare with")
                continue
            if row[key] < target:
                misses.append(f"{row[key]:.2f}x < {target}x vs {against}")
                reasons.append(_roof_reason(row, reference, target, against))
        if "targets" in row:
            row["meets_target"] = not misses
        if misses:
            row["missed"] = "; ".join(misses)
            found = [case.note] + reasons
            row["reason"] = "; ".join(dict.fromkeys(reason for reason in found if reason)) or \
                "no reason recorded (the case has no note and declares no bytes_moved/flops)"


def _timed_rows(case, contenders: list, settings: dict, errors: list) -> list:
    """(contender, timing) for each contender that ran; a failure is recorded in `errors` and costs
    only its own contender."""
    warm = dict(warmup=settings["warmup"], device=case.device, track_memory=True)
    repeat = dict(max_seconds=settings["max_seconds"], min_repeats=settings["min_repeats"],
                  min_seconds=settings.get("min_seconds", 0.0), max_rounds=settings.get("max_rounds", 0))
    # A sweep's ratios are its result, so its contenders are always timed in turn: timed one after
    # the other, the same build's ratios moved up to 2x between runs with the machine's drift.
    interleave = case.interleave or settings.get("sweep", False)
    ready = []
    for contender in contenders:
        show_status(f"running {case.op} {case.size} {case.mode}: {contender.name}")
        try:
            if contender.setup:
                contender.setup()
            if interleave:
                ready.append((contender, warm_up(contender.run, **warm)))
            else:
                ready.append((contender, measure(contender.run, settings["repeats"], **warm, **repeat)))
        except Exception as error:   # one broken contender must not cost the rest of the run
            errors.append({"op": case.op, "size": case.size, "mode": case.mode, "variant": contender.name,
                           "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
            print(f"  FAILED {case.op} {case.size} {case.mode} {contender.name}: {error}", flush=True)
    if interleave and ready:
        show_status(f"running {case.op} {case.size} {case.mode}: {', '.join(c.name for c, _ in ready)} in turn")
        # gmkernels' contenders: None (never retired); a peer: True; context (the reference): False.
        peers = [None if contender.backend not in (None, "pykeops") else contender.name in case.peers
                 for contender, _ in ready]
        timings = measure_interleaved([contender.run for contender, _ in ready], [state for _, state in ready],
                                      settings["repeats"], **repeat, peers=peers,
                                      retire_factor=settings.get("retire_factor", 0.0))
        ready = [(contender, timing) for (contender, _), timing in zip(ready, timings)]
    return ready


def run_case(case, settings: dict, limits: Limits, only_backends, errors: list) -> list:
    if case.build:
        case.contenders = case.build()
    try:
        return _run_built_case(case, settings, limits, only_backends, errors)
    finally:
        if case.build:
            case.contenders = []   # the inputs of this size go with them
            gc.collect()


def _run_built_case(case, settings: dict, limits: Limits, only_backends, errors: list) -> list:
    rows = []
    selected = select_contenders(case, only_backends, settings["smoke"] or settings.get("no_compile", False))
    run_threads = torch.get_num_threads()
    if case.threads:
        torch.set_num_threads(case.threads)
    try:
        timed = _timed_rows(case, selected, settings, errors)
    finally:
        torch.set_num_threads(run_threads)
    for contender, timing in timed:
        row = {"op": case.op, "size": case.size, "mode": case.mode, "variant": contender.name,
               "threads": case.threads or run_threads, **timing}
        judge(row, case, limits)
        if case.note:
            row["note"] = case.note
        if case.peers:
            row["is_peer"] = contender.name in case.peers
        if case.work is not None:
            row.update(work=case.work, work_label=case.work_label)
        rows.append(row)
    compare(rows, case, dropped={contender.name for contender in case.contenders} - {contender.name for contender in selected})
    return rows


def result_basename(facts: dict, settings: dict) -> str:
    name = f"{device_label(facts)}-{settings['date']}-{settings['kind']}"
    filters = settings["filters"]
    if filters["op"]:
        name += "-" + "+".join(filters["op"])
    if filters["backend"] or filters["sizes"]:
        name += "-filtered"
    return name


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--quick", action="store_true",
                      help="small sizes, few repeats: a demo (about a minute on an idle 2-core CPU, many times "
                           "that on a busy one; its last line gives its wall and CPU time)")
    kind.add_argument("--smoke", action="store_true",
                      help="tiny sizes, 1 repeat, no compiling contenders, tiny limit runs: checks the machinery only")
    parser.add_argument("--sweep", action="store_true",
                        help="the size sweep: each section's grid of sizes against what a user writes (plain "
                             "eager, its torch.compile, pykeops), led by the worst ratio per op and mode; "
                             "with --quick a few points per op, with --smoke tiny ones")
    parser.add_argument("--op", action="append", choices=OPS, help="only these op sections (repeatable)")
    parser.add_argument("--backend", action="append",
                        help="only these gmkernels backends (or pykeops); reference/plain contenders always run")
    parser.add_argument("--sizes", action="append",
                        help="only cases whose size label contains this text, e.g. 'n=8192' (repeatable)")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the contenders that compile on their first call (torch.compile, KeOps): "
                             "on a GPU machine their first calls took a short run's whole time")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (reported)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per contender")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results folder")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--list", action="store_true", help="list the cases and contenders, run nothing")
    return parser.parse_args(argv)


def measure_limits(limits: Limits) -> Limits:
    """Measures the limits of every device here before any case runs, and prints them."""
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        measured = limits.for_device(device)
        show_status("")
        print(f"# limits {device}: copy {measured['copy_gb_per_s']:.1f} GB/s, read {measured['read_gb_per_s']:.1f} GB/s, "
              f"exp {measured['exp_gelem_per_s']:.2f} Gelem/s, "
              f"fp32 matmul {measured['fp32_matmul_gflop_per_s']:.1f} GFLOP/s (n={measured['matmul_size']})"
              + "".join(f", {dtype} {measured[f'{dtype}_matmul_gflop_per_s']:.1f}" for dtype in ("tf32", "bf16")
                        if f"{dtype}_matmul_gflop_per_s" in measured), flush=True)
    return limits


QUICK_BUDGET_S = 120.0   # what `--quick` may take on the 2-core CPU machine, all sections included
SWEEP_QUICK_BUDGET_S = 180.0   # what `--sweep --quick` may take there
SWEEP_BUDGET_S = 1200.0        # and the full `--sweep`
# A full, unfiltered sweep saved to the default folder copies its headline into this file.
RESULTS_README = os.path.join(ROOT, "bench", "results", "README.md")


def show_status(text: str) -> None:
    """A progress line on a terminal, overwritten by the next one ("" clears it); nothing when
    stderr goes to a file."""
    if sys.stderr.isatty():
        width = shutil.get_terminal_size().columns - 1
        sys.stderr.write("\r\033[K" + text[:width])
        sys.stderr.flush()


def assemble(facts: dict, settings: dict, limits: Limits, rows: list, errors: list, seconds: dict,
             run_started: float, sections: dict) -> dict:
    """The result document of the run so far; `settings["sections_pending"]` lists the sections
    not yet run (empty once the run is complete)."""
    try:
        facts["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    settings["timers"] = ", ".join(sorted({row["timer"] for row in rows})) or "none"
    settings["seconds_per_section"] = dict(seconds)
    settings["seconds_total"] = time.perf_counter() - run_started
    # CPU seconds of all this process's threads: what the run costs whatever the machine's load
    # (on a busy machine the wall time above is several times longer).
    settings["cpu_seconds_total"] = time.process_time()
    settings["sections_pending"] = [op for op in sections if op not in seconds]
    # For whoever maintains the suite, kept in the JSON and Markdown record, not printed.
    settings["maintainer_notes"] = []
    if settings["kind"] == "quick" and not settings["sections_pending"] \
            and settings["seconds_total"] > QUICK_BUDGET_S:
        settings["maintainer_notes"].append(
            f"this quick run took {settings['seconds_total']:.0f} s, over its {QUICK_BUDGET_S:.0f} s budget "
            f"(load average {facts.get('load_average_end')}): shrink the quick sizes of the slowest sections")
    budget = {"sweep-quick": SWEEP_QUICK_BUDGET_S, "sweep": SWEEP_BUDGET_S}.get(settings["kind"])
    if budget and not settings["sections_pending"] and settings["seconds_total"] > budget:
        settings["maintainer_notes"].append(
            f"this {settings['kind']} took {settings['seconds_total']:.0f} s, over its {budget:.0f} s budget "
            f"(load average {facts.get('load_average_end')}): drop grid points of the slowest sections "
            f"(seconds per section above; each compiled peer's first call, `first call s`, holds its compile time)")
    result = {"schema": 2, "device": facts, "settings": settings, "limits": limits.summary(),
              "rows": list(rows), "below_target": report.below_target(rows), "errors": list(errors)}
    if settings.get("sweep"):
        result["points"] = report.sweep_points(rows)
        result["headline"] = report.sweep_headline(result["points"])
    return result


def save(result: dict, folder: str, quiet: bool = False) -> None:
    """JSON, Markdown and PNG under `folder`, named by device, date and kind."""
    facts, settings = result["device"], result["settings"]
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, result_basename(facts, settings))
    title = f"gmkernels {settings['kind']}: {facts['cpu']}" + (f" / {facts['gpu']['name']}" if facts["gpu"] else "")
    if settings.get("sweep"):
        plot_problem = report.write_sweep_plot(base + ".png", result["points"], title)
        report.write_json(base + ".json", result)
        report.write_sweep_markdown(base + ".md", result, None if plot_problem else os.path.basename(base) + ".png")
    else:
        plot_problem = report.write_plot(base + ".png", result["rows"], title)
        report.write_json(base + ".json", result)
        report.write_markdown(base + ".md", result, None if plot_problem else os.path.basename(base) + ".png")
    if quiet:
        return
    print(f"\nresults: {base}.json, {base}.md" + (f", {base}.png" if not plot_problem else f" (no plot: {plot_problem})"))




def main(argv=None) -> int:
    run_started = time.perf_counter()
    args = parse_args(argv)
    if not args.sweep:
        return _main(args, run_started)
    with torch._dynamo.config.patch(recompile_limit=SWEEP_RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        return _main(args, run_started)


def _main(args, run_started: float) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = (SWEEP_MODES if args.sweep else MODES)[kind]
    settings = {
        "kind": ("sweep" if kind == "full" else f"sweep-{kind}") if args.sweep else kind,
        "sweep": args.sweep, "quick": args.quick, "smoke": args.smoke, "no_compile": args.no_compile,
        "date": datetime.date.today().isoformat(),
        "repeats": args.repeats or mode["repeats"], "warmup": mode["warmup"],
        "max_seconds": mode["max_seconds"], "min_repeats": mode["min_repeats"],
        "min_seconds": mode.get("min_seconds", 0.0), "max_rounds": mode.get("max_rounds", 0),
        "retire_factor": mode.get("retire_factor", 0.0),
        "filters": {"op": args.op or [], "backend": args.backend or [], "sizes": args.sizes or []},
    }
    unknown = set(args.backend or ()) - set(gmkernels.backends()) - {"pykeops"}
    if unknown:
        print(f"# note: backend(s) {sorted(unknown)} not usable here ({gmkernels.backends()})", flush=True)

    ops, errors, sections = args.op or list(OPS), [], {}
    for op in ops:
        try:
            cases = load_cases(op, kind, sweep=True) if args.sweep else load_cases(op, kind)
        except Exception as error:   # a section that cannot even list its cases is reported, not fatal
            errors.append({"op": op, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
            print(f"# section {op} failed to load: {error}", flush=True)
            continue
        if cases or not args.sweep:
            sections[op] = select_cases(cases, args.sizes)
        elif args.op:
            print(f"# section {op} has no sweep grid", flush=True)
    if args.list:
        for op, cases in sections.items():
            for case in cases:
                names = ([contender.name for contender in select_contenders(case, args.backend, args.smoke or args.no_compile)]
                         if not case.build else ["peers: " + ", ".join(case.peers) + " (+ gmkernels, built when run)"])
                skipped = f"  [skipped: {', '.join(name for name, _ in case.skipped)}]" if case.skipped else ""
                print(f"{op:<24} {case.size:<28} {case.mode:<17} {', '.join(names)}{skipped}")
        return 1 if errors else 0

    facts = device_facts()
    print(f"# device: {facts['cpu']} | threads {facts['threads']} | torch {facts['torch']} | "
          f"backends {facts['backends']}" + (f" | gpu {facts['gpu']['name']}" if facts["gpu"] else ""), flush=True)
    show_status("measuring this machine's limits (memory bandwidth, matmul rate)")
    limits = measure_limits(Limits(repeats=1 if args.smoke else max(3, settings["repeats"]),
                                   scale=mode["limit_scale"]))

    rows, seconds, header = [], {}, True
    skipped = settings["skipped"] = []
    for op, cases in sections.items():
        started = time.perf_counter()
        for case in cases:
            skipped += [{"op": case.op, "size": case.size, "mode": case.mode, "variant": name, "why": why}
                        for name, why in case.skipped]
            case_rows = [dict(row, section=op) for row in run_case(case, settings, limits, args.backend, errors)]
            show_status("")
            if case_rows:
                if header:
                    print(report.TABLE_LEGEND)
                print(report.format_table(case_rows, header=header), flush=True)
                header = False
            rows += case_rows
        seconds[op] = time.perf_counter() - started
        if not args.no_save and op != list(sections)[-1]:
            # A full run takes an hour on 2 cores: what finished is on disk, marked partial, if
            # the run is stopped before the end.
            save(assemble(facts, settings, limits, rows, errors, seconds, run_started, sections), args.out,
                 quiet=True)
    result = assemble(facts, settings, limits, rows, errors, seconds, run_started, sections)
    print("\n# seconds per section: " + ", ".join(f"{op} {value:.1f}" for op, value in seconds.items())
          + f"; total {settings['seconds_total']:.1f} (CPU time {settings['cpu_seconds_total']:.1f})")
    # Targets are about the full sizes: the quick and smoke sizes are too small to judge them, so
    # their verdicts stay in the Markdown record and only a full run lists its misses here.
    missed = result["below_target"]
    if missed and kind == "full":
        print("\nBelow target:")
        for row in missed:
            print("  " + report.miss_line(row))
    if errors:
        print(f"\n{len(errors)} failure(s): " + "; ".join(
            " ".join(str(error[key]) for key in ("op", "size", "mode", "variant") if key in error) + f": {error['error']}"
            for error in errors))

    if args.sweep:
        print("\n" + "\n".join(report.headline_lines(result["headline"])))
        if skipped:
            print(f"\n{len(skipped)} peer(s) left out at sizes over the memory budget (listed in the Markdown)")
    if not args.no_save:
        save(result, args.out)
        if (settings["kind"] == "sweep" and not any(settings["filters"].values())
                and not result["settings"]["sections_pending"]
                and os.path.abspath(args.out) == os.path.dirname(RESULTS_README)):
            report.update_readme_headline(RESULTS_README, result, result_basename(facts, settings) + ".md")
            print(f"headline copied into {RESULTS_README}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
