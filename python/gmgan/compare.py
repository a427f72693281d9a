"""``gmgan compare``: several variants x seeds on one dataset, one table like the papers' (mean ±
std over seeds, ddof = 0), written as markdown / CSV / JSON next to a figure of every run."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file

from .config import CHOICES, NUM_MODES, ConfigError, build_config, config_from_dict
from .plots import image_grid, scatter_grid
from .trainer import Trainer, has_checkpointed_run, saved_config_matches

COLUMNS_2D = (("modes", "modes ({modes})"), ("high_quality", "% hq (<= 3 std)"), ("reverse_kl", "reverse KL"))
COLUMNS_IMAGES = (("is", "IS"), ("mis", "mIS"), ("fid", "FID"), ("parzen_mean", "Parzen LL"))
COLUMNS_STACKED = (("stacked_modes", "modes (1000)"), ("stacked_kl", "KL"), ("fid", "FID"))


def columns_for(dataset: str) -> tuple:
    if dataset in ("grid25", "ring8"):
        return tuple((key, title.format(modes=NUM_MODES[dataset])) for key, title in COLUMNS_2D)
    return COLUMNS_STACKED if dataset == "stacked-digits" else COLUMNS_IMAGES


def reading(dataset: str, variants: list, seeds: list) -> str:
    """What the table says, in a few lines printed under it (and written into compare.md)."""
    spread = f"Each cell: mean ± std over {len(seeds)} seed(s)."
    if dataset in ("grid25", "ring8"):
        modes = NUM_MODES[dataset]
        lines = [f"modes: how many of the {modes} true modes received at least one high-quality sample; "
                 "% hq: samples within 3 std of their nearest mode (quality); reverse KL: KL of the "
                 "high-quality samples' spread over the modes to uniform (0 = all modes equally often). " + spread]
        if "gan" in variants:
            lines.append("gan is a tuned baseline, not the collapsed GAN of the papers' tables: it uses "
                         "MD-GAN's own networks and optimiser, with which a plain GAN covered every mode in "
                         "every seed of docs/results.md's runs (12,000 steps of batch 100); the variants then "
                         "differ in % hq and reverse KL more than in modes.")
        return "\n".join(lines)
    if dataset == "stacked-digits":
        return ("modes (1000): distinct digit triples among the samples, each channel read by a classifier "
                "trained on the real digits; KL: of the triples' histogram to uniform (0 = even); FID: "
                "Fréchet distance of that classifier's features to the test set's (lower is better). " + spread)
    return ("A classifier trained on the real training images stands in for Inception: IS and mIS of its "
            "predictions (higher is better), FID of its features against the test set (lower is better); "
            "Parzen LL: log-likelihood of the test images under a Gaussian kernel estimate on the samples "
            "(higher is better). " + spread)


def mean_std(values: list, digits: int = 2) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    text = f"{np.mean(present):.{digits}f} ± {np.std(present):.{digits}f}"
    return text if len(present) == len(values) else f"{text} ({len(present)}/{len(values)})"


def summarize(results: dict, dataset: str) -> list:
    """results: variant -> list of metrics dicts; rows of (variant, column cells...)."""
    return [[variant] + [mean_std([m.get(key) for m in runs]) for key, _ in columns_for(dataset)]
            for variant, runs in results.items()]


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _finished_metrics(run_dir: str, config) -> dict | None:
    """The metrics of a finished run with the same config (compare re-uses it), else None."""
    if not saved_config_matches(run_dir, config):
        return None
    try:
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            metrics = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    done = metrics.get("step") == config.steps or metrics.get("diverged_at") is not None
    return metrics if done else None


def _train(config_values: dict, resume: bool = False) -> str:
    """Train one run in a worker process; the parent reads its metrics.json."""
    trainer = Trainer(config_from_dict(config_values), resume=resume)
    trainer.run()
    return trainer.run_dir


def _describe(metrics: dict) -> str:
    diverged = f"diverged at step {metrics['diverged_at']}: " if metrics.get("diverged_at") is not None else ""
    if "modes" in metrics:
        return f"{diverged}{metrics['modes']} modes, {metrics['high_quality']:.1f}% hq"
    shown = [f"{k} {metrics[k]:.3g}" for k in ("is", "mis", "fid", "stacked_modes") if isinstance(metrics.get(k), (int, float))]
    return diverged + (", ".join(shown) or "done")


def divergence_note(results: dict) -> str:
    """One sentence naming the runs that diverged (empty when none did): their rows average the
    metrics of the generator as it was when its losses stopped being finite."""
    diverged = [f"{variant} s{m['seed']} (step {m['diverged_at']})" for variant, runs in results.items()
                for m in runs if m.get("diverged_at") is not None]
    if not diverged:
        return ""
    return ("Diverged (losses not finite; training stopped there, and the run is scored as it was then): "
            + ", ".join(diverged) + ".")


def _train_all(configs: list, jobs: int) -> None:
    """Train the configs, ``jobs`` at a time in worker processes (1: in this process)."""
    if jobs <= 1:
        for index, config in enumerate(configs, 1):
            trainer = Trainer(config, resume=has_checkpointed_run(config))
            metrics = trainer.run()
            if trainer.world.is_main:
                print(f"[{index}/{len(configs)}] {config.run_name}: {_describe(metrics)}", flush=True)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    values = [dict(c.to_dict(), progress=False, threads=c.threads or threads) for c in configs]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train, v, has_checkpointed_run(c)): v for v, c in zip(values, configs)}
        for index, future in enumerate(as_completed(futures), 1):
            run_dir = future.result()
            with open(os.path.join(run_dir, "metrics.json")) as handle:
                print(f"[{index}/{len(configs)}] {futures[future]['run_name']}: {_describe(json.load(handle))}",
                      flush=True)


# A row of the table is a variant, optionally with options of any variant: gan+mbd, gan+sn+mbd;
# f-GAN's rows name their divergence: fgan+kl, fgan+reverse-kl.
ROW_OPTIONS = {"mbd": {"minibatch_discrimination": True}, "sn": {"spectral_norm": True},
               "fm": {"feature_matching": True},
               **{name: {"divergence": name} for name in CHOICES["divergence"]}}


def row_settings(row: str) -> dict:
    """The settings of a table row named ``variant[+option...]`` (ROW_OPTIONS)."""
    variant, *options = row.split("+")
    settings = {"variant": variant}
    for option in options:
        if option not in ROW_OPTIONS:
            raise ConfigError(f"unknown option {option!r} in {row!r}; options: {', '.join(ROW_OPTIONS)}")
        settings.update(ROW_OPTIONS[option])
    return settings


def run_compare(variants: list, seeds: list, overrides: dict, *, preset: str | None = None,
                file: str | None = None, name: str | None = None, command: str = "", jobs: int = 1) -> dict:
    """Train (or re-use) every variant x seed; write compare.{md,csv,json} and compare.png.
    A variant may carry options (row_settings: ``gan+mbd``, ``gan+sn``). A finished run with the
    same config is re-used and an unfinished one continues from its newest checkpoint, so an
    interrupted compare picks up where it stopped."""
    first = build_config(dict(overrides, **row_settings(variants[0])), preset=preset, file=file)
    folder = os.path.join(first.out_dir, name or f"compare-{first.dataset}" + (f"-{preset}" if preset else ""))
    configs = {(variant, seed): build_config(dict(overrides, **row_settings(variant), seed=seed, out_dir=folder,
                                                  run_name=f"{variant}-s{seed}"), preset=preset, file=file)
               for variant in variants for seed in seeds}
    pending = [c for c in configs.values() if _finished_metrics(os.path.join(folder, c.run_name), c) is None]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    _train_all(pending, 1 if distributed else jobs)
    if distributed and int(os.environ.get("RANK", "0")) != 0:
        return {}
    results: dict = {}
    panels, images = [], []
    for (variant, seed), config in configs.items():
        run_dir = os.path.join(folder, config.run_name)
        metrics = _finished_metrics(run_dir, config)
        results.setdefault(variant, []).append(metrics)
        if first.is_2d:
            panels.append((run_dir, f"{variant} s{seed}: {_describe(metrics)}"))
        elif seed == seeds[0]:
            images.append(run_dir)
    header = ["method"] + [title for _, title in columns_for(first.dataset)]
    rows = summarize(results, first.dataset)
    table = markdown_table(header, rows)
    figure = os.path.join(folder, "compare.png")
    _figure(first, panels, images, figure, len(seeds))
    with open(os.path.join(folder, "compare.md"), "w") as handle:
        handle.write(f"# {first.dataset}: {', '.join(variants)} x seeds {', '.join(map(str, seeds))}\n\n")
        if command:
            handle.write(f"Command: `{command}`\n\n")
        note = divergence_note(results)
        handle.write(table + "\n\n" + (note + "\n\n" if note else "")
                     + reading(first.dataset, variants, seeds).replace("\n", "\n\n")
                     + "\n\nStd over seeds with ddof = 0.\n")
    with open(os.path.join(folder, "compare.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = [key for key, _ in columns_for(first.dataset)]
        writer.writerow(["variant", "seed"] + keys)
        for variant, runs in results.items():
            for metrics in runs:
                writer.writerow([variant, metrics["seed"]] + [metrics.get(k) for k in keys])
    with open(os.path.join(folder, "compare.json"), "w") as handle:
        json.dump({"variants": variants, "seeds": seeds, "results": results, "command": command}, handle, indent=1)
    return {"table": table, "divergence_note": divergence_note(results), "reading": reading(first.dataset, variants, seeds),
            "folder": folder, "figure": figure, "results": results}


def _figure(config, panels: list, images: list, path: str, columns: int) -> None:
    """2-D: every run's evaluation samples; images: 10 samples of each variant's first seed."""
    from .data.toy import TOY

    if config.is_2d:
        drawn = [(load_file(os.path.join(run_dir, "samples.safetensors"))["samples"], title)
                 for run_dir, title in panels]
        scatter_grid(drawn, TOY[config.dataset][0], path, columns)
        return
    tiles = [load_file(os.path.join(run_dir, "samples.safetensors"))["samples"][:10] for run_dir in images]
    image_grid(torch.cat(tiles), path, columns=10, title="rows: " + ", ".join(os.path.basename(d) for d in images))
