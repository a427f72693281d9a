"""End to end: one gmgan training step (n_critic D updates, then one G update) per variant, with
the gmkernels ops against the same step on the reference backend, in samples/s.

Each variant is built by gmgan's own Trainer from its config, so the step timed here is the step
`gmgan train` runs: prior sampling (DeLiGAN, GM-GAN: mixture_sample), MD-GAN's simplex
likelihood (mixture_log_likelihood) and the minibatch-discrimination layer go through the
gmkernels ops; the GAN and WGAN-GP rows use none of them and show the floor (ratio ~1). A step
holds much more than the ops (two small networks, Adam), so these ratios are far below the
op-level ones: they say what a user gains per step, not what a kernel is worth.

A timed call is one step, so `ms` is the time of one step and items/s the samples/s that
`gmgan train` logs. The steps run on one thread, as gmgan's presets and `gmgan compare --jobs 2`
run them: these networks are small (a 2-D grid25 step is a few hundred microsecond-sized ops),
and with two threads on a busy two-core machine every op waits at a barrier for a descheduled
thread (measured under load ~5: a grid25 DeLiGAN step of batch 100 took 210-590 ms on two
threads, 27-37 ms on one, in `gmgan train` and here alike).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from bench.common import Case, Contender, bench_devices, kernel_backends

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# This checkout's gmgan (python/, setup.py's package_dir), even when another checkout is installed.
sys.path.insert(0, os.path.join(ROOT, "python"))

from gmgan import Trainer, build_config  # noqa: E402

# (label, config overrides). grid25 uses MD-GAN's protocol nets and batch 500; digits DeLiGAN's
# conv setting with batch 100; the large-prior row is DeLiGAN with N = 512 Gaussians in a 100-d
# latent (the mixture_sample issue's size), where sampling is a real share of the step.
GRID25 = [
    ("gan", dict(variant="gan")),
    ("wgan-gp", dict(variant="wgan-gp")),
    ("deligan", dict(variant="deligan")),
    ("gmgan", dict(variant="gmgan")),
    ("gmgan dynamic", dict(variant="gmgan", mixture="dynamic")),
    ("mdgan", dict(variant="mdgan")),
    ("gan + mbd", dict(variant="gan", minibatch_discrimination=True)),
]
DIGITS = [
    ("gan", dict(variant="gan")),
    ("deligan", dict(variant="deligan")),
    ("deligan N=512 z=100", dict(variant="deligan", components=512, z_dim=100)),
    ("gmgan", dict(variant="gmgan")),
    ("mdgan", dict(variant="mdgan")),
    ("gan + mbd", dict(variant="gan", minibatch_discrimination=True)),
]
# (dataset, batch, GAN variants) for full, quick and smoke runs.
PLANS = {
    "full": [("grid25", 500, GRID25), ("digits", 100, DIGITS)],
    "quick": [("grid25", 100, [GRID25[2], GRID25[5], GRID25[6]]), ("digits", 100, [DIGITS[2]])],
    "smoke": [("grid25", 16, [GRID25[2], GRID25[5]])],
}
STEP_THREADS = 1   # gmgan's presets and compare workers on a 2-core machine


def step_config(dataset: str, batch: int, overrides: dict, backend: str):
    # The Trainer writes its config into a run folder: a temporary one, removed at exit.
    out_dir = tempfile.mkdtemp(prefix="gmkernels-bench-")
    atexit.register(shutil.rmtree, out_dir, True)
    return build_config(dict(dataset=dataset, batch_size=batch, seed=0, backend=backend, progress=False,
                             out_dir=out_dir, run_name="step", **overrides))


def step_contender(name: str, config) -> Contender:
    """One training step per call of a Trainer of `config`, built untimed on the first setup."""
    trainer = None

    def setup():
        nonlocal trainer
        if trainer is None:
            trainer = Trainer(config)

    return Contender(name, lambda: trainer.train_step(), setup=setup)


def cases(kind: str, backends: tuple) -> list:
    device = bench_devices()[-1]   # the Trainer's device "auto": the GPU where there is one
    names = kernel_backends(backends, device)
    result = []
    for dataset, batch, plan in PLANS[kind]:
        for label, overrides in plan:
            configs = {f"gmkernels[{name}]": step_config(dataset, batch, overrides, name) for name in names}
            configs["reference eager"] = step_config(dataset, batch, overrides, "reference")
            result.append(Case(
                op="training_step", size=f"{dataset} {label} batch={batch}", mode="train step",
                contenders=[step_contender(name, config) for name, config in configs.items()],
                # Samples through D per step, as `gmgan train` counts them (n_critic D updates).
                items=configs["reference eager"].n_critic * batch, threads=STEP_THREADS,
                # No compiled peer: torch.compile of a whole GAN step (two optimizers, n_critic
                # loops) is not what users run; the op sections carry the compile comparisons.
                peer="reference eager",
                device=device.type,
                # Steps of the same model on two backends differ by less than a shared CPU
                # drifts over a few seconds (measured: 19 -> 25 ms for the same GAN step).
                interleave=True,
            ))
    return result
