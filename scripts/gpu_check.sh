#!/usr/bin/env bash
# One prepared command that validates gmkernels on the machine it runs on, within ~9 minutes, with
# no network and nothing installed:
#
#   bash scripts/gpu_check.sh OUT_DIR        # GPU_CHECK_FAST=1: a handful of tests, a smoke bench (CI)
#
# Stages, each under its own time cap in seconds (override with the variable named):
#   build  BUILD_CAP=120  the extension in place (setup.py build_ext --inplace), for the local GPU's
#                         arch only, with all cores; incremental when build/ holds an earlier build
#                         (40-50 s from scratch on an H200 machine's 16 cores)
#   tests  TESTS_CAP=240  the whole suite but the `slow` tests (pytest-xdist over all cores and
#                         pytest-timeout's per-test cap TEST_TIMEOUT=120 when they are installed;
#                         ~1660 tests, past 200 s there)
#   bench  SIZES_CAP=90   each op at its issue's sizes on cuda and triton (GPU only), first, with
#                         --no-compile: on the first H200 runs the compiled peers' first calls took
#                         a whole 90 s cap before any section finished
#          CHECKS_CAP=30  bench/value_checks.py: each op with its value checks on and off (GPU only)
#          QUICK_CAP=60   bench/run.py --quick (the sections it finishes)
# Without a GPU the same stages run minus the GPU ones. GPU_CHECK_FAST=1 (CI) runs a handful of
# tests and a smoke bench of one op (cap QUICK_CAP_FAST=240). What finished is written even when a
# stage hits its cap. OUT_DIR gets at most 8 files, no folders: summary.md (machine, stage times and
# results, build_info, test counts, each failure's tail), pytest.log, and the Markdown, JSON and
# PNG of each benchmark run (bench-quick.*, bench-sizes.*).
set -uo pipefail   # no -e: a failing stage is reported, the next one still runs
OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
FAST=${GPU_CHECK_FAST:-0}
BUILD_CAP=${BUILD_CAP:-120}
TESTS_CAP=${TESTS_CAP:-240}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
QUICK_CAP=${QUICK_CAP:-60}
[ "$FAST" = 1 ] && QUICK_CAP=${QUICK_CAP_FAST:-240}   # the smoke bench on a busy 2-core CI machine
SIZES_CAP=${SIZES_CAP:-90}
CHECKS_CAP=${CHECKS_CAP:-30}
CORES=$(nproc)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gmkernels-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
STAGES=$WORK/stages.tsv
: > "$STAGES"
say() { printf '[gpu_check %4ds] %s\n' $((SECONDS - START)) "$*"; }

# stage NAME CAP command...: runs the command under `timeout` (SIGINT first, so pytest and the
# bench write what they have; SIGKILL 10 s later), logs to $WORK/NAME.log, records the outcome.
stage() {
  local name=$1 cap=$2 began=$SECONDS rc
  shift 2
  say "$name: $* (cap ${cap} s)"
  timeout -s INT -k 10 "$cap" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  local outcome=passed
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then outcome="stopped at its ${cap} s cap"; elif [ "$rc" != 0 ]; then outcome="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - began))" "$outcome" >> "$STAGES"
  say "$name: $outcome after $((SECONDS - began)) s"
  return "$rc"
}

GPU=$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null)
if [ -n "$GPU" ]; then
  ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  export TORCH_CUDA_ARCH_LIST=$ARCH
  say "GPU: $GPU (sm_${ARCH/./}); $CORES cores"
else
  say "no GPU: the CPU stages only; $CORES cores"
fi
export MAX_JOBS=$CORES

# --- build -------------------------------------------------------------------------------------
stage build "$BUILD_CAP" "$PYTHON" setup.py build_ext --inplace
BUILD_INFO=$("$PYTHON" -c "import gmkernels; print(gmkernels.build_info()); print('backends:', gmkernels.backends())" 2>&1 | tail -n 2)
say "$BUILD_INFO"

# --- tests -------------------------------------------------------------------------------------
PYTEST=("$PYTHON" -m pytest -q -m "not slow" -rfEs -p no:cacheprovider --junitxml="$WORK/junit.xml")
"$PYTHON" -c "import xdist" 2>/dev/null && PYTEST+=(-n "$CORES")
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout "$TEST_TIMEOUT")
if [ "$FAST" = 1 ]; then
  PYTEST+=(tests/test_backend.py "tests/test_build.py::test_one_version_string_for_the_package_setup_and_the_extension"
           "tests/test_mixture_sample.py::test_reference_philox_matches_the_published_check_vector")
else
  PYTEST+=(tests)
fi
stage tests "$TESTS_CAP" "${PYTEST[@]}"
# pytest.log: the whole log unless huge, then its head and tail (the summary is at the end).
if [ "$(stat -c %s "$WORK/tests.log")" -gt $((8 * 1024 * 1024)) ]; then
  { head -c $((2 * 1024 * 1024)) "$WORK/tests.log"; echo; echo "[... cut ...]"; tail -c $((6 * 1024 * 1024)) "$WORK/tests.log"; } > "$OUT/pytest.log"
else
  cp "$WORK/tests.log" "$OUT/pytest.log"
fi

# --- bench -------------------------------------------------------------------------------------
# copy_bench RUN_FOLDER NAME: the run's .md/.json/.png as OUT/NAME.* (the newest of each).
copy_bench() {
  local ext file
  for ext in md json png; do
    file=$(ls -t "$1"/*."$ext" 2>/dev/null | head -n 1)
    [ -n "$file" ] && [ "$(stat -c %s "$file")" -le $((16 * 1024 * 1024)) ] && cp "$file" "$OUT/$2.$ext"
  done
}
if [ -n "$GPU" ]; then
  # The sizes each op's issue sets its GPU target at, without the compiled peers (on the first H200
  # runs neither the mixture_sample section, first in 90 s, nor the log-likelihood one, first in
  # 80 s, finished: their compiled peers' first calls took it all), the sections in the order
  # given and saved as each finishes, the quicker ones first.
  stage bench-sizes "$SIZES_CAP" "$PYTHON" bench/run.py --no-compile --backend cuda --backend triton \
    --op minibatch_discrimination --sizes "N=1024 B=100 C=5" --op class_pairwise_kl --sizes "N=1000000" \
    --op mixture_sample --sizes "n=65536" --op mixture_log_likelihood --sizes "B=4096 C=10000 d=784" \
    --out "$WORK/bench-sizes"
  copy_bench "$WORK/bench-sizes" bench-sizes
else
  printf '%s\t%s\t%s\n' bench-sizes 0 "not run (no GPU)" >> "$STAGES"
fi
if [ -n "$GPU" ]; then
  # What the value checks' synchronization costs a call on this GPU (the table lands in summary.md).
  stage value-checks "$CHECKS_CAP" "$PYTHON" bench/value_checks.py
fi
if [ "$FAST" = 1 ]; then
  stage bench-quick "$QUICK_CAP" "$PYTHON" bench/run.py --smoke --op mixture_sample --out "$WORK/bench-quick"
else
  stage bench-quick "$QUICK_CAP" "$PYTHON" bench/run.py --quick --out "$WORK/bench-quick"
fi
copy_bench "$WORK/bench-quick" bench-quick

# --- summary -----------------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$OUT" "$((SECONDS - START))" "$GPU" "$BUILD_INFO" "$FAST" <<'EOF'
import os
import platform
import sys
import xml.etree.ElementTree as ElementTree

work, out, total, gpu, build_info, fast = sys.argv[1:]
lines = ["# gmkernels check" + (" (fast mode)" if fast == "1" else ""), "",
         f"- machine: {platform.node()}, {os.cpu_count()} cores, {gpu or 'no GPU'}, Python {platform.python_version()}",
         f"- total: {total} s", "", "| stage | seconds | outcome |", "|---|---|---|"]
for line in open(os.path.join(work, "stages.tsv")):
    lines.append("| " + " | ".join(line.rstrip("\n").split("\t")) + " |")
lines += ["", "## Build", "", "```", build_info]
if not os.path.exists(os.path.join(work, "build.log")) or "passed" not in open(os.path.join(work, "stages.tsv")).readline():
    lines += ["--- the build log's tail:"] + open(os.path.join(work, "build.log")).read().splitlines()[-40:]
lines += ["```", "", "## Tests", ""]
junit = os.path.join(work, "junit.xml")
if os.path.exists(junit):
    suites = ElementTree.parse(junit).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    count = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    lines.append(f"{count['tests']} tests: {passed} passed, {count['failures']} failed, {count['errors']} errors, "
                 f"{count['skipped']} skipped (skip reasons: the short summary at the end of pytest.log)")
    failed = [(case, problem) for suite in suites for case in suite.iter("testcase")
              for problem in list(case) if problem.tag in ("failure", "error")]
    for case, problem in failed[:30]:
        text = ((problem.get("message") or "") + "\n" + (problem.text or "")).strip().splitlines()
        lines += ["", f"### {case.get('classname')}::{case.get('name')} ({problem.tag})", "", "```"] + \
            text[-30:] + ["```"]
    if len(failed) > 30:
        lines.append(f"\n... and {len(failed) - 30} more (pytest.log)")
    outcomes = dict(line.rstrip("\n").split("\t")[::2] for line in open(os.path.join(work, "stages.tsv")))
    if outcomes.get("tests") != "passed":
        tail = open(os.path.join(work, "tests.log")).read().splitlines()[-15:]
        lines += ["", f"The tests stage {outcomes.get('tests')}: the log's tail:", "", "```"] + tail + ["```"]
else:
    tail = open(os.path.join(work, "tests.log")).read().splitlines()[-30:]
    lines += ["No junit report (pytest did not finish): the log's tail:", "", "```"] + tail + ["```"]
lines += ["", "## Benchmarks", ""]
for name in ("bench-quick", "bench-sizes"):
    present = [f"{name}.{ext}" for ext in ("md", "json", "png") if os.path.exists(os.path.join(out, f"{name}.{ext}"))]
    lines.append(f"- {name}: " + (", ".join(present) if present else "no results"))
    log = os.path.join(work, name + ".log")
    if os.path.exists(log):
        lines += ["", "```"] + open(log).read().splitlines()[-15:] + ["```", ""]
checks_log = os.path.join(work, "value-checks.log")
if os.path.exists(checks_log):
    lines += ["", "## Value checks on and off", ""] + open(checks_log).read().splitlines()[-15:]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
EOF
say "summary: $OUT/summary.md ($(ls "$OUT" | wc -l) files in $OUT)"
# The exit status: 0 when every stage that ran passed.
! cut -f3 "$STAGES" | grep -qvE '^(passed|not run)'
