"""The gmgan command line: bad configurations give one clear line; the commands write their files."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch
from train_support import ROOT, one_thread, run_cli  # noqa: F401 (autouse fixture)

import gmkernels

TINY_FLAGS = ["--steps", "4", "--batch-size", "64", "--g-hidden", "16", "--d-hidden", "16", "--no-progress",
              "--eval-samples", "300"]


def assert_one_clear_line(result, expected):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("gmgan: error:"), result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize("flags,expected", [
    (["--variant", "vae"], "unknown variant 'vae'"),
    (["--arch", "conv"], "arch conv needs image data"),                      # mismatched sizes
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "data dir /nonexistent/mnist does not exist"),
])
def test_bad_config_gives_one_error_line_without_traceback(tmp_path, flags, expected):
    assert_one_clear_line(run_cli("train", *flags, "--out-dir", str(tmp_path)), expected)


def test_backend_error_lists_the_usable_backends_and_not_none(tmp_path, capsys):
    from gmgan.cli import main

    assert main(["train", "--backend", "nope", "--out-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"gmgan: error: backend must be one of {', '.join(('auto',) + gmkernels.backends())}, got 'nope'"


@pytest.mark.parametrize("command", ["train", "compare"])
def test_help_lists_the_valid_variants_datasets_and_backends(command, capsys):
    from gmgan.cli import main
    from gmgan.config import DATASETS, VARIANTS

    with pytest.raises(SystemExit) as exit_status:
        main([command, "--help"])
    assert exit_status.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    if command == "train":
        assert f"--variant VARIANT one of {', '.join(VARIANTS)} (default gan)" in text
    assert f"--dataset DATASET one of {', '.join(DATASETS)} (default grid25)" in text
    assert f"--backend BACKEND one of {', '.join(('auto',) + gmkernels.backends())} (default" in text
    assert "--gp-kind GP_KIND one of wgan-gp, r1" in text


def without_module(module, argv, tmp_path):
    """gmgan's main(argv) in a fresh interpreter where ``module`` cannot be imported."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from gmgan.cli import main\n"
              f"sys.exit(main({argv!r}))")
    env_path = f"{ROOT}:{ROOT / 'python'}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path, "HOME": str(tmp_path)}, timeout=120)


@pytest.mark.parametrize("module,distribution,argv", [
    ("safetensors", "safetensors", ["--help"]),
    ("matplotlib", "matplotlib", ["train", *TINY_FLAGS]),      # used only when the finished run plots
    ("sklearn", "scikit-learn", ["train", "--help"]),
    ("yaml", "pyyaml", ["compare", "--seeds", "0"]),
])
def test_without_the_train_extra_gmgan_says_what_to_install_before_any_work(tmp_path, module, distribution, argv):
    result = without_module(module, argv + ["--out-dir", str(tmp_path / "runs")] if "--help" not in argv else argv,
                            tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert re.fullmatch(f"gmgan: error: gmgan needs {distribution} .*pip install \"gmkernels\\[train\\]\".*"
                        f"pip install --no-build-isolation -e \"\\.\\[train\\]\"\n", result.stderr), result.stderr
    assert not (tmp_path / "runs").exists()     # nothing trained, nothing written


def test_library_import_names_the_extra_too(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['safetensors'] = None\n"
                             "import gmgan\nfrom gmgan import Trainer"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'python'}"}, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ImportError: gmgan needs safetensors (the gmkernels")


def test_progress_bar_stays_out_of_a_log_file(tmp_path):
    """stderr is a pipe here, as when redirected to a log: tqdm draws nothing (no \\r updates)."""
    flags = [f for f in TINY_FLAGS if f != "--no-progress"] + ["--progress", "--steps", "30", "--log-every", "10"]
    result = run_cli("train", *flags, "--out-dir", str(tmp_path), "--run-name", "logged")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "step/s" not in result.stderr and "logged" not in result.stderr


def test_bad_settings_in_process_are_config_errors(tmp_path, capsys):
    from gmgan.cli import main

    cases = [(["train", "--z-dim", "two"], "z_dim must be int"),
             (["train", "--dataset", "mnist"], "pass --data-dir"),
             (["train", "--batch-size", "20000"], "batch_size 20000 exceeds the 10000 training samples"),
             (["train", "--config", str(tmp_path / "missing.yaml")], "does not exist"),
             (["train", "--dataset", "digits", "--arch", "conv", "--g-hidden", "0"], "positive widths"),
             (["compare", "--seeds", "x"], "--seeds must be comma-separated integers"),
             (["evaluate", str(tmp_path)], "is not a run folder")]
    for argv, expected in cases:
        assert main(argv + ["--out-dir", str(tmp_path)] if argv[0] != "evaluate" else argv) == 2
        assert expected in capsys.readouterr().err


def test_config_file_yaml_is_read_and_flags_override_it(tmp_path):
    from gmgan.config import build_config

    path = tmp_path / "run.yaml"
    path.write_text("variant: mdgan\nz_dim: 3\ng_hidden: [64, 32]\nfeature_matching: true\n")
    config = build_config({"z_dim": "5"}, file=str(path))
    assert (config.variant, config.z_dim, config.g_hidden, config.feature_matching) == ("mdgan", 5, [64, 32], True)
    assert config.batch_size == 500 and config.output_scale == 6.0       # grid25 defaults filled in


def test_train_evaluate_and_sample_write_the_run_folder(tmp_path, capsys):
    from gmgan.cli import main

    trained = run_cli("train", *TINY_FLAGS, "--variant", "deligan", "--out-dir", str(tmp_path), "--run-name", "r")
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "r"
    for name in ("config.json", "history.csv", "metrics.json", "metrics.csv", "samples.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["variant"] == "deligan"
    assert list((run / "checkpoints").glob("*.safetensors")) and not list(run.rglob("*.pt"))
    assert main(["evaluate", str(run), "--temperature", "0.5,1", "--quiet"]) == 0
    assert "| temperature |" in capsys.readouterr().out and (run / "tradeoff.md").is_file()
    assert main(["sample", str(run), "--component", "2", "--n", "50", "--save"]) == 0
    assert (run / "sample-t1-k2.png").is_file() and (run / "sample-t1-k2.safetensors").is_file()


def test_compare_prints_a_mean_std_table_and_the_plot_path(tmp_path, capsys):
    from gmgan.cli import main

    assert main(["compare", "--variants", "gan,mdgan", "--seeds", "0,1", *TINY_FLAGS, "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| method | modes (25) | % hq (<= 3 std) | reverse KL |" in out
    assert "| gan |" in out and "| mdgan |" in out and " ± " in out
    # a reading under the table: what each column is, and why the GAN baseline is strong
    assert "% hq: samples within 3 std of their nearest mode" in " ".join(out.split())
    assert "gan is a tuned baseline" in out
    folder = tmp_path / "compare-grid25"
    assert f"plot: {folder / 'compare.png'}" in out
    assert (folder / "compare.md").read_text().count("±") >= 4 and (folder / "compare.png").is_file()
    assert len((folder / "compare.csv").read_text().splitlines()) == 5     # header + 2 variants x 2 seeds


def test_cluster_command_scores_seeds_and_reuses_finished_runs(tmp_path, capsys, monkeypatch):
    import gmgan.classifier
    from gmgan.cli import _trained, main
    from gmgan.config import build_config

    monkeypatch.setattr(gmgan.classifier, "MIN_STEPS", 50)
    flags = dict(dataset="ring8", steps=3, batch_size=64, g_hidden=[16], d_hidden=[16], progress=False,
                 out_dir=str(tmp_path), variant="gmgan")
    argv = ["cluster", "--seeds", "0,1", "--per-component", "20"] + [
        f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in flags.items() if k != "progress"] + ["--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| GM-GAN (K = 8) |" in out and "| k-means (K = 8) |" in out and "mean ± std over 2 run(s)" in out
    checkpoint = tmp_path / "ring8-gmgan-s1" / "checkpoints" / "step_0000003.json"
    stamp = checkpoint.stat().st_mtime_ns
    trainer = _trained(build_config(dict(flags, seed=1)))
    assert trainer.step == 3 and checkpoint.stat().st_mtime_ns == stamp   # re-used, not retrained


def test_cluster_training_continues_an_interrupted_run_from_its_checkpoint(tmp_path):
    """cluster's training (gmgan.cli._trained) continues a run stopped after its step-2 checkpoint
    instead of restarting it, and ends with the parameters of the uninterrupted run."""
    from safetensors.torch import load_file

    from gmgan.cli import _trained
    from gmgan.config import build_config

    config = build_config(dict(dataset="ring8", steps=4, batch_size=64, g_hidden=[16], d_hidden=[16], progress=False,
                               out_dir=str(tmp_path), variant="gmgan", checkpoint_every=2))
    _trained(config)
    checkpoints = tmp_path / config.run_name / "checkpoints"
    finished = load_file(str(checkpoints / "step_0000004.safetensors"))
    for path in checkpoints.glob("step_0000004.*"):
        path.unlink()
    kept = (checkpoints / "step_0000002.safetensors").stat().st_mtime_ns
    trainer = _trained(config)
    assert trainer.step == 4
    assert (checkpoints / "step_0000002.safetensors").stat().st_mtime_ns == kept   # not restarted
    resumed = load_file(str(checkpoints / "step_0000004.safetensors"))
    assert resumed.keys() == finished.keys()
    assert all(torch.equal(resumed[k], finished[k]) for k in finished)


def test_compare_continues_an_interrupted_run_from_its_checkpoint(tmp_path, capsys):
    """A run stopped after its step-2 checkpoint (its later checkpoint and metrics gone) is continued
    from step 2, not restarted, and ends with the metrics of the uninterrupted run."""
    from gmgan.cli import main

    argv = ["compare", "--variants", "gan", "--seeds", "0", *TINY_FLAGS, "--checkpoint-every", "2",
            "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    run = tmp_path / "compare-grid25" / "gan-s0"
    finished = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    for path in (run / "checkpoints").glob("step_0000004.*"):
        path.unlink()
    kept = (run / "checkpoints" / "step_0000002.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    # restarting from scratch would have written the step-2 checkpoint again
    assert (run / "checkpoints" / "step_0000002.safetensors").stat().st_mtime_ns == kept
    resumed = json.loads((run / "metrics.json").read_text())
    assert {k: resumed[k] for k in ("step", "modes", "high_quality", "reverse_kl")} == \
        {k: finished[k] for k in ("step", "modes", "high_quality", "reverse_kl")}


def test_a_diverged_run_stops_and_is_named_as_diverged(tmp_path, capsys, monkeypatch):
    """Losses that stop being finite end the run at that logged step with a warning; its metrics
    carry diverged_at, compare names it under the table and does not train it again."""
    import gmgan.trainer
    from gmgan.cli import main

    real_step = gmgan.trainer.Trainer.train_step

    def blows_up_after_step_1(self):
        d_loss, g_loss = real_step(self)
        return (d_loss, g_loss * math.inf) if self.step >= 1 and self.config.seed == 1 else (d_loss, g_loss)

    monkeypatch.setattr(gmgan.trainer.Trainer, "train_step", blows_up_after_step_1)
    argv = ["compare", "--variants", "gan", "--seeds", "0,1", *TINY_FLAGS, "--log-every", "2",
            "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "gan-s1: the losses are not finite by step 2" in captured.err
    assert "gan-s1: diverged at step 2:" in captured.out and "gan-s0: diverged" not in captured.out
    folder = tmp_path / "compare-grid25"
    assert "Diverged (losses not finite; training stopped there, and the run is scored as it was then): " \
           "gan s1 (step 2)." in (folder / "compare.md").read_text()
    diverged = json.loads((folder / "gan-s1" / "metrics.json").read_text())
    finished = json.loads((folder / "gan-s0" / "metrics.json").read_text())
    assert diverged["diverged_at"] == 2 and diverged["step"] == 2 and "diverged_at" not in finished
    history = (folder / "gan-s1" / "history.csv").read_text().splitlines()
    assert len(history) == 2 and history[-1].split(",")[2] == "inf"     # header, step 2

    stamp = (folder / "gan-s1" / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0                                               # re-used, not trained again
    assert (folder / "gan-s1" / "metrics.json").stat().st_mtime_ns == stamp


def test_train_exits_1_after_a_divergence(tmp_path, monkeypatch, capsys):
    import gmgan.trainer
    from gmgan.cli import main

    real_step = gmgan.trainer.Trainer.train_step
    monkeypatch.setattr(gmgan.trainer.Trainer, "train_step",
                        lambda self: tuple(v * math.nan for v in real_step(self)))
    argv = ["train", "--variant", "gan", "--dataset", "ring8", *TINY_FLAGS, "--steps", "6", "--log-every", "2",
            "--out-dir", str(tmp_path)]
    assert main(argv) == 1
    assert "the losses are not finite by step 2" in capsys.readouterr().err
    assert json.loads((tmp_path / "ring8-gan-s0" / "metrics.json").read_text())["diverged_at"] == 2


def test_cluster_command_scores_infogan_by_its_q_head(tmp_path, capsys):
    from gmgan.cli import main

    argv = ["cluster", "--variant", "infogan", "--dataset", "ring8", "--steps", "2", "--batch-size", "64",
            "--g-hidden", "16", "--d-hidden", "16", "--no-progress", "--out-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| InfoGAN (K = 8) |" in out and "| k-means (K = 8) |" in out and "GM-GAN" not in out
    saved = json.loads((tmp_path / "ring8-infogan-s0" / "clustering.json").read_text())
    assert saved["method"] == "InfoGAN" and 0 <= saved["infogan_acc"] <= 1
