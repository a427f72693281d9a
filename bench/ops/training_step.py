"""End to end: one gmgan training step (n_critic D updates, then one G update) per variant, with
the gmkernels ops against the same step on the reference backend, in samples/s.

Each variant is built by gmgan's own Trainer from its config, so the step timed here is the step
`gmgan train` runs: prior sampling (DeLiGAN, GM-GAN: mixture_sample), MD-GAN's simplex
likelihood (mixture_log_likelihood) and the minibatch-discrimination layer go through the
gmkernels ops; the GAN and WGAN-GP rows use none of them and show the floor (ratio ~1). A step
holds much more than the ops (two small networks, Adam), so these ratios are far below the
op-level ones: they say what a user gains per step, not what a kernel is worth.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from bench.common import Case, Variant, bench_devices, kernel_backends

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
# (dataset, batch, steps per timed call, variants) for full, quick and smoke runs.
PLANS = {
    "full": [("grid25", 500, 5, GRID25), ("digits", 100, 2, DIGITS)],
    "quick": [("grid25", 100, 5, [GRID25[2], GRID25[5], GRID25[6]]), ("digits", 100, 1, [DIGITS[2]])],
    "smoke": [("grid25", 16, 1, [GRID25[2], GRID25[5]])],
}


def make_trainer(dataset: str, batch: int, overrides: dict, backend: str) -> Trainer:
    # The Trainer writes its config into a run folder: a temporary one, removed at exit.
    out_dir = tempfile.mkdtemp(prefix="gmkernels-bench-")
    atexit.register(shutil.rmtree, out_dir, True)
    config = build_config(dict(dataset=dataset, batch_size=batch, seed=0, backend=backend, progress=False,
                               out_dir=out_dir, run_name="step", **overrides))
    return Trainer(config)


def step_variant(name: str, dataset: str, batch: int, steps: int, overrides: dict, backend: str) -> Variant:
    trainer = None

    def setup():
        nonlocal trainer
        if trainer is None:
            trainer = make_trainer(dataset, batch, overrides, backend)

    def run():
        for _ in range(steps):
            losses = trainer.train_step()
        return losses

    return Variant(name, run, setup=setup)


def cases(quick: bool, backends: tuple, smoke: bool = False) -> list:
    kind = "smoke" if smoke else "quick" if quick else "full"
    device = bench_devices()[-1]   # the Trainer's device "auto": the GPU where there is one
    names = kernel_backends(backends, device)
    result = []
    for dataset, batch, steps, plan in PLANS[kind]:
        for label, overrides in plan:
            variants = [step_variant(f"gmkernels[{name}]", dataset, batch, steps, overrides, name) for name in names]
            variants.append(step_variant("reference eager", dataset, batch, steps, overrides, "reference"))
            result.append(Case(
                op="training_step", size=f"{dataset} {label} batch={batch}", mode="train step",
                variants=variants, items=steps * batch,
                # No compiled peer: torch.compile of a whole GAN step (two optimizers, n_critic
                # loops) is not what users run; the op sections carry the compile comparisons.
                peer="reference eager",
                device=device.type,
                # Steps of the same model on two backends differ by less than a shared CPU
                # drifts over a few seconds (measured: 19 -> 25 ms for the same GAN step).
                interleave=True,
            ))
    return result
