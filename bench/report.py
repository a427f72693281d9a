"""How a benchmark run is shown: the stdout table, the JSON and Markdown results, the speed-up plot."""
from __future__ import annotations

import json
import math
import statistics
from typing import Optional

from bench.common import CPU_MEMORY_METHOD, CUDA_MEMORY_METHOD

def _number(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _percent(value) -> str:
    return _number(None if value is None else 100 * value, ".1f")


def _bytes(nbytes) -> str:
    if nbytes is None:
        return "-"
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f}{unit}"
    return f"{nbytes}B"


TABLE_COLUMNS = (  # title, width, cell
    ("op", 24, lambda r: r["op"]),
    ("size", 36, lambda r: r["size"]),
    ("mode", 24, lambda r: r["mode"]),
    ("contender", 20, lambda r: r["variant"]),
    ("ms", 10, lambda r: _number(1e3 * r["median_s"], ".3f")),
    ("x base", 7, lambda r: _number(r.get("speedup_vs_baseline"), ".2f")),
    ("x peer", 7, lambda r: _number(r.get("speedup_vs_compile"), ".2f")),
    ("% limit", 7, lambda r: _percent(r.get("limit_fraction"))),
    ("peak mem", 9, lambda r: _bytes(r.get("peak_bytes"))),
)


# Printed above the table: what its columns mean, for someone who has not read the code.
TABLE_LEGEND = """\
How to read: each row is one implementation ("contender") of an op at one size. ms = median time of one
call (`train step`: one training step; `gradient penalty`: forward, gradient, backward of its squared norm).
x base = times faster than the row's baseline (the op's eager PyTorch reference unless noted); x peer = times
faster than the contender to beat, torch.compile of that baseline as a rule: above 1 is faster. % limit =
share of this machine's limit measured above (memory bandwidth or matmul rate) that the call reaches;
peak mem = the most memory one call allocates.
"""


def format_table(rows: list, header: bool = True) -> str:
    lines = []
    if header:
        titles = " ".join(f"{title:<{width}}" if index < 4 else f"{title:>{width}}"
                          for index, (title, width, _) in enumerate(TABLE_COLUMNS))
        lines += [titles, "-" * len(titles)]
    for row in rows:
        lines.append(" ".join(f"{cell(row):<{width}}" if index < 4 else f"{cell(row):>{width}}"
                              for index, (_, width, cell) in enumerate(TABLE_COLUMNS)))
    return "\n".join(lines)


def below_target(rows: list) -> list:
    return [row for row in rows if row.get("meets_target") is False]


def miss_line(row: dict) -> str:
    return (f"{row['op']} {row['size']} {row['mode']} {row['variant']}: "
            f"{row['missed']} -- {row['reason']}")


def _markdown_table(titles: list, rows: list) -> list:
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join("---" for _ in titles) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _device_lines(facts: dict) -> list:
    load = facts.get("load_average")
    lines = [
        f"- CPU: {facts['cpu']} ({facts.get('cpu_count')} logical CPUs, {facts.get('cpu_affinity')} usable), "
        f"torch threads {facts['threads']} (interop {facts.get('interop_threads')}), "
        f"last-level cache {_bytes(facts.get('last_level_cache_bytes'))}, "
        f"memory {_bytes(facts.get('memory_bytes'))}",
        f"- load average at start: {', '.join(f'{value:.2f}' for value in load) if load else 'unknown'}"
        + (f"; at end: {', '.join(f'{value:.2f}' for value in facts['load_average_end'])}"
           if facts.get("load_average_end") else ""),
        f"- Python {facts['python']}, torch {facts['torch']}, triton {facts.get('triton')}"
        + (" (interpreter)" if facts.get("triton_interpret") else "")
        + f", numpy {facts.get('numpy')}, pykeops {facts.get('pykeops') or 'not installed'}",
        f"- gmkernels backends: {', '.join(facts['backends'])}; build: {json.dumps(facts.get('gmkernels'))}",
    ]
    gpu = facts.get("gpu")
    if gpu:
        lines.append("- GPU: " + ", ".join(f"{key} {value}" for key, value in gpu.items()))
    return lines


def _limit_lines(limits: dict) -> list:
    rows = []
    for device, values in limits["devices"].items():
        rows.append([
            device, _bytes(values["bandwidth_buffer_bytes"]),
            _number(values["copy_gb_per_s"], ".1f"), _number(values["read_gb_per_s"], ".1f"),
            _number(values.get("exp_gelem_per_s"), ".2f"),
            f"{_number(values['fp32_matmul_gflop_per_s'], '.1f')} (n={values['matmul_size']})",
            _number(values.get("tf32_matmul_gflop_per_s"), ".1f"),
            _number(values.get("bf16_matmul_gflop_per_s"), ".1f"),
        ])
    lines = _markdown_table(["device", "buffer", "copy GB/s (read+write)", "read GB/s (sum)", "torch.exp Gelem/s",
                             "fp32 matmul GFLOP/s", "tf32 GFLOP/s", "bf16 GFLOP/s"], rows)
    if limits["matmul_shapes"]:
        lines += ["", "Plain fp32 matmuls of the shapes cases asked for:", ""]
        lines += _markdown_table(["shape (B,) M, K, N", "device", "GFLOP/s"], [
            ["x".join(map(str, entry["shape"])), entry["device"], _number(entry["fp32_gflop_per_s"], ".1f")]
            for entry in limits["matmul_shapes"]])
    return lines


def _op_lines(rows: list) -> list:
    """One op's rows; a device column when they span devices, items/s for training steps."""
    with_device = len({row["device"] for row in rows}) > 1
    with_items = any(row.get("items_per_s") for row in rows)
    titles = ["size", "mode", "device", "contender", "median ms", "min ms", "runs", "first call s",
              "x base", "x peer", "GB/s", "GFLOP/s", "% of limit (limit)", "peak memory", "items/s", "threads"]
    table = []
    for row in rows:
        table.append([
            row["size"], row["mode"], row["device"], row["variant"], _number(1e3 * row["median_s"], ".3f"),
            _number(1e3 * row["min_s"], ".3f"), row["repeats"], _number(row.get("first_call_s"), ".2f"),
            _number(row.get("speedup_vs_baseline"), ".2f"), _number(row.get("speedup_vs_compile"), ".2f"),
            _number(row.get("gb_per_s"), ".2f"), _number(row.get("gflop_per_s"), ".2f"),
            f"{_percent(row['limit_fraction'])} ({row['limit']})" if row.get("limit") else "-",
            _bytes(row.get("peak_bytes")), _number(row.get("items_per_s"), ".1f"), row.get("threads", "-"),
        ])
    keep = [index for index, title in enumerate(titles)
            if (title != "device" or with_device) and (title not in ("items/s", "threads") or with_items)]
    return _markdown_table([titles[index] for index in keep], [[cells[index] for index in keep] for cells in table])



def _write_sections(path: str, lines: list, rows: list, section_lines, settings: dict) -> None:
    """The report's head ``lines``, a section per op (``section_lines`` of its rows), the
    maintainers' notes, written to ``path``."""
    for op in dict.fromkeys(row["op"] for row in rows):
        lines += ["", f"## {op}", ""] + section_lines([row for row in rows if row["op"] == op])
    if settings.get("maintainer_notes"):
        lines += ["", "## Notes for maintainers", ""] + [f"- {note}" for note in settings["maintainer_notes"]]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")

def write_markdown(path: str, result: dict, plot_name: Optional[str]) -> None:
    settings, rows = result["settings"], result["rows"]
    facts = result["device"]
    lines = [f"# gmkernels benchmark ({settings['kind']}), {settings['date']}", ""]
    pending = settings.get("sections_pending")
    if pending:
        lines += [f"**Partial**: the run stopped before the sections {', '.join(pending)} (written after "
                  f"each finished section).", ""]
    # What needs attention first: failed sections, then every row below its target, with why.
    if result["errors"]:
        lines += ["## Sections that failed", ""]
        lines += [f"- `{error['op']}`: {error['error']}" for error in result["errors"]] + [""]
    missed = below_target(rows)
    lines += ["## Below target", ""]
    if settings["smoke"]:
        lines += ["Smoke run: single runs of tiny sizes; the machinery is checked, the verdicts mean nothing.", ""]
    if settings.get("no_compile"):
        lines += ["Run with `--no-compile`: the torch.compile and KeOps contenders were left out, so "
                  "`x peer` against a compiled peer is missing.", ""]
    if missed:
        lines += _markdown_table(
            ["op", "size", "mode", "contender", "missed", "% of limit", "reason"],
            [[row["op"], row["size"], row["mode"], row["variant"], row["missed"],
              _percent(row.get("limit_fraction")), row["reason"]] for row in missed])
    else:
        targeted = sum(1 for row in rows if "meets_target" in row)
        lines.append(f"None: every row with a target ({targeted}) meets it." if targeted
                     else "No row in this run has a target.")
    lines += ["", "## Device", ""] + _device_lines(facts)
    if settings.get("seconds_total") is not None:
        lines.append(f"- run time: {settings['seconds_total']:.0f} s wall, "
                     f"{settings.get('cpu_seconds_total', float('nan')):.0f} s CPU (all threads)")
    lines += ["", "## Machine limits, measured in this run", ""] + _limit_lines(result["limits"])
    lines += [
        "", "## How to read", "",
        f"- Times: median of up to {settings['repeats']} runs after warm-up ({settings['timers']}); "
        "`first call s` is the first call alone (torch.compile / KeOps compile time lands there).",
        "- Modes: `forward`; `forward+backward` (into the inputs named); `train step`, one gmgan "
        "training step; `gradient penalty`, forward, gradient with create_graph and backward of its "
        "squared norm (what WGAN-GP or R1 adds to a discriminator step).",
        "- `x base`: speed-up over the case's baseline (`reference eager` unless the case says "
        "otherwise); `x peer`: over the contender to beat (the baseline's compiled twin unless the "
        "case names another). Above 1 is faster.",
        "- `% of limit`: the case's roofline time (its `bytes_moved` at the best bandwidth measured "
        "above, or its `flops` at the fp32 matmul rate -- of the case's own matmul shape when it "
        "names one, for the part of the work of that shape -- whichever is longer) over the measured "
        "time. `-`: the case declares neither.",
        f"- Peak memory, CPU: {CPU_MEMORY_METHOD}. GPU: {CUDA_MEMORY_METHOD}.",
        f"- Settings: {json.dumps({key: settings.get(key) for key in ('quick', 'smoke', 'no_compile', 'filters')})}.",
    ]
    if len({row.get("threads") for row in rows}) > 1:
        lines.append("- Threads: the run's own count unless a row's `threads` says otherwise (training "
                     "steps run on one thread, as gmgan's presets run them).")
    if plot_name:
        lines += ["", f"![speed-up vs size]({plot_name})"]
    _write_sections(path, lines, rows, _op_lines, settings)


def write_json(path: str, result: dict) -> None:
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1, default=str)


FORMULA_NAMES = {"plain": "plain formula", "class-means": "class-means formula"}


def readable(name: str) -> str:
    """A contender's name as a plot label: "reference compile" -> "torch.compile of the reference"."""
    if name.startswith("gmkernels[") and name.endswith("]"):
        return f"gmkernels ({name[len('gmkernels['):-1]})"
    what, _, how = name.rpartition(" ")
    what = FORMULA_NAMES.get(what, what)
    if how == "compile":
        return f"torch.compile of the {what}"
    if how == "eager":
        return f"the eager {what}"
    return name


def _plotted_against(row: dict) -> Optional[tuple]:
    """(what the row's speed-up is over, the speed-up): over the peer (torch.compile of the
    baseline, as a rule) where the case has one, else over the baseline; None where the row is
    that contender itself or there is nothing to compare with."""
    for against, key in ((row.get("peer"), "speedup_vs_compile"), (row["baseline"], "speedup_vs_baseline")):
        if against and row.get(key):
            return None if row["variant"] == against else (against, row[key])
    return None


def plot_series(panel_rows: list) -> tuple:
    """(sizes, series) of one plot panel: the sizes in the order the rows list them, and
    {(contender, what it is compared with): [(size index, speed-up), ...]}."""
    sizes = list(dict.fromkeys(row["size"] for row in panel_rows))
    series = {}
    for row in panel_rows:
        found = _plotted_against(row)
        if found:
            against, speedup = found
            series.setdefault((row["variant"], against), []).append((sizes.index(row["size"]), speedup))
    return sizes, series


def write_plot(path: str, rows: list, title: str) -> Optional[str]:
    """Speed-up vs size, one panel per op, mode and device, one line per contender and what it is
    compared with (the peer, torch.compile of the baseline as a rule, else the baseline); sizes in
    the order the section lists them, each one on the axis even where only one contender ran.
    Returns why not when it cannot plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib not installed"
    # A section that times several ops (second_order) gets one panel, its sizes named with the op.
    rows = [row if row.get("section", row["op"]) == row["op"] else
            dict(row, op=row["section"], size=f"{row['op']} {row['size']}") for row in rows]
    panels = list(dict.fromkeys((row["op"], row["mode"], row["device"]) for row in rows))
    several_devices = len({row["device"] for row in rows}) > 1
    if not panels:
        return "no rows"
    columns = min(2, len(panels))
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.2 * lines), squeeze=False)
    for axis, (op, mode, device) in zip(axes.flat, panels):
        panel_rows = [row for row in rows if (row["op"], row["mode"], row["device"]) == (op, mode, device)]
        sizes, series = plot_series(panel_rows)
        references = {against for _, against in series}
        # Training-step sizes are different models, not a growing size: points, no lines.
        style = dict(marker="o", linestyle="none" if mode == "train step" else "-")
        for (contender, against), points in series.items():
            label = readable(contender) + ("" if len(references) == 1 else f" over {readable(against)}")
            axis.plot(*zip(*points), label=label, **style)
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_yscale("log")
        times = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}x")
        axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(times)
        low, high = axis.get_ylim()
        # Within a factor of 3 there may be a single major tick: label the minor ones too.
        axis.yaxis.set_minor_formatter(times if high / low < 3 else matplotlib.ticker.NullFormatter())
        axis.tick_params(axis="y", which="both", labelsize=7)
        compared = {index for points in series.values() for index, _ in points}
        axis.set_xticks(range(len(sizes)))
        axis.set_xticklabels([size if index in compared else f"{size}\n(one contender: no ratio)"
                              for index, size in enumerate(sizes)], rotation=15, fontsize=7, ha="right")
        axis.set_xlim(-0.5, len(sizes) - 0.5)
        axis.set_title(f"{op} ({mode}{', ' + device if several_devices else ''})", fontsize=9)
        axis.set_ylabel(f"speed-up over {readable(references.pop())}" if len(references) == 1
                        else "speed-up (over what each line names)", fontsize=8)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6, framealpha=0.6)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title + " (above 1: faster)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.2 * lines)))   # room for the title
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------

def _is_ours(row: dict) -> bool:
    return row["variant"].startswith("gmkernels[")


def sweep_points(rows: list) -> list:
    """One entry per grid point (op, mode, size, device) of a sweep: gmkernels' best backend, the
    best peer (the fastest of the contenders the case names as what a user writes; never the
    reference) and their ratio (peer time / ours: above 1, gmkernels is faster). A point where
    either side did not run keeps its place with ratio None."""
    groups = {}
    for row in rows:
        if "is_peer" in row:
            groups.setdefault((row["op"], row["mode"], row["size"], row["device"]), []).append(row)
    points = []
    for (op, mode, size, device), group in groups.items():
        ours = min((row for row in group if _is_ours(row)), key=lambda row: row["median_s"], default=None)
        peer = min((row for row in group if row["is_peer"]), key=lambda row: row["median_s"], default=None)
        points.append({
            "op": op, "mode": mode, "size": size, "device": device,
            "work": group[0].get("work"), "work_label": group[0].get("work_label", ""),
            "ours": ours and ours["variant"], "ours_s": ours and ours["median_s"],
            "peer": peer and peer["variant"], "peer_s": peer and peer["median_s"],
            "ratio": peer["median_s"] / ours["median_s"] if ours and peer else None,
            "limit": ours and ours.get("limit"), "limit_fraction": ours and ours.get("limit_fraction"),
            "peer_limit_fraction": peer and peer.get("limit_fraction"),
            "peak_bytes": ours and ours.get("peak_bytes"),
            "contenders": {row["variant"]: row["median_s"] for row in group},
            "context": [row["variant"] for row in group if not row["is_peer"] and not _is_ours(row)],
        })
    return points


# The sweep's targets: at least this ratio against the best peer at every point, and this median.
SWEEP_TARGET_RATIO = 1.2
SWEEP_MEDIAN_TARGET = 2.0


def beyond_the_limit(point: dict) -> bool:
    """Whether the target ratio is out of reach at a point: the best peer already runs at more
    than 1 / SWEEP_TARGET_RATIO of the machine limit, so beating it by the target would take
    gmkernels past the limit."""
    return _peer_leaves_no_room(point, SWEEP_TARGET_RATIO)


def _peer_leaves_no_room(point: dict, ratio: float) -> bool:
    fraction = point.get("peer_limit_fraction")
    return fraction is not None and fraction * ratio > 1


def sweep_headline(points: list) -> list:
    """Per op, mode and device (in the order the points come): the worst ratio over the grid
    with its size and peer, the median ratio, how many points lose (ratio < 1), how many have
    no ratio, and gmkernels' fraction of the machine limit at the worst point and its median;
    how many points miss the target ratio, and of those how many have the best peer so near the
    limit that the target is beyond it; and how many points have the best peer over
    1 / SWEEP_MEDIAN_TARGET of the limit (where SWEEP_MEDIAN_TARGET is out of reach: with more
    than half the points so, so is the median target)."""
    lines = {}
    for point in points:
        lines.setdefault((point["op"], point["mode"], point["device"]), []).append(point)
    headline = []
    for (op, mode, device), group in lines.items():
        rated = [point for point in group if point["ratio"] is not None]
        entry = {"op": op, "mode": mode, "device": device, "points": len(group),
                 "without_ratio": len(group) - len(rated)}
        if rated:
            worst = min(rated, key=lambda point: point["ratio"])
            fractions = [point["limit_fraction"] for point in rated if point["limit_fraction"] is not None]
            entry.update(
                worst_ratio=worst["ratio"], worst_size=worst["size"], worst_peer=worst["peer"],
                worst_ours=worst["ours"], median_ratio=statistics.median(point["ratio"] for point in rated),
                losses=sum(point["ratio"] < 1 for point in rated),
                below_target=sum(point["ratio"] < SWEEP_TARGET_RATIO for point in rated),
                below_target_beyond_limit=sum(point["ratio"] < SWEEP_TARGET_RATIO and beyond_the_limit(point)
                                              for point in rated),
                median_target_beyond_limit=sum(_peer_leaves_no_room(point, SWEEP_MEDIAN_TARGET)
                                               for point in rated),
                worst_peer_limit_fraction=worst.get("peer_limit_fraction"),
                worst_limit=worst["limit"], worst_limit_fraction=worst["limit_fraction"],
                median_limit_fraction=statistics.median(fractions) if fractions else None)
        headline.append(entry)
    return headline


def headline_lines(headline: list) -> list:
    several_devices = len({entry["device"] for entry in headline}) > 1
    out = []
    for entry in headline:
        what = f"{entry['op']} {entry['mode']}" + (f" ({entry['device']})" if several_devices else "")
        if "worst_ratio" not in entry:
            out.append(f"- {what}: no point with both gmkernels and a peer ({entry['points']} points)")
            continue
        limit = (f"; gmkernels at {_percent(entry['worst_limit_fraction'])}% of {entry['worst_limit']} there "
                 f"(the peer at {_percent(entry.get('worst_peer_limit_fraction'))}%), "
                 f"median {_percent(entry['median_limit_fraction'])}%" if entry.get("worst_limit") else
                 "; no machine limit declared")
        if entry.get("below_target"):
            limit += (f"; {entry['below_target']} below {SWEEP_TARGET_RATIO}x, of which "
                      f"{entry['below_target_beyond_limit']} with the peer over "
                      f"{_percent(1 / SWEEP_TARGET_RATIO)}% of the limit (the target beyond it)")
        if entry["median_ratio"] < SWEEP_MEDIAN_TARGET and entry.get("median_target_beyond_limit"):
            beyond = entry["median_target_beyond_limit"]
            rated = entry["points"] - entry["without_ratio"]
            limit += (f"; median below {SWEEP_MEDIAN_TARGET:g}x, the peer over "
                      f"{_percent(1 / SWEEP_MEDIAN_TARGET)}% of the limit at {beyond} of {rated} points"
                      + (" (the median target beyond it)" if 2 * beyond > rated else ""))
        missing = f", {entry['without_ratio']} without a peer" if entry["without_ratio"] else ""
        out.append(f"- {what}: worst **{entry['worst_ratio']:.2f}x** vs {entry['worst_peer']} at "
                   f"{entry['worst_size']}; median {entry['median_ratio']:.2f}x over {entry['points']} points "
                   f"({entry['losses']} below 1x{missing}){limit}")
    return out


def _sweep_point_lines(points: list) -> list:
    with_device = len({point["device"] for point in points}) > 1
    titles = ["size", "mode"] + (["device"] if with_device else []) + [
        "gmkernels ms", "best peer", "peer ms", "ratio", "% of limit (limit)", "peer % of limit", "peak memory",
        "every contender, ms"]
    table = []
    for point in points:
        everyone = ", ".join(f"{name}{' (context)' if name in point['context'] else ''} "
                             f"{_number(1e3 * seconds, '.3g')}" for name, seconds in point["contenders"].items())
        ratio = _number(point["ratio"], ".2f")
        table.append([point["size"], point["mode"]] + ([point["device"]] if with_device else []) + [
            _number(point["ours_s"] and 1e3 * point["ours_s"], ".3f")
            + (f" ({point['ours']})" if point["ours"] else ""),
            point["peer"] or "-", _number(point["peer_s"] and 1e3 * point["peer_s"], ".3f"),
            f"**{ratio}**" if point["ratio"] is not None and point["ratio"] < 1 else ratio,
            f"{_percent(point['limit_fraction'])} ({point['limit']})" if point.get("limit") else "-",
            _percent(point.get("peer_limit_fraction")) if point.get("limit") else "-",
            _bytes(point["peak_bytes"]), everyone])
    return _markdown_table(titles, table)


def write_sweep_markdown(path: str, result: dict, plot_name: Optional[str]) -> None:
    settings, points = result["settings"], result["points"]
    lines = [f"# gmkernels size sweep ({settings['kind']}), {settings['date']}", "",
             "Worst ratio over the grid of gmkernels' best backend against the best peer (what a user "
             "writes: plain eager, its torch.compile, pykeops where installed; the reference is context, "
             "never the denominator), per op and mode; above 1x gmkernels is faster.", ""]
    lines += headline_lines(result["headline"])
    if settings["smoke"]:
        lines += ["", "Smoke run: single runs of tiny sizes; the machinery is checked, the ratios mean nothing."]
    pending = settings.get("sections_pending")
    if pending:
        lines += ["", f"**Partial**: the run stopped before the sections {', '.join(pending)}."]
    if result["errors"]:
        lines += ["", "## Contenders that failed", ""]
        lines += [f"- `{error['op']}` {error.get('size', '')} {error.get('mode', '')} {error.get('variant', '')}: "
                  f"{error['error']}" for error in result["errors"]]
    lines += ["", "## Peers left out for their memory", ""]
    skipped = settings.get("skipped") or []
    lines += _markdown_table(["op", "size", "mode", "contender", "why"],
                             [[entry["op"], entry["size"], entry["mode"], entry["variant"], entry["why"]]
                              for entry in skipped]) if skipped else ["None."]
    lines += ["", "## Device", ""] + _device_lines(result["device"])
    if settings.get("seconds_total") is not None:
        lines.append(f"- run time: {settings['seconds_total']:.0f} s wall, "
                     f"{settings.get('cpu_seconds_total', float('nan')):.0f} s CPU (all threads); per section: "
                     + ", ".join(f"{op} {value:.0f} s"
                                 for op, value in settings.get("seconds_per_section", {}).items()))
    lines += ["", "## Machine limits, measured in this run", ""] + _limit_lines(result["limits"])
    lines += [
        "", "## How to read", "",
        f"- Times: median of up to {settings['repeats']} runs after warm-up ({settings['timers']}; in "
        "rounds of one call per contender, each round starting one contender later), each "
        f"contender stopping after {settings['max_seconds']} s of runs (at least {settings['min_repeats']})"
        + (f"; a contender other than gmkernels' whose fastest run took over {settings['retire_factor']:g}x the "
           "fastest peer run stops there (it cannot be the best peer), so its time may be of one run."
           if settings.get("retire_factor") else "."),
        "- `ratio`: best peer's time over gmkernels' best backend's time at that point (bold: below 1, a loss). "
        "Every grid point is listed; a point without a ratio lacks gmkernels or every peer there (see above).",
        "- torch.compile peers: one compiled function per formula and variant, reused over the grid as a "
        "user's code meeting several sizes would be: static shapes at its first size, dynamic-shape code "
        "after a recompile at the next (torch.compile's default).",
        "- `% of limit`: gmkernels' time against the roof its case declares: bytes at the best bandwidth "
        "above, FLOPs at the fp32 matmul rate (those of the case's own shape where named at that shape's "
        "rate, e.g. a forward's skinny product, the rest such as its gradients' products at the square "
        "rate: `+ square`), and for exp-heavy kernels the exps at the measured torch.exp rate (added to "
        "the matmul time when both apply). `peer % of limit`: the best peer against the same roof. The "
        f"headline counts the points below the {SWEEP_TARGET_RATIO}x target and, of those, the points where "
        f"the peer is already over 1/{SWEEP_TARGET_RATIO} of the roof, so that the target would take "
        f"gmkernels past it; where the median is below {SWEEP_MEDIAN_TARGET:g}x, also the points where the "
        f"peer is over 1/{SWEEP_MEDIAN_TARGET:g} of the roof (no {SWEEP_MEDIAN_TARGET:g}x possible there: "
        "with more than half the points so, the median target is beyond the roof too).",
        f"- Peak memory, CPU: {CPU_MEMORY_METHOD}. GPU: {CUDA_MEMORY_METHOD}.",
        f"- Settings: {json.dumps({key: settings.get(key) for key in ('quick', 'smoke', 'no_compile', 'filters')})}.",
    ]
    if plot_name:
        lines += ["", f"![ratio vs size]({plot_name})"]
    _write_sections(path, lines, points, _sweep_point_lines, settings)


def write_sweep_plot(path: str, points: list, title: str) -> Optional[str]:
    """Ratio (best peer / gmkernels' best) vs the size of the work, one panel per op and device,
    one series per mode, the worst point of each panel ringed and labelled with its size."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    rated = [point for point in points if point["ratio"] is not None]
    panels = list(dict.fromkeys((point["op"], point["device"]) for point in rated))
    if not panels:
        return "no point with a ratio"
    columns = min(2, len(panels))
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.2 * lines), squeeze=False)
    for axis, (op, device) in zip(axes.flat, panels):
        panel = [point for point in rated if (point["op"], point["device"]) == (op, device)]
        for index, point in enumerate(panel):
            point.setdefault("_x", point["work"] if point["work"] else index + 1)
        for mode in dict.fromkeys(point["mode"] for point in panel):
            series = sorted((point["_x"], point["ratio"]) for point in panel if point["mode"] == mode)
            axis.plot(*zip(*series), marker="o", markersize=3, linestyle="none", label=mode)
        worst = min(panel, key=lambda point: point["ratio"])
        axis.plot([worst["_x"]], [worst["ratio"]], marker="o", markersize=12, markerfacecolor="none",
                  markeredgecolor="red", linestyle="none", label=f"worst: {worst['ratio']:.2f}x")
        axis.annotate(f"{worst['size']}\n{worst['mode']}", (worst["_x"], worst["ratio"]), fontsize=6,
                      xytext=(6, -14), textcoords="offset points", color="red")
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xscale("log")
        axis.set_yscale("log")
        labels = {point["work_label"] for point in panel if point["work"]}
        axis.set_xlabel(labels.pop() if len(labels) == 1 else "size of the work (see the table)", fontsize=8)
        axis.set_ylabel("best peer time / gmkernels time", fontsize=8)
        axis.set_title(f"{op}" + (f" ({device})" if len({d for _, d in panels}) > 1 else ""), fontsize=9)
        axis.tick_params(which="both", labelsize=7)
        axis.legend(fontsize=6, framealpha=0.6)
        for point in panel:
            del point["_x"]
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(title + " (above 1: gmkernels faster)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.2 * lines)))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


README_HEADLINE_START = "<!-- sweep headline: written by `python bench/run.py --sweep`, do not edit by hand -->"
README_HEADLINE_END = "<!-- end of sweep headline -->"


def update_readme_headline(path: str, result: dict, markdown_name: str) -> None:
    """Writes the sweep's headline into the results README between its markers (replacing the
    previous one), or, the first time, before the README's first section."""
    block = "\n".join([README_HEADLINE_START, f"## Size sweep: the worst case per op and mode (`{markdown_name}`)", "",
                       f"`python bench/run.py --sweep`, {result['settings']['date']}, {result['device']['cpu']}, "
                       f"{result['settings'].get('seconds_total', 0):.0f} s:", ""]
                      + headline_lines(result["headline"]) + [README_HEADLINE_END])
    with open(path) as handle:
        text = handle.read()
    if README_HEADLINE_START in text and README_HEADLINE_END in text:
        before, rest = text.split(README_HEADLINE_START, 1)
        text = before + block + rest.split(README_HEADLINE_END, 1)[1]
    else:
        at = text.find("\n## ")
        text = (text + "\n" + block + "\n") if at < 0 else text[:at + 1] + block + "\n\n" + text[at + 1:]
    with open(path, "w") as handle:
        handle.write(text)
