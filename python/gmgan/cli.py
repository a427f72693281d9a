"""The ``gmgan`` command line: train, evaluate, sample, cluster, compare.

Every Config field is a flag (``--z-dim 30``, ``--g-hidden 128,128``, ``--feature-matching`` /
``--no-feature-matching``); ``--config FILE`` reads YAML or JSON, ``--preset NAME`` a preset of
gmgan.config.PRESETS; flags win over the file, the file over the preset. A configuration the layer
cannot run exits with status 2 and one line ``gmgan: error: ...`` on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
from dataclasses import fields

from .config import CHOICES, PRESETS, Config, ConfigError, backend_choices, build_config
from .extras import install_hint, missing_training_modules


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that hyphenated names (wgan-gp, gmgan-supervised) are never split
    across lines."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple = ()) -> None:
    group = parser.add_argument_group("run settings (see gmgan.config.Config)")
    for field in fields(Config):
        if field.name in skip:
            continue
        default = f"(default {'auto' if field.default is None else field.default})"
        if field.name == "backend":
            default = "(default: the process's choice, GMKERNELS_BACKEND)"
        options = backend_choices() if field.name == "backend" else CHOICES.get(field.name)
        # Choices are listed, not enforced by argparse: validate() gives its one-line error.
        text = f"one of {', '.join(map(str, options))} {default}" if options else default
        if field.type.startswith("bool"):
            group.add_argument(_flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        else:
            group.add_argument(_flag(field.name), dest=field.name, default=None, metavar=field.name.upper(),
                               help=text)
    parser.add_argument("--config", dest="config_file", help="YAML or JSON file of settings")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named set of settings")


def overrides_of(args: argparse.Namespace, skip: tuple = ()) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(Config)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def _print_metrics(metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if k != "mode_counts"}
    print(json.dumps(shown, indent=1))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def command_train(args) -> int:
    import signal

    from .distributed import close_world
    from .trainer import Trainer

    # A scheduler's SIGTERM (preemption) checkpoints the run like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    if args.resume:
        trainer = Trainer.from_run_dir(args.resume, overrides_of(args))
    else:
        trainer = Trainer(build_config(overrides_of(args), preset=args.preset, file=args.config_file))
    try:
        metrics = trainer.run()
        if trainer.world.is_main:
            if metrics:
                _print_metrics(metrics)
            print(f"run folder: {trainer.run_dir}")
    except KeyboardInterrupt:
        print(f"gmgan: interrupted at step {trainer.step}, checkpointed; continue with "
              f"gmgan train --resume {trainer.run_dir}", file=sys.stderr)
        close_world(trainer.world, wait_for_peers=False)
        return 130
    except BaseException:
        close_world(trainer.world, wait_for_peers=False)
        raise
    close_world(trainer.world)
    return 0 if trainer.diverged_at is None else 1


def _parse_floats(text: str, name: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from None


def command_evaluate(args) -> int:
    from .compare import markdown_table
    from .trainer import Trainer

    overrides = {"progress": not args.quiet}
    if args.eval_samples:
        overrides["eval_samples"] = args.eval_samples
    trainer = Trainer.from_run_dir(args.run_dir, overrides)
    temperatures = _parse_floats(args.temperature, "--temperature") if args.temperature else [trainer.config.temperature]
    if len(temperatures) == 1:
        metrics = trainer.evaluate(write=True, temperature=temperatures[0])
        _print_metrics(metrics)
        return 0
    # GM-GAN's quality-diversity trade-off: the same generator sampled with scaled std.
    rows, keys = [], None
    for temperature in temperatures:
        metrics = trainer.evaluate(plots=False, temperature=temperature)
        keys = keys or [k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in
                        ("step", "seed", "eval_samples", "temperature") and k not in trainer.network_sizes]
        rows.append([temperature] + [f"{metrics[k]:.4g}" if isinstance(metrics[k], float) else metrics[k] for k in keys])
    table = markdown_table(["temperature"] + keys, rows)
    path = os.path.join(args.run_dir, "tradeoff.md")
    with open(path, "w") as handle:
        handle.write(table + "\n")
    print(table)
    print(f"table: {path}")
    return 0


def command_sample(args) -> int:
    import torch
    from safetensors.torch import save_file

    from .plots import image_grid, scatter_2d
    from .scoring import generate
    from .trainer import Trainer

    trainer = Trainer.from_run_dir(args.run_dir, {"progress": False})
    temperature = _parse_floats(args.temperature, "--temperature")[0] if args.temperature else trainer.config.temperature
    if args.component is not None:
        with torch.no_grad():
            generator = torch.Generator(device=trainer.device).manual_seed(args.seed)
            trainer.G.eval()
            samples = trainer.sample_component(args.component, args.n, generator, temperature).cpu()
    else:
        samples, _, _ = generate(trainer.config, trainer.G, trainer.sample_fake, args.n, world=trainer.world,
                                 temperature=temperature)
    out = args.out or os.path.join(args.run_dir, f"sample-t{temperature:g}" +
                                   (f"-k{args.component}" if args.component is not None else "") + ".png")
    if trainer.dataset.is_2d:
        scatter_2d(samples, trainer.dataset.modes, out, f"{trainer.config.variant}, temperature {temperature:g}")
    else:
        image_grid(samples[:args.n], out, title=f"{trainer.config.variant}, temperature {temperature:g}")
    if args.save:
        save_file({"samples": samples.contiguous()}, os.path.splitext(out)[0] + ".safetensors")
    print(out)
    return 0


def _seeds(text: str) -> list:
    try:
        seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds must name at least one seed")
    return seeds


def _trained(config):
    """A Trainer of config trained to config.steps, re-using a finished run of the same config and
    continuing an unfinished one from its newest checkpoint."""
    from .trainer import Trainer, has_checkpointed_run

    trainer = Trainer(config, resume=has_checkpointed_run(config))
    if trainer.step < config.steps:
        trainer.run(evaluate_end=False)
    return trainer


def command_cluster(args) -> int:
    from .clustering import cluster
    from .compare import markdown_table, mean_std
    from .trainer import Trainer

    if args.run:
        trainers = [Trainer.from_run_dir(args.run, {"progress": False if args.quiet else None})]
        if trainers[0].step < trainers[0].config.steps:
            trainers[0].run(evaluate_end=False)
    else:
        overrides = dict(overrides_of(args), variant=args.variant or "gmgan")
        seeds = _seeds(args.seeds) if args.seeds else [None]
        trainers = []
        for seed in seeds:
            if seed is not None:
                overrides.update(seed=seed, run_name=None)
            trainers.append(_trained(build_config(overrides, preset=args.preset, file=args.config_file)))
    results = []
    for trainer in trainers:
        result = cluster(trainer, args.per_component)
        with open(os.path.join(trainer.run_dir, "clustering.json"), "w") as handle:
            json.dump(result, handle, indent=1)
        results.append(result)
    k, method = results[0]["components"], results[0]["method"]
    table = markdown_table(["method", "ACC", "NMI"], [
        [f"{name} (K = {k})", mean_std([r[f"{key}_acc"] for r in results], 3),
         mean_std([r[f"{key}_nmi"] for r in results], 3)]
        for name, key in ((method, method.lower().replace("-", "")), ("k-means", "kmeans"))])
    print(table)
    print(f"mean ± std over {len(results)} run(s); runs: {', '.join(t.run_dir for t in trainers)}")
    return 0


def command_compare(args) -> int:
    from .compare import run_compare

    variants = [v for v in args.variants.split(",") if v]
    seeds = _seeds(args.seeds)
    if not variants:
        raise ConfigError("--variants must name at least one variant")
    command = "gmgan " + " ".join(shlex.quote(a) for a in (args.argv or []))
    outcome = run_compare(variants, seeds, overrides_of(args, skip=("variant", "seed")), preset=args.preset,
                          file=args.config_file, name=args.name, command=command, jobs=args.jobs)
    if outcome:
        print(outcome["table"])
        if outcome["divergence_note"]:
            print(textwrap.fill(outcome["divergence_note"], 100, break_on_hyphens=False))
        for paragraph in outcome["reading"].split("\n"):
            print(textwrap.fill(paragraph, 100, break_on_hyphens=False))
        print(f"table: {os.path.join(outcome['folder'], 'compare.md')}")
        print(f"plot: {outcome['figure']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmgan", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one run (torchrun for several processes)",
                                formatter_class=HelpFormatter)
    add_config_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    train.set_defaults(handler=command_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a run's latest checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--eval-samples", type=int)
    evaluate.add_argument("--temperature", help="std scale(s), e.g. 0.5,1,1.5 for the quality-diversity table")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(handler=command_evaluate)

    sample = commands.add_parser("sample", help="a PNG (and optionally safetensors) of samples")
    sample.add_argument("run_dir")
    sample.add_argument("--n", type=int, default=100)
    sample.add_argument("--temperature")
    sample.add_argument("--component", type=int, help="sample one Gaussian of a mixture prior")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out")
    sample.add_argument("--save", action="store_true", help="also write the samples as safetensors")
    sample.set_defaults(handler=command_sample)

    cluster = commands.add_parser("cluster", help="GM-GAN (Algorithm 2) or InfoGAN (--variant infogan: Q's class) "
                                  "clustering vs k-means: ACC, NMI",
                                  formatter_class=HelpFormatter)
    add_config_flags(cluster)
    cluster.add_argument("--run", metavar="RUN_DIR", help="use this trained GM-GAN or InfoGAN instead of training one")
    cluster.add_argument("--seeds", help="train and score one run per seed, e.g. 0,1,2 (mean ± std)")
    cluster.add_argument("--per-component", type=int, default=1000, help="M samples per Gaussian (GM-GAN)")
    cluster.add_argument("--quiet", action="store_true")
    cluster.set_defaults(handler=command_cluster)

    compare = commands.add_parser("compare", help="variants x seeds on one dataset: a mean ± std table",
                                  formatter_class=HelpFormatter)
    add_config_flags(compare, skip=("variant", "seed"))
    compare.add_argument("--variants", default="gan,deligan,gmgan,mdgan",
                         help="table rows: variants, each optionally with +mbd (minibatch discrimination), +sn "
                              "(spectral norm of D) or +fm (feature matching), e.g. gan,mdgan,gan+mbd,gan+sn; fgan "
                              "rows name a divergence: fgan+kl,fgan+js")
    compare.add_argument("--seeds", default="0,1,2")
    compare.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (worker processes)")
    compare.add_argument("--name", help="folder name under out_dir (default compare-<dataset>[-<preset>])")
    compare.set_defaults(handler=command_compare)
    return parser


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    missing = missing_training_modules()
    if missing:
        print(f"gmgan: error: {install_hint(missing)}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        code = args.handler(args)
    except ConfigError as error:
        print(f"gmgan: error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("gmgan: interrupted; the last completed step was checkpointed: continue with "
              "gmgan train --resume RUN_DIR", file=sys.stderr)
        code = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .distributed import leave_rank
        leave_rank(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
