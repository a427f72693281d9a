"""The benchmark suite's machinery: an end-to-end smoke run that writes every result file, the
memory probe, the roofline judgement, the target verdicts and the filters. No timing assertions:
numbers on a shared machine are noise, only their presence and consistency are checked."""
import importlib
import json
import sys
import time

import pytest
import torch

from bench import report, run
import gmkernels
from bench.common import PROFILER_NOISE, Case, Contender, measure, measure_interleaved, peak_memory, warm_up
from bench.machine import Limits, judge

MiB = 1 << 20


def _limits(bandwidth_gb_per_s=10.0, fp32_gflop_per_s=100.0, shapes=None, exp_gelem_per_s=1.0) -> Limits:
    """Limits with known values, so judgements can be checked without measuring anything."""
    limits = Limits()
    limits._devices["cpu"] = {
        "bandwidth_buffer_bytes": 64 * MiB, "copy_gb_per_s": bandwidth_gb_per_s,
        "read_gb_per_s": bandwidth_gb_per_s / 2, "bandwidth_gb_per_s": bandwidth_gb_per_s,
        "matmul_size": 1024, "fp32_matmul_gflop_per_s": fp32_gflop_per_s, "exp_gelem_per_s": exp_gelem_per_s,
    }
    for shape, rate in (shapes or {}).items():
        limits._shapes[(shape, "cpu")] = rate
    return limits


def test_smoke_run_writes_json_markdown_and_plot_with_limits_and_fractions(tmp_path):
    ops = list(run.OPS)
    argv = ["--smoke", "--out", str(tmp_path)] + [arg for op in ops for arg in ("--op", op)]
    assert run.main(argv) == 0

    written = {path.suffix: path for path in tmp_path.iterdir()}
    assert set(written) == {".json", ".md", ".png"}
    assert written[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads(written[".json"].read_text())
    cpu = result["limits"]["devices"]["cpu"]
    for key in ("copy_gb_per_s", "read_gb_per_s", "bandwidth_gb_per_s", "fp32_matmul_gflop_per_s"):
        assert cpu[key] > 0, key
    assert result["device"]["threads"] == torch.get_num_threads()
    assert result["device"]["torch"] == torch.__version__
    rows = result["rows"]
    assert {row["section"] for row in rows} == set(ops)
    assert not any("compile" in row["variant"] for row in rows), "smoke runs leave compiling contenders out"
    for row in rows:
        assert row["median_s"] > 0 and row["repeats"] == 1
        assert row["peak_bytes"] is not None and row["peak_bytes"] >= 0
        assert row["speedup_vs_baseline"] > 0
    bandwidth_rows = [row for row in rows if row.get("gb_per_s") is not None]
    assert bandwidth_rows, "mixture_sample's forward declares bytes_moved"
    for row in bandwidth_rows:
        assert row["limit"] == "bandwidth"
        device = result["limits"]["devices"][row["device"]]     # a GPU machine's GPU rows: its own
        assert row["limit_fraction"] == pytest.approx(row["gb_per_s"] / device["bandwidth_gb_per_s"])

    markdown = written[".md"].read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[:3] == ["## Below target", "## Device", "## Machine limits, measured in this run"]
    assert f"{cpu['copy_gb_per_s']:.1f}" in markdown
    assert "(bandwidth)" in markdown
    assert written[".png"].name in markdown


def test_an_interrupted_run_keeps_its_finished_sections_marked_partial(tmp_path, monkeypatch):
    finished, interrupted = "class_pairwise_kl", "mixture_sample"
    run_case = run.run_case

    def stop_at_the_second_section(case, *args, **kwargs):
        if case.op == interrupted:
            raise KeyboardInterrupt
        return run_case(case, *args, **kwargs)

    monkeypatch.setattr(run, "run_case", stop_at_the_second_section)
    with pytest.raises(KeyboardInterrupt):
        run.main(["--smoke", "--out", str(tmp_path), "--op", finished, "--op", interrupted])

    written = {path.suffix: path for path in tmp_path.iterdir()}
    result = json.loads(written[".json"].read_text())
    assert result["settings"]["sections_pending"] == [interrupted]
    assert {row["op"] for row in result["rows"]} == {finished}
    assert f"**Partial**: the run stopped before the sections {interrupted}" in written[".md"].read_text()


@pytest.fixture
def no_gpu(monkeypatch):
    """The cases of a machine without a GPU (a GPU machine adds its own: cuda and triton kernels
    on GPU tensors, beside these)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_sections_offer_only_the_kernel_backends_that_run_their_tensors(no_gpu):
    # As on a GPU machine: CPU cases time cpp alone (cuda cannot take CPU tensors; Triton would
    # run them only under its interpreter).
    everything = ("cuda", "triton", "cpp", "reference")
    for op in run.OPS:
        module = importlib.import_module(f"bench.ops.{op}")
        for case in module.cases("smoke", everything):
            kernels = {contender.name for contender in case.contenders if contender.backend is not None}
            assert kernels <= {"gmkernels[cpp]"}, (op, case.size, kernels)


def test_peak_memory_is_the_high_water_mark_of_live_cpu_allocations():
    def two_buffers_alive():
        first = torch.ones(2 * MiB // 4)
        second = torch.ones(2 * MiB // 4)
        return first + second            # 3 x 2 MiB live at once

    def one_buffer_at_a_time():
        first = torch.ones(2 * MiB // 4)
        del first
        return torch.ones(2 * MiB // 4)  # never more than 2 MiB live

    assert 6 * MiB <= peak_memory(two_buffers_alive, "cpu") < 7 * MiB
    assert 2 * MiB <= peak_memory(one_buffer_at_a_time, "cpu") < 3 * MiB


def test_measure_reports_the_runs_it_made_and_the_memory_of_a_call():
    calls = []

    def call():
        calls.append(1)
        return torch.zeros(MiB // 4)

    timing = measure(call, repeats=3, warmup=2, track_memory=True)
    assert len(calls) == 2 + 3 and timing["repeats"] == 3
    assert timing["device"] == "cpu" and timing["timer"] == "wall clock"
    assert timing["min_s"] <= timing["median_s"]
    assert timing["peak_bytes"] >= MiB


def test_cheap_calls_get_more_rounds_up_to_max_rounds_and_slow_ones_stop_at_max_seconds():
    """min_seconds / max_rounds: a call far cheaper than min_seconds is timed max_rounds times, one
    that fills min_seconds with its repeats is timed `repeats` times, one slower than max_seconds
    min_repeats times."""
    def counting(seconds):
        calls = []

        def call():
            calls.append(1)
            if seconds:
                time.sleep(seconds)
        return call, calls

    cheap, cheap_calls = counting(0)
    timing = measure(cheap, repeats=3, warmup=1, min_seconds=5.0, max_rounds=40)
    assert timing["repeats"] == 40 and len(cheap_calls) == 1 + 40
    middling, _ = counting(0.02)
    assert measure(middling, repeats=3, warmup=1, min_seconds=0.01, max_rounds=40)["repeats"] == 3
    slow, _ = counting(0.03)
    assert measure(slow, repeats=10, warmup=1, max_seconds=0.01, min_repeats=2,
                   min_seconds=5.0, max_rounds=40)["repeats"] == 2
    assert measure(cheap, repeats=3, warmup=1)["repeats"] == 3      # the defaults: as before


def test_contenders_far_slower_than_the_fastest_peer_leave_the_rounds_but_gmkernels_never_does():
    """retire_factor: the reference and a peer 10x slower than the fastest peer are timed once;
    the fastest peer, a peer within the factor, and gmkernels (even 10x slower) run every round."""
    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    # 10 ms apart at least: a busy machine (16 test processes on a GPU box) wakes a 4 ms sleep
    # late enough to pass 3x a 2 ms one.
    fns = [sleeper(0.1), sleeper(0.01), sleeper(0.012), sleeper(0.1), sleeper(0.1)]
    states = [warm_up(fn, 1, "cpu", False) for fn in fns]
    peers = [None, True, True, True, False]     # gmkernels, fast peer, near peer, slow peer, reference
    timings = measure_interleaved(fns, states, repeats=4, max_seconds=10.0, min_repeats=2,
                                  peers=peers, retire_factor=3.0)
    assert [t["repeats"] for t in timings] == [4, 4, 4, 1, 1]
    untouched = measure_interleaved(fns, states, repeats=4, max_seconds=10.0, min_repeats=2)
    assert [t["repeats"] for t in untouched] == [4] * 5
    settings = run.SWEEP_MODES["full"]
    assert settings["retire_factor"] >= 2.5      # above the machine's noise between calls (< 2x)


def test_interleaved_case_times_its_variants_in_turn_and_drops_only_the_broken_one():
    order = []

    def contender(name, fail=False):
        def run():
            if fail:
                raise RuntimeError("cannot run here")
            order.append(name)
            return torch.zeros(4)
        return Contender(name, run)

    case = Case("op", "s", "train step", [contender("a"), contender("broken", fail=True), contender("b")],
                baseline="a", interleave=True)
    settings = {"smoke": False, "repeats": 4, "warmup": 2, "max_seconds": 10.0, "min_repeats": 1}
    errors = []
    rows = run.run_case(case, settings, _limits(), None, errors)

    assert [row["variant"] for row in rows] == ["a", "b"]
    assert [error["variant"] for error in errors] == ["broken"] and "cannot run here" in errors[0]["error"]
    # after each contender's warm-up, rounds of one call each, each round starting one later
    assert order[-8:] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    for row in rows:
        assert row["repeats"] == 4 and row["timer"] == "wall clock, interleaved"
        assert row["speedup_vs_baseline"] > 0


def test_judge_reports_the_fraction_of_the_limit_that_binds():
    limits = _limits(bandwidth_gb_per_s=10.0, fp32_gflop_per_s=100.0, shapes={(64, 32, 8): 20.0})
    memory_bound = {"median_s": 2.0, "device": "cpu"}
    # 10 GB at 10 GB/s takes 1 s; 50 GFLOP at 100 GFLOP/s takes 0.5 s: bandwidth binds, at 1 s / 2 s.
    judge(memory_bound, Case("op", "s", "forward", [], bytes_moved=10e9, flops=50e9), limits)
    assert memory_bound["limit"] == "bandwidth"
    assert memory_bound["limit_fraction"] == pytest.approx(0.5)
    assert memory_bound["flop_fraction"] == pytest.approx(0.25)

    # The same FLOPs judged against a skinny matmul's 20 GFLOP/s take 2.5 s: that roof binds.
    shaped = {"median_s": 5.0, "device": "cpu"}
    judge(shaped, Case("op", "s", "forward", [], bytes_moved=10e9, flops=50e9, matmul_shape=(64, 32, 8)), limits)
    assert shaped["limit"] == "fp32 matmul 64x32x8"
    assert shaped["limit_fraction"] == pytest.approx(0.5)
    assert shaped["matmul_shape_fraction"] == pytest.approx(0.5)

    training = {"median_s": 0.5, "device": "cpu"}
    judge(training, Case("op", "s", "train step", [], items=64), limits)
    assert training["items_per_s"] == pytest.approx(128)
    assert "limit" not in training


def _row(contender, seconds, limit_fraction=None):
    row = {"op": "op", "size": "n=1", "mode": "forward", "variant": contender, "median_s": seconds,
           "min_s": seconds, "repeats": 1, "device": "cpu"}
    if limit_fraction is not None:
        row.update(limit="bandwidth", limit_fraction=limit_fraction)
    return row


def test_missed_target_is_listed_first_with_the_roofline_reason(tmp_path):
    # The baseline already runs at 50% of bandwidth, so no contender can be more than 2x faster.
    rows = [_row("gmkernels[cpp]", 0.6, 0.83), _row("reference eager", 1.0, 0.5),
            _row("reference compile", 0.5, 1.0)]
    case = Case("op", "n=1", "forward", [], targets={"gmkernels[cpp]": 5.0},
                peer_targets={"gmkernels[cpp]": 1.0}, note="eps must be regenerated")
    run.compare(rows, case)
    fused = rows[0]
    assert fused["speedup_vs_baseline"] == pytest.approx(1 / 0.6)
    assert fused["speedup_vs_compile"] == pytest.approx(0.5 / 0.6)
    assert fused["meets_target"] is False
    assert "< 5.0x vs reference eager" in fused["missed"] and "< 1.0x vs reference compile" in fused["missed"]
    assert fused["reason"].startswith("eps must be regenerated")
    assert "at most 2.00x is possible" in fused["reason"]
    assert "meets_target" not in rows[1]

    result = {"settings": {"kind": "quick", "date": "today", "repeats": 1, "timers": "wall clock",
                           "quick": True, "smoke": False, "filters": {}},
              "device": {"cpu": "cpu", "threads": 1, "python": "3", "torch": "2", "backends": ["cpp"]},
              "limits": _limits().summary(), "rows": rows, "errors": []}
    path = tmp_path / "result.md"
    report.write_markdown(str(path), result, None)
    text = path.read_text()
    assert text.index("## Below target") < text.index("## Device") < text.index("## op")
    below = text[text.index("## Below target"):text.index("## Device")]
    assert "gmkernels[cpp]" in below and "at most 2.00x is possible" in below


def test_target_without_its_reference_row_is_a_miss_unless_filtered_out():
    case = Case("op", "n=1", "forward", [], targets={"gmkernels[cpp]": 2.0},
                peer_targets={"gmkernels[cpp]": 1.0})
    rows = [_row("gmkernels[cpp]", 0.1)]
    run.compare(rows, case, dropped={"reference compile"})
    assert rows[0]["meets_target"] is False
    assert rows[0]["missed"] == "no reference eager row to compare with"

    rows = [_row("gmkernels[cpp]", 0.1)]
    run.compare(rows, case, dropped={"reference eager", "reference compile"})
    assert "meets_target" not in rows[0] and "missed" not in rows[0]


def test_filters_keep_reference_variants_and_drop_compiling_ones_in_smoke_runs():
    def noop():
        return None

    case = Case("op", "N=4 n=64", "forward", [
        Contender("gmkernels[cpp]", noop), Contender("gmkernels[triton]", noop), Contender("pykeops", noop),
        Contender("reference eager", noop), Contender("reference compile", noop),
        Contender("fused by hand", noop, jit=True)])
    names = [contender.name for contender in run.select_contenders(case, ["cpp"], drop_compiling=False)]
    assert names == ["gmkernels[cpp]", "reference eager", "reference compile", "fused by hand"]
    names = [contender.name for contender in run.select_contenders(case, None, drop_compiling=True)]
    assert names == ["gmkernels[cpp]", "gmkernels[triton]", "reference eager"]

    other = Case("op", "N=8 n=128", "forward", [])
    assert run.select_cases([case, other], ["n=128"]) == [other]
    assert run.select_cases([case, other], None) == [case, other]


def test_pykeops_variant_is_added_only_when_keops_loads(monkeypatch):
    from bench import common

    class FakeLazyTensor:
        pass

    monkeypatch.setattr(common, "pykeops_lazy_tensor", lambda: None)
    assert common.pykeops_contenders(lambda lazy_tensor: None) == []
    monkeypatch.setattr(common, "pykeops_lazy_tensor", lambda: FakeLazyTensor)
    (contender,) = common.pykeops_contenders(lambda lazy_tensor: lambda: lazy_tensor)
    assert contender.name == "pykeops" and contender.backend == "pykeops" and contender.compiles
    assert contender.run() is FakeLazyTensor


def _compared(variant, size, baseline, peer, speedup_vs_baseline, speedup_vs_compile=None):
    row = {"op": "op", "size": size, "mode": "forward", "variant": variant, "baseline": baseline,
           "speedup_vs_baseline": speedup_vs_baseline, "device": "cpu"}
    if speedup_vs_compile is not None:
        row.update(peer=peer, speedup_vs_compile=speedup_vs_compile)
    return row


def test_plot_draws_one_line_per_contender_and_comparison_and_keeps_every_size():
    rows = [
        # A case without a compiled peer: compared with its baseline.
        _compared("gmkernels[cpp]", "N=2000 pairwise", "reference eager", None, 70.0),
        _compared("reference eager", "N=2000 pairwise", "reference eager", None, 1.0),
        # Two cases with another baseline and its compiled peer.
        _compared("gmkernels[cpp]", "N=20000", "class-means eager", "class-means compile", 3.7, 4.6),
        _compared("class-means compile", "N=20000", "class-means eager", "class-means compile", 0.8, 1.0),
        _compared("gmkernels[cpp]", "N=200000", "class-means eager", "class-means compile", 3.0, 2.5),
        # A case with a single contender: no ratio, but still a size on the axis.
        _compared("gmkernels[cpp]", "N=4096 large", "gmkernels[cpp]", None, 1.0),
    ]
    sizes, series = report.plot_series(rows)
    assert sizes == ["N=2000 pairwise", "N=20000", "N=200000", "N=4096 large"]
    assert series == {("gmkernels[cpp]", "reference eager"): [(0, 70.0)],
                      ("gmkernels[cpp]", "class-means compile"): [(1, 4.6), (2, 2.5)]}
    assert report.readable("class-means compile") == "torch.compile of the class-means formula"
    assert report.readable("reference eager") == "the eager reference"
    assert report.readable("gmkernels[cpp]") == "gmkernels (cpp)"


def test_memory_probe_drops_the_profilers_own_lines_and_keeps_the_calls(capfd):
    existing = torch.ones(MiB)

    def frees_a_block_from_before_the_probe():
        nonlocal existing
        existing = None                       # the CPU allocator notes a block of unknown size
        print("the call's own line", file=sys.stderr, flush=True)
        return torch.ones(4)

    peak_memory(frees_a_block_from_before_the_probe, "cpu")
    err = capfd.readouterr().err
    assert "the call's own line" in err
    assert not any(noise in err for noise in PROFILER_NOISE), err


def _fake_section(monkeypatch):
    """One case whose contenders cost nothing and miss their target; no limits measured."""
    def cases(kind, backends):
        return [Case("op", "n=1", "forward", [Contender("gmkernels[cpp]", lambda: torch.zeros(1)),
                                               Contender("reference eager", lambda: torch.zeros(1))],
                     targets={"gmkernels[cpp]": 1e6})]
    monkeypatch.setattr(run, "load_cases", lambda op, kind: cases(kind, ()))
    monkeypatch.setattr(run, "measure_limits", lambda limits: _limits())


@pytest.mark.parametrize("kind", ["--quick", None])
def test_below_target_list_is_printed_by_full_runs_only_and_budget_notes_never(kind, monkeypatch, capsys, tmp_path):
    _fake_section(monkeypatch)
    monkeypatch.setattr(run, "QUICK_BUDGET_S", 0.0)   # every quick run is over budget
    argv = ["--op", run.OPS[0], "--out", str(tmp_path)] + ([kind] if kind else [])
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert report.TABLE_LEGEND.splitlines()[0] in out
    assert ("Below target:" in out) == (kind is None)
    assert "budget" not in out
    (markdown,) = tmp_path.glob("*.md")
    assert ("## Notes for maintainers" in markdown.read_text()) == (kind == "--quick")


def test_a_case_runs_on_its_own_thread_count_and_the_runs_is_restored():
    seen = []
    case = Case("op", "s", "train step", [Contender("a", lambda: seen.append(torch.get_num_threads()))],
                baseline="a", threads=1)
    before = torch.get_num_threads()
    settings = {"smoke": False, "repeats": 1, "warmup": 1, "max_seconds": 1.0, "min_repeats": 1}
    rows = run.run_case(case, settings, _limits(), None, [])
    assert set(seen) == {1} and rows[0]["threads"] == 1
    assert torch.get_num_threads() == before


def test_second_order_times_a_kernel_only_when_its_second_derivative_is_the_references(monkeypatch, no_gpu):
    from bench.ops import second_order

    class OnceDifferentiable(torch.autograd.Function):
        """x^3 / 3 whose backward x^2 is computed off the graph: a zero second derivative."""
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.pow(3) / 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x.detach().pow(2)

    def exact_cube(x):
        return x.pow(3) / 3

    def cube_whose_kernels(kernel_cube):
        """An op whose kernel backends compute `kernel_cube` instead of the reference's."""
        def make(device, dtype=torch.float32):
            x = torch.linspace(-1, 1, 5, dtype=dtype, device=device).requires_grad_()
            return second_order.Problem(
                "cube", "n=5", (x,),
                lambda x: exact_cube(x) if gmkernels.get_backend() == "reference" else kernel_cube(x),
                exact_cube)
        monkeypatch.setitem(second_order.CHECK_SIZES, make, ())
        return make

    cpu = torch.device("cpu")
    check = second_order.second_derivative_problem
    assert check(cube_whose_kernels(exact_cube), "cpp", cpu) is None
    assert check(cube_whose_kernels(OnceDifferentiable.apply), "cpp", cpu).startswith("raises RuntimeError")
    off_by_one_percent = cube_whose_kernels(lambda x: 1.01 * exact_cube(x))
    assert check(off_by_one_percent, "cpp", cpu) == "its second derivative differs from the reference backend's"

    monkeypatch.setattr(second_order, "second_derivative_problem", lambda make, name, device: None)
    for case in second_order.cases("smoke", ("cpp", "reference")):
        assert [c.name for c in case.contenders] == ["gmkernels[cpp]", "reference eager"]
        assert case.mode == "gradient penalty"


# --- The size sweep ---------------------------------------------------------------------------

def _sweep_row(size, contender, seconds, limit_fraction=None, is_peer=None):
    row = {"op": "op", "size": size, "mode": "forward", "variant": contender, "median_s": seconds,
           "device": "cpu", "is_peer": contender.startswith("plain") if is_peer is None else is_peer}
    if limit_fraction is not None:
        row.update(limit="bandwidth", limit_fraction=limit_fraction)
    return row


def test_sweep_headline_is_the_worst_and_median_ratio_against_the_best_peer_never_the_reference():
    rows = [
        # ratio 2.0: the best peer is the compiled formula (2 s), not the faster reference (0.1 s).
        _sweep_row("n=1", "gmkernels[cpp]", 1.0, 0.5), _sweep_row("n=1", "plain eager", 3.0),
        _sweep_row("n=1", "plain compile", 2.0), _sweep_row("n=1", "reference eager", 0.1),
        # ratio 0.5 (a loss, the worst): the best backend of two is the one that counts.
        _sweep_row("n=2", "gmkernels[cpp]", 4.0, 0.1), _sweep_row("n=2", "gmkernels[triton]", 2.0, 0.2),
        _sweep_row("n=2", "plain eager", 1.0),
        # ratio 3.0
        _sweep_row("n=3", "gmkernels[cpp]", 1.0, 0.6), _sweep_row("n=3", "plain eager", 3.0),
        # no peer ran: kept, without a ratio
        _sweep_row("n=4", "gmkernels[cpp]", 1.0),
    ]
    points = report.sweep_points(rows)
    assert [point["size"] for point in points] == ["n=1", "n=2", "n=3", "n=4"]
    assert [point["ratio"] for point in points] == [pytest.approx(2.0), pytest.approx(0.5), pytest.approx(3.0), None]
    assert points[0]["peer"] == "plain compile" and points[0]["context"] == ["reference eager"]
    assert points[1]["ours"] == "gmkernels[triton]"

    (line,) = report.sweep_headline(points)
    assert line["worst_ratio"] == pytest.approx(0.5) and line["worst_size"] == "n=2"
    assert line["worst_peer"] == "plain eager" and line["worst_ours"] == "gmkernels[triton]"
    assert line["median_ratio"] == pytest.approx(2.0)
    assert line["losses"] == 1 and line["points"] == 4 and line["without_ratio"] == 1
    assert line["worst_limit_fraction"] == pytest.approx(0.2)
    assert line["median_limit_fraction"] == pytest.approx(0.5)
    (text,) = report.headline_lines([line])
    assert text.startswith("- op forward: worst **0.50x** vs plain eager at n=2; median 2.00x over 4 points")


def test_sweep_headline_counts_the_misses_where_the_peer_leaves_no_room_for_the_target():
    """A point below the 1.2x target whose best peer already runs at over 1 / 1.2 of the machine
    limit cannot reach the target (gmkernels would have to pass the limit): the headline counts
    those apart from the misses that are not bounded so."""
    rows = [
        # 0.8x, the peer at 90% of the limit: beyond it.
        _sweep_row("n=1", "gmkernels[cpp]", 1.0, 0.72), _sweep_row("n=1", "plain eager", 0.8, 0.9),
        # 1.1x, the peer at 50%: a miss with room.
        _sweep_row("n=2", "gmkernels[cpp]", 1.0, 0.55), _sweep_row("n=2", "plain eager", 1.1, 0.5),
        # 2x, the peer at 90% is irrelevant: the target is met.
        _sweep_row("n=3", "gmkernels[cpp]", 0.5, 0.99), _sweep_row("n=3", "plain eager", 1.0, 0.9),
        # 1.0x at exactly 1 / 1.2 of the limit: not beyond (the target just reachable).
        _sweep_row("n=4", "gmkernels[cpp]", 1.0, 5 / 6), _sweep_row("n=4", "plain eager", 1.0, 5 / 6),
    ]
    points = report.sweep_points(rows)
    assert [point["peer_limit_fraction"] for point in points] == [0.9, 0.5, 0.9, pytest.approx(5 / 6)]
    assert [report.beyond_the_limit(point) for point in points] == [True, False, True, False]
    (line,) = report.sweep_headline(points)
    assert line["below_target"] == 3 and line["below_target_beyond_limit"] == 1
    assert line["worst_peer_limit_fraction"] == pytest.approx(0.9)
    (text,) = report.headline_lines([line])
    assert "(the peer at 90.0%)" in text
    assert text.endswith("; 3 below 1.2x, of which 1 with the peer over 83.3% of the limit (the target beyond it)"
                         "; median below 2x, the peer over 50.0% of the limit at 3 of 4 points "
                         "(the median target beyond it)")


def test_sweep_headline_counts_the_points_where_the_peer_leaves_no_room_for_the_median_target():
    """A 2x median needs 2x at half the points; where the best peer already runs at over half of
    the machine limit, 2x is out of reach. The headline counts those points when the median misses
    2x, and says the median target is beyond the limit when they are more than half of the rated
    points (with exactly half, the middle pair's upper value could still reach 2x); a median that
    meets 2x gets no such clause."""
    def line_for(fractions, ours_time):
        rows = []
        for index, fraction in enumerate(fractions):
            size = f"n={index}"
            rows += [_sweep_row(size, "gmkernels[cpp]", ours_time, min(1.0, fraction / ours_time)),
                     _sweep_row(size, "plain eager", 1.0, fraction)]
        (line,) = report.sweep_headline(report.sweep_points(rows))
        return line, report.headline_lines([line])[0]
    # 1.25x everywhere; the peer at 60% of the limit at 3 of 4 points (50% exactly is not beyond).
    line, text = line_for([0.6, 0.6, 0.5, 0.6], 0.8)
    assert line["median_target_beyond_limit"] == 3
    assert text.endswith("; median below 2x, the peer over 50.0% of the limit at 3 of 4 points "
                         "(the median target beyond it)")
    line, text = line_for([0.6, 0.6, 0.5, 0.3], 0.8)
    assert line["median_target_beyond_limit"] == 2
    assert text.endswith("; median below 2x, the peer over 50.0% of the limit at 2 of 4 points")
    line, text = line_for([0.6, 0.6, 0.6, 0.6], 0.4)   # 2.5x: the median target is met
    assert line["median_target_beyond_limit"] == 4 and "median below" not in text


def test_judge_adds_the_exp_time_to_the_matmul_time_for_exp_heavy_cases():
    limits = _limits(fp32_gflop_per_s=100.0, exp_gelem_per_s=2.0)
    row = {"median_s": 2.0, "device": "cpu"}
    # 100 GFLOP at 100 GFLOP/s: 1 s; 1 G exps at 2 G/s: 0.5 s; together 1.5 s of the 2 s.
    judge(row, Case("op", "s", "forward", [], flops=100e9, exps=1e9), limits)
    assert row["limit"] == "fp32 matmul + exp"
    assert row["limit_fraction"] == pytest.approx(0.75)
    exp_only = {"median_s": 1.0, "device": "cpu"}
    judge(exp_only, Case("op", "s", "forward", [], exps=1e9), limits)
    assert exp_only["limit"] == "vectorized exp" and exp_only["limit_fraction"] == pytest.approx(0.5)


def test_judge_takes_only_the_shaped_flops_at_the_matmul_shape_rate():
    """A forward+backward's forward products run at the (slow, skinny) rate of its matmul shape,
    its gradients' products (the long dimension inside) at the square rate: the bound adds the
    two, with the exps on top."""
    limits = _limits(fp32_gflop_per_s=100.0, exp_gelem_per_s=2.0, shapes={(10, 2, 10): 50.0})
    row = {"median_s": 8.0, "device": "cpu"}
    # 100 GFLOP at 50 GFLOP/s (2 s) + 200 GFLOP at 100 GFLOP/s (2 s) + 1 G exps at 2 G/s (0.5 s).
    judge(row, Case("op", "s", "forward+backward", [], flops=300e9, shaped_flops=100e9, exps=1e9,
                    matmul_shape=(10, 2, 10)), limits)
    assert row["limit"] == "fp32 matmul 10x2x10 + square + exp"
    assert row["limit_fraction"] == pytest.approx(4.5 / 8.0)
    whole = {"median_s": 8.0, "device": "cpu"}
    judge(whole, Case("op", "s", "forward", [], flops=300e9, matmul_shape=(10, 2, 10)), limits)
    assert whole["limit"] == "fp32 matmul 10x2x10" and whole["limit_fraction"] == pytest.approx(6.0 / 8.0)


def test_sweep_smoke_run_leads_with_the_headline_and_lists_every_point(tmp_path, no_gpu):
    argv = ["--sweep", "--smoke", "--out", str(tmp_path), "--op", "minibatch_discrimination"]
    assert run.main(argv) == 0
    written = {path.suffix: path for path in tmp_path.iterdir()}
    assert set(written) == {".json", ".md", ".png"} and "sweep-smoke" in written[".md"].name
    result = json.loads(written[".json"].read_text())
    points = result["points"]
    modes = {point["mode"] for point in points}
    assert modes == {"forward", "forward+backward"}
    for point in points:
        assert point["ours"] == "gmkernels[cpp]" and point["peer"] == "naive eager" and point["ratio"] > 0
    assert [(line["op"], line["mode"]) for line in result["headline"]] == [
        ("minibatch_discrimination", "forward"), ("minibatch_discrimination", "forward+backward")]
    markdown = written[".md"].read_text().splitlines()
    assert markdown[4:6] == report.headline_lines(result["headline"])
    table = markdown[markdown.index("## minibatch_discrimination"):]
    for point in points:
        assert any(line.startswith(f"| {point['size']} | {point['mode']} |") for line in table)


def test_sweep_lists_the_peers_it_leaves_out_and_copies_the_headline_into_the_readme(monkeypatch, tmp_path):
    def cases(op):
        return [Case(op, "n=1", "forward", [], peers=("plain eager",), skipped=[("plain compile", "too big")],
                     build=lambda: [Contender("gmkernels[cpp]", lambda: torch.zeros(1)),
                                    Contender("plain eager", lambda: torch.zeros(1))], work=1.0)]
    monkeypatch.setattr(run, "load_cases", lambda op, kind, sweep=False: cases(op))
    monkeypatch.setattr(run, "OPS", ("first", "second"))
    monkeypatch.setattr(run, "measure_limits", lambda limits: _limits())
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmark results\n\nintro\n\n## Older section\n")
    monkeypatch.setattr(run, "RESULTS_README", str(readme))
    assert run.main(["--sweep", "--out", str(tmp_path)]) == 0

    (markdown,) = tmp_path.glob("*-sweep.md")
    text = markdown.read_text()
    left_out = text[text.index("## Peers left out for their memory"):text.index("## Device")]
    for op in run.OPS:
        assert f"| {op} | n=1 | forward | plain compile | too big |" in left_out
    first = readme.read_text()
    assert first.index("intro") < first.index("Size sweep") < first.index("## Older section")
    assert all(f"- {op} forward: worst" in first for op in run.OPS)
    # A second run replaces the block instead of adding one; a filtered run leaves it alone.
    assert run.main(["--sweep", "--out", str(tmp_path)]) == 0
    assert run.main(["--sweep", "--op", run.OPS[0], "--out", str(tmp_path)]) == 0
    assert readme.read_text().count(report.README_HEADLINE_START) == 1


def test_sweep_grids_span_the_issue_sizes_and_never_take_the_reference_as_a_peer(no_gpu):
    grids = {op: importlib.import_module(f"bench.ops.{op}").sweep_cases("full", ("cpp", "reference"))
             for op in run.OPS if op != "training_step"}
    for op, cases in grids.items():
        labels = [(case.op, case.size, case.mode) for case in cases]
        assert len(labels) == len(set(labels)), op
        for case in cases:
            # A size where every peer is over the memory budget lists them as skipped.
            assert case.peers or case.skipped, (op, case.size)
            assert not any("reference" in peer for peer in case.peers), (op, case.size)
            assert case.build and case.work, (op, case.size)
    points = {(case.size, case.mode) for cases in grids.values() for case in cases}
    # The sizes where the kernels lost before the sweep existed, re-measured in the same sweep.
    for size, mode in [("B=2048 C=20000 d=256", "forward"), ("B=8192 C=5000 d=64", "forward+backward x,means"),
                       ("N=64 K=256 n=100000 diag", "forward+backward z.sum()"),
                       ("N=64 K=256 n=100000 diag", "forward+backward dense"),
                       ("N=64 K=256 n=100000 diag", "forward, inputs require grad"),
                       ("N=64 K=256 n=100000 diag", "forward")]:
        assert (size, mode) in points, (size, mode)
    dims = {int(case.size.split("d=")[1].split()[0]) for case in grids["mixture_log_likelihood"]}
    assert dims == {2, 9, 16, 64, 128, 256, 784, 2048}
    log_likelihood_sizes = {case.size for case in grids["mixture_log_likelihood"]}
    assert any("var (C,) log_weights" in size for size in log_likelihood_sizes)
    assert any("var (C,d) log_weights" in size for size in log_likelihood_sizes)
    assert {case.op for case in grids["second_order"]} == {"mixture_log_likelihood", "mixture_sample",
                                                           "class_pairwise_kl", "minibatch_discrimination"}


def test_no_compile_leaves_the_compiling_contenders_out_and_says_so(monkeypatch, tmp_path):
    def noop():
        return torch.zeros(1)

    def cases(op):
        return [Case(op, "n=1", "forward", [Contender("gmkernels[cpp]", noop), Contender("reference eager", noop),
                                            Contender("reference compile", noop)])]
    monkeypatch.setattr(run, "load_cases", lambda op, kind, sweep=False: cases(op))
    monkeypatch.setattr(run, "OPS", ("first",))
    monkeypatch.setattr(run, "measure_limits", lambda limits: _limits())
    assert run.main(["--quick", "--no-compile", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*quick*.json")).read_text())
    assert result["settings"]["no_compile"] is True
    assert {row["variant"] for row in result["rows"]} == {"gmkernels[cpp]", "reference eager"}
    assert "Run with `--no-compile`" in next(tmp_path.glob("*quick*.md")).read_text()


def test_value_check_cost_times_every_op_with_the_checks_on_and_off(monkeypatch):
    from bench import value_checks
    seen = []
    switch = gmkernels.value_checks

    def spy(enabled):
        seen.append(enabled)
        return switch(enabled)
    monkeypatch.setattr(gmkernels, "value_checks", spy)
    rows = value_checks.measure(torch.device("cpu"), smoke=True)
    assert [row["op"] for row in rows] == list(value_checks.SIZES)
    assert all(row["checked_s"] > 0 and row["unchecked_s"] > 0 for row in rows)
    assert set(seen) == {True, False}
    assert gmkernels.value_checks_enabled()
    table = value_checks.markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == 7 for line in table)
    assert table[2].startswith("| class_pairwise_kl | N=64 C=5 | cpu |")
