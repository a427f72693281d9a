"""How a benchmark run is shown: the stdout table, the JSON and Markdown results, the speed-up plot."""
from __future__ import annotations

import json
import math
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
            f"{_number(values['fp32_matmul_gflop_per_s'], '.1f')} (n={values['matmul_size']})",
            _number(values.get("tf32_matmul_gflop_per_s"), ".1f"),
            _number(values.get("bf16_matmul_gflop_per_s"), ".1f"),
        ])
    lines = _markdown_table(["device", "buffer", "copy GB/s (read+write)", "read GB/s (sum)",
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
        "names one -- whichever is longer) over the measured time. `-`: the case declares neither.",
        f"- Peak memory, CPU: {CPU_MEMORY_METHOD}. GPU: {CUDA_MEMORY_METHOD}.",
        f"- Settings: {json.dumps({key: settings[key] for key in ('quick', 'smoke', 'filters')})}.",
    ]
    if len({row.get("threads") for row in rows}) > 1:
        lines.append("- Threads: the run's own count unless a row's `threads` says otherwise (training "
                     "steps run on one thread, as gmgan's presets run them).")
    if plot_name:
        lines += ["", f"![speed-up vs size]({plot_name})"]
    for op in dict.fromkeys(row["op"] for row in rows):
        lines += ["", f"## {op}", ""] + _op_lines([row for row in rows if row["op"] == op])
    if settings.get("maintainer_notes"):
        lines += ["", "## Notes for maintainers", ""] + [f"- {note}" for note in settings["maintainer_notes"]]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


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
