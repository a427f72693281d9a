"""Data-parallel training through torchrun: 2 CPU processes (gloo)."""
import json
import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file
from train_support import ROOT

from gmgan.checkpoint import latest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(arguments: list, cwd) -> subprocess.CompletedProcess:
    """`gmgan ARGUMENTS` in 2 CPU processes; asserts that the job exited cleanly."""
    # PYTHONFAULTHANDLER: a rank that dies of a signal prints where it was.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "python")]), OMP_NUM_THREADS="1",
               PYTHONFAULTHANDLER="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "gmgan", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=str(cwd))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_two_cpu_processes_train_identical_replicas_and_gather_metrics(tmp_path):
    torchrun(["train", "--device", "cpu", "--variant", "deligan", "--steps", "6", "--batch-size", "64",
              "--g-hidden", "16", "--d-hidden", "16", "--no-progress", "--checkpoint-every", "3",
              "--eval-samples", "301", "--log-every", "3", "--out-dir", str(tmp_path), "--run-name", "ddp"], ROOT)
    run = tmp_path / "ddp"
    stem = latest(str(run / "checkpoints"))
    info = json.loads(open(stem + ".json").read())
    tensors = load_file(stem + ".safetensors")
    assert info["world_size"] == 2 and info["step"] == 6
    # each rank draws its own noise, both states are kept for an exact resume
    assert not torch.equal(tensors["rng.noise.0"], tensors["rng.noise.1"])
    # checkpoints check that the replicas are identical; metrics use the samples of both ranks
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_samples"] == 301
    assert load_file(str(run / "samples.safetensors"))["samples"].shape == (301, 2)
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and all(float(r.split(",")[1]) == float(r.split(",")[1]) for r in rows[1:])


def test_two_cpu_processes_run_a_compare_and_only_rank_0_reports(tmp_path):
    result = torchrun(["compare", "--device", "cpu", "--variants", "gan", "--seeds", "0", "--steps", "2",
                       "--batch-size", "64", "--g-hidden", "16", "--d-hidden", "16", "--no-progress",
                       "--eval-samples", "300", "--out-dir", str(tmp_path), "--name", "cmp"], ROOT)
    assert result.stdout.count("table: ") == 1
    metrics = json.loads((tmp_path / "cmp" / "gan-s0" / "metrics.json").read_text())
    assert metrics["eval_samples"] == 300 and metrics["step"] == 2
    assert (tmp_path / "cmp" / "compare.md").exists()
