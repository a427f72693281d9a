"""The gmgan command line: bad configurations give one clear line; the commands write their files."""
import json

import pytest
from train_support import run_cli

TINY_FLAGS = ["--steps", "4", "--batch-size", "64", "--g-hidden", "16", "--d-hidden", "16", "--no-progress",
              "--eval-samples", "300", "--threads", "1"]


def assert_one_clear_line(result, expected):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("gmgan: error:"), result.stderr
    assert expected in lines[0]


@pytest.mark.parametrize("flags,expected", [
    (["--variant", "vae"], "unknown variant 'vae'"),
    (["--arch", "conv"], "arch conv needs image data"),                      # mismatched sizes
    (["--batch-size", "20000"], "batch_size 20000 exceeds the 10000 training samples"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "data dir /nonexistent/mnist does not exist"),
])
def test_bad_config_gives_one_error_line_without_traceback(tmp_path, flags, expected):
    assert_one_clear_line(run_cli("train", *flags, "--out-dir", str(tmp_path)), expected)


def test_bad_settings_in_process_are_config_errors(tmp_path, capsys):
    from gmgan.cli import main

    cases = [(["train", "--z-dim", "two"], "z_dim must be int"),
             (["train", "--dataset", "mnist"], "pass --data-dir"),
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


def test_train_evaluate_and_sample_write_the_run_folder(tmp_path):
    trained = run_cli("train", *TINY_FLAGS, "--variant", "deligan", "--out-dir", str(tmp_path), "--run-name", "r")
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "r"
    for name in ("config.json", "history.csv", "metrics.json", "metrics.csv", "samples.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["variant"] == "deligan"
    assert list((run / "checkpoints").glob("*.safetensors")) and not list(run.rglob("*.pt"))
    evaluated = run_cli("evaluate", str(run), "--temperature", "0.5,1", "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "| temperature |" in evaluated.stdout and (run / "tradeoff.md").is_file()
    sampled = run_cli("sample", str(run), "--component", "2", "--n", "50", "--save")
    assert sampled.returncode == 0, sampled.stderr
    assert (run / "sample-t1-k2.png").is_file() and (run / "sample-t1-k2.safetensors").is_file()


def test_compare_prints_a_mean_std_table_and_the_plot_path(tmp_path):
    result = run_cli("compare", "--variants", "gan,mdgan", "--seeds", "0,1", *TINY_FLAGS, "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "| method | modes (25) | % hq (<= 3 std) | reverse KL |" in result.stdout
    assert "| gan |" in result.stdout and "| mdgan |" in result.stdout and " ± " in result.stdout
    folder = tmp_path / "compare-grid25"
    assert f"plot: {folder / 'compare.png'}" in result.stdout
    assert (folder / "compare.md").read_text().count("±") >= 4 and (folder / "compare.png").is_file()
    assert len((folder / "compare.csv").read_text().splitlines()) == 5     # header + 2 variants x 2 seeds
