"""The one training loop every variant shares.

A step = ``n_critic`` discriminator updates (each on a fresh real batch and fresh fakes), then one
generator update. Randomness comes only from two generators owned by the trainer: ``data_rng``
(the epoch permutations; identical on every rank) and ``noise_rng`` (latents, condition labels,
WGAN-GP's mixing weights; one per rank). Their states, the optimizers, the data position and the
step are checkpointed, so ``resume`` continues to exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import time

import torch
from torch import nn

import gmkernels

from . import checkpoint
from .config import Config, ConfigError
from .data import Dataset, load_dataset
from .distributed import (World, average_gradients, broadcast_parameters, check_replicas, gather_rows,
                          init_world, mean_over_ranks)
from .models import build_networks
from .variants import Batch, make_variant

HISTORY_FIELDS = ("step", "d_loss", "g_loss", "samples_per_s", "lr_g", "lr_d")
# Settings a resumed run may change: they do not change the model, the data or the schedule.
# (Results stay bit-exact across a resume when backend, device and threads are also unchanged.)
RESUMABLE = ("steps", "checkpoint_every", "log_every", "eval_every", "progress", "threads", "out_dir",
             "backend", "device", "eval_samples")
# The noise generator of rank r starts from seed * _RANK_STRIDE + r.
_RANK_STRIDE = 1_000_003


def saved_config_matches(run_dir: str, config: Config) -> bool:
    """Whether run_dir holds a run of this config (settings in RESUMABLE other than steps aside)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as handle:
            saved = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return False
    return all(saved.get(k) == v for k, v in config.to_dict().items() if k not in RESUMABLE or k == "steps")


def resolve_device(config: Config, world: World) -> torch.device:
    if config.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = torch.device(config.device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device} requested but CUDA is not available")
        return torch.device("cuda", world.local_rank if world.active else torch.device(config.device).index or 0)
    return torch.device("cpu")


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor, p: int) -> torch.Tensor:
    """mean_j |E h_j(x) - E h_j(G(z))|^p over the batch means (improved-gan: p = 1)."""
    difference = real_features.mean(0) - fake_features.mean(0)
    return difference.abs().mean() if p == 1 else difference.pow(2).mean()


class Trainer:
    """Builds data, variant, networks and optimizers from a config; ``run()`` trains.

    ``run_dir`` defaults to ``<out_dir>/<run_name>``; ``resume=True`` loads the newest checkpoint
    there (``Trainer.from_run_dir`` also restores the saved config).
    """

    def __init__(self, config: Config, *, run_dir: str | None = None, resume: bool = False,
                 world: World | None = None, dataset: Dataset | None = None):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.world = world or init_world("cuda" if config.device.startswith("cuda") or
                                         (config.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(config, self.world)
        if config.batch_size % self.world.size:
            raise ConfigError(f"batch_size {config.batch_size} must be divisible by the {self.world.size} processes")
        self.local_batch = config.batch_size // self.world.size
        self.dataset = dataset or load_dataset(config)
        if config.batch_size > len(self.dataset):
            raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(self.dataset)} training samples")
        self.variant = make_variant(config, self.dataset.num_classes)
        torch.manual_seed(config.seed)  # the initial weights (and the static GM-GAN means)
        self.G, self.D = build_networks(config, self.dataset.sample_shape, self.variant.make_prior(),
                                        self.variant.d_out, self.dataset.num_classes)
        self.G.to(self.device)
        self.D.to(self.device)
        broadcast_parameters(self.G, self.world)
        broadcast_parameters(self.D, self.world)
        self.opt_g = self._optimizer(self.G, config.lr_g)
        self.opt_d = self._optimizer(self.D, config.lr_d)
        self.data_rng = torch.Generator().manual_seed(config.seed)
        self.noise_rng = torch.Generator(device=self.device).manual_seed(
            config.seed * _RANK_STRIDE + self.world.rank)
        self.order: torch.Tensor | None = None
        self.position = 0
        self.step = 0
        self.run_dir = run_dir or os.path.join(config.out_dir, config.run_name)
        self.checkpoint_dir = os.path.join(self.run_dir, "checkpoints")
        if resume:
            self.load_latest()
        elif self.world.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "config.json"), "w") as handle:
                json.dump(config.to_dict(), handle, indent=1)
            self._reset_history()

    @classmethod
    def from_run_dir(cls, run_dir: str, overrides: dict | None = None, *, world: World | None = None,
                     resume: bool = True) -> "Trainer":
        """The run saved in run_dir (its config.json), with only RESUMABLE settings changed."""
        from .config import coerce, config_from_dict, replace

        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{run_dir} is not a run folder (no config.json)")
        with open(path) as handle:
            config = config_from_dict(json.load(handle))
        overrides = {k: coerce(k, v) for k, v in (overrides or {}).items() if v is not None}
        changes = {k: v for k, v in overrides.items() if v != getattr(config, k)}
        fixed = sorted(set(changes) - set(RESUMABLE))
        if fixed:
            name = fixed[0]
            raise ConfigError(f"cannot change {name} of an existing run ({getattr(config, name)!r} -> "
                              f"{changes[name]!r}); start a new run instead")
        return cls(replace(config, **changes), run_dir=run_dir, resume=resume, world=world)

    def _optimizer(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        parameters = [p for p in module.parameters() if p.requires_grad]
        if self.config.optimizer == "rmsprop":
            return torch.optim.RMSprop(parameters, lr=lr)
        return torch.optim.Adam(parameters, lr=lr, betas=(self.config.beta1, self.config.beta2))

    def _on_backend(self):
        """The configured gmkernels backend for the block; without one, the process's choice
        (``GMKERNELS_BACKEND`` or gmkernels.set_backend) stays in force."""
        if self.config.backend is None:
            return contextlib.nullcontext()
        return gmkernels.use_backend(self.config.backend)

    # ---- data and samples -------------------------------------------------------------------
    def next_real(self) -> Batch:
        """This rank's slice of the next global batch; a new permutation each epoch (the last
        incomplete batch of an epoch is dropped)."""
        size = self.config.batch_size
        if self.order is None or self.position + size > self.order.numel():
            self.order = torch.randperm(len(self.dataset), generator=self.data_rng)
            self.position = 0
        index = self.order[self.position:self.position + size]
        self.position += size
        index = index[self.world.rank * self.local_batch:(self.world.rank + 1) * self.local_batch]
        x, labels = self.dataset.get(index)
        return Batch(x.to(self.device), labels.to(self.device))

    def sample_fake(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Batch:
        """n generated samples with their latent components and (when conditional) labels."""
        generator = self.noise_rng if generator is None else generator
        with self._on_backend():
            z, component = self.G.prior.sample(n, generator=generator, temperature=temperature)
        labels = None
        if self.config.conditional:
            labels = torch.randint(0, self.dataset.num_classes, (n,), generator=generator, device=self.device)
        return Batch(self.G(z, labels), labels, component)

    def sample_component(self, k: int, n: int, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """n samples G(z), z from Gaussian k of the mixture prior (GM-GAN: generate per Gaussian)."""
        prior = self.G.prior
        if not hasattr(prior, "sample_component"):
            raise ConfigError(f"variant {self.config.variant} has no mixture prior to sample a component of")
        if not 0 <= k < prior.num_components:
            raise ConfigError(f"component must lie in [0, {prior.num_components}), got {k}")
        with self._on_backend():
            z = prior.sample_component(k, n, generator=generator, temperature=temperature)
        return self.G(z)

    # ---- one step ------------------------------------------------------------------------
    def _set_learning_rates(self) -> tuple:
        every = self.config.lr_halve_every
        factor = 0.5 ** (self.step // every) if every else 1.0
        lr_g, lr_d = self.config.lr_g * factor, self.config.lr_d * factor
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d
        return lr_g, lr_d

    def train_step(self):
        """One step on the configured gmkernels backend (the process-wide choice is restored
        afterwards); returns detached (d_loss, g_loss) of this rank."""
        with self._on_backend():
            return self._train_step()

    def _train_step(self):
        variant, config = self.variant, self.config
        self.G.train()
        self.D.train()
        self.D.requires_grad_(True)
        for _ in range(config.n_critic):
            real = self.next_real()
            with torch.no_grad():
                fake = self.sample_fake(self.local_batch)
            d_loss = variant.discriminator_loss(self.D, real, fake, self.noise_rng)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            average_gradients(self.D, self.world)
            self.opt_d.step()
            variant.after_discriminator_step(self.D)
        self.D.requires_grad_(False)  # G's backward need not fill D's gradients
        fake = self.sample_fake(self.local_batch)
        if config.feature_matching:
            with torch.no_grad():
                _, real_features = variant.discriminate(self.D, real)
            _, fake_features = variant.discriminate(self.D, fake)
            g_loss = feature_matching_loss(real_features, fake_features, config.fm_p)
        else:
            g_loss = variant.generator_loss(self.D, fake)
        regularizer = variant.regularizer(self.G)
        if regularizer is not None:
            g_loss = g_loss + regularizer
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        average_gradients(self.G, self.world)
        self.opt_g.step()
        self.D.requires_grad_(True)
        return d_loss.detach(), g_loss.detach()

    # ---- the loop ------------------------------------------------------------------------
    def run(self, until: int | None = None, evaluate_end: bool = True) -> dict | None:
        """Train to step ``until`` (default config.steps), checkpointing every checkpoint_every
        steps and at the end. On Ctrl-C, checkpoints the last completed step and re-raises.
        Returns the final metrics when the run reached config.steps and evaluate_end is set."""
        from tqdm import tqdm

        config = self.config
        until = config.steps if until is None else min(until, config.steps)
        bar = tqdm(total=config.steps, initial=self.step, disable=not (config.progress and self.world.is_main),
                   desc=config.run_name, unit="step", dynamic_ncols=True)
        loss_sum = torch.zeros(2, device=self.device, dtype=torch.float64)
        window_steps, window_start = 0, time.perf_counter()
        try:
            while self.step < until:
                lr_g, lr_d = self._set_learning_rates()
                d_loss, g_loss = self.train_step()
                loss_sum += torch.stack([d_loss, g_loss]).double()
                self.step += 1
                window_steps += 1
                bar.update(1)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    losses = mean_over_ranks(loss_sum / window_steps, self.world).tolist()
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    rate = window_steps * config.n_critic * config.batch_size / elapsed
                    row = dict(step=self.step, d_loss=losses[0], g_loss=losses[1], samples_per_s=rate,
                               lr_g=lr_g, lr_d=lr_d)
                    if config.eval_every and self.step % config.eval_every == 0:
                        row.update({k: v for k, v in self.evaluate(plots=False).items()
                                    if isinstance(v, (int, float)) and k not in row})
                    self._append_history(row)
                    bar.set_postfix(d=f"{losses[0]:.3f}", g=f"{losses[1]:.3f}", samples_s=f"{rate:,.0f}")
                    loss_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                if self.step % config.checkpoint_every == 0 and self.step < until:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            bar.close()
            raise
        bar.close()
        self.save_checkpoint()
        if self.step >= config.steps and evaluate_end:
            return self.evaluate(plots=True, write=True)
        return None

    def evaluate(self, *, plots: bool = True, write: bool = False) -> dict:
        """Metrics of the current generator (gmgan.scoring), written to metrics.json / .csv and
        samples.png by rank 0 when ``write``."""
        from .scoring import evaluate_generator

        return evaluate_generator(self, plots=plots, write=write)

    # ---- history -------------------------------------------------------------------------
    @property
    def history_path(self) -> str:
        return os.path.join(self.run_dir, "history.csv")

    def _reset_history(self) -> None:
        with open(self.history_path, "w", newline="") as handle:
            csv.writer(handle).writerow(HISTORY_FIELDS)

    def _append_history(self, row: dict) -> None:
        if not self.world.is_main:
            return
        extra = [k for k in row if k not in HISTORY_FIELDS]
        with open(self.history_path, "a", newline="") as handle:
            values = [row[k] for k in HISTORY_FIELDS] + [f"{k}={row[k]}" for k in extra]
            csv.writer(handle).writerow(values)

    def _truncate_history(self) -> None:
        """Drop rows logged after the checkpoint being resumed (they will be logged again)."""
        if not os.path.isfile(self.history_path):
            self._reset_history()
            return
        with open(self.history_path, newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= self.step]
        with open(self.history_path, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)

    # ---- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes; every rank's noise generator state is gathered first, and the replicas
        are checked to be identical."""
        check_replicas(self.G, self.world)
        check_replicas(self.D, self.world)
        noise_states = gather_rows(self.noise_rng.get_state().to(self.device)[None], self.world).cpu()
        if not self.world.is_main:
            return
        tensors = {f"G.{k}": v for k, v in self.G.state_dict().items()}
        tensors.update({f"D.{k}": v for k, v in self.D.state_dict().items()})
        optim_g, plain_g = checkpoint.optimizer_tensors("optim.G", self.opt_g)
        optim_d, plain_d = checkpoint.optimizer_tensors("optim.D", self.opt_d)
        tensors.update(optim_g)
        tensors.update(optim_d)
        tensors["rng.data"] = self.data_rng.get_state()
        for rank in range(self.world.size):
            tensors[f"rng.noise.{rank}"] = noise_states[rank]
        if self.order is not None:
            tensors["data.order"] = self.order
        info = dict(position=self.position, world_size=self.world.size, optim_G=plain_g, optim_D=plain_d,
                    config=self.config.to_dict(), torch=torch.__version__,
                    backend=self.config.backend or gmkernels.get_backend())
        checkpoint.save(self.checkpoint_dir, self.step, tensors, info)

    def load_latest(self) -> None:
        stem = checkpoint.latest(self.checkpoint_dir)
        if stem is None:
            raise ConfigError(f"no checkpoint to resume in {self.checkpoint_dir}")
        tensors, info = checkpoint.load(stem)
        if info["world_size"] != self.world.size:
            raise ConfigError(f"the checkpoint was written by {info['world_size']} processes; resume it with "
                              f"the same number (got {self.world.size}) to continue the same run")
        saved = info["config"]
        for name, value in saved.items():
            if name not in RESUMABLE and value != getattr(self.config, name):
                raise ConfigError(f"checkpoint has {name}={value!r}, config says {getattr(self.config, name)!r}")
        self.G.load_state_dict(checkpoint.prefixed("G", tensors))
        self.D.load_state_dict(checkpoint.prefixed("D", tensors))
        checkpoint.load_optimizer("optim.G", self.opt_g, tensors, info["optim_G"])
        checkpoint.load_optimizer("optim.D", self.opt_d, tensors, info["optim_D"])
        self.data_rng.set_state(tensors["rng.data"])
        self.noise_rng.set_state(tensors[f"rng.noise.{self.world.rank}"].to(self.noise_rng.get_state().device))
        self.order = tensors.get("data.order")
        self.position = info["position"]
        self.step = info["step"]
        if self.world.is_main:
            self._truncate_history()
