"""The one training loop every variant shares.

A step = ``n_critic`` discriminator updates (each on a fresh real batch and fresh fakes), then one
generator update; with ``gp_weight`` > 0 each discriminator update adds a gradient penalty
(gmgan.penalty). Randomness comes only from two generators owned by the trainer: ``data_rng``
(the epoch permutations; identical on every rank) and ``noise_rng`` (latents, condition labels,
WGAN-GP's mixing weights; one per rank). Their states, the optimizers, the data position and the
step are checkpointed (gmgan.checkpoint), so ``resume`` continues to exactly the result of an
uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

import gmkernels

from . import checkpoint, scoring
from .config import RESUMABLE, Config, ConfigError, coerce, config_from_dict, replace
from .data import Dataset, load_dataset
from .distributed import World, average_gradients, broadcast_parameters, init_world, mean_over_ranks
from .history import History
from .models import build_networks, parameter_count
from .penalty import gradient_penalty
from .variants import Batch, make_variant

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


def has_checkpointed_run(config: Config) -> bool:
    """Whether <out_dir>/<run_name> holds a run of this config with a checkpoint, finished or not,
    so that ``Trainer(config, resume=True)`` picks it up (a resumed run ends exactly where an
    uninterrupted one would)."""
    run_dir = os.path.join(config.out_dir, config.run_name)
    return saved_config_matches(run_dir, config) and checkpoint.latest(os.path.join(run_dir, "checkpoints")) is not None


def network_sizes(G: nn.Module, D: nn.Module) -> dict:
    """Parameter counts of G and D (D's whole network: body, head and any minibatch layer) and,
    for conv discriminators, the d_size widths and counts (gmgan.models.conv_discriminator_widths)."""
    sizes = {"g_parameters": parameter_count(G), "d_parameters": parameter_count(D)}
    widths = getattr(D, "widths", {})
    if widths:
        sizes.update(d_channels_used=widths["channels"], d_hidden_used=widths["hidden"],
                     d_conv_parameters=widths["parameters"], d_big_parameters=widths["big_parameters"],
                     d_ratio=widths["ratio"])
    return sizes


def resolve_device(config: Config, world: World) -> torch.device:
    # "auto" is no torch device name: it picks the kind, and the index comes from the process
    # (its local rank under DDP) or the name ("cuda:1"), else 0.
    requested = None if config.device == "auto" else torch.device(config.device)
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if requested is None else requested.type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {config.device} requested but CUDA is not available")
        index = world.local_rank if world.active else (requested.index if requested is not None else None)
        return torch.device("cuda", index or 0)
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
        self.network_sizes = network_sizes(self.G, self.D)
        if config.d_size != "big" and self.world.is_main:
            sizes = self.network_sizes
            print(f"gmgan: {config.run_name}: d_size {config.d_size}: conv D of {sizes['d_conv_parameters']:,} "
                  f"parameters = {sizes['d_ratio']:.4f} x the big D's {sizes['d_big_parameters']:,} (channels "
                  f"{sizes['d_channels_used']}, hidden {sizes['d_hidden_used']}); all of D: "
                  f"{sizes['d_parameters']:,}", flush=True)
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
        self.diverged_at: int | None = None   # the logged step whose mean losses were not finite
        self.run_dir = run_dir or os.path.join(config.out_dir, config.run_name)
        self.checkpoint_dir = os.path.join(self.run_dir, "checkpoints")
        self.history = History(os.path.join(self.run_dir, "history.csv"), writer=self.world.is_main)
        if resume:
            checkpoint.restore_trainer(self)
            self.history.truncate(self.step)
        elif self.world.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "config.json"), "w") as handle:
                json.dump(config.to_dict(), handle, indent=1)
            self.history.reset()

    @classmethod
    def from_run_dir(cls, run_dir: str, overrides: dict | None = None, *, world: World | None = None,
                     resume: bool = True) -> "Trainer":
        """The run saved in run_dir (its config.json), with only RESUMABLE settings changed."""
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
        return Batch(self.G(z, labels), labels, component, z)

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
            d_loss = variant.discriminator_loss(self.D, real, fake)
            if config.gp_weight:
                d_loss = d_loss + config.gp_weight * gradient_penalty(variant, self.D, real, fake, config.gp_kind,
                                                                      self.noise_rng)
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
        A run whose logged losses are no longer finite (NaN or inf: the training diverged) stops
        there with a warning; its metrics carry ``diverged_at`` (that step) and describe the
        generator as it was then. Returns the final metrics when the run reached config.steps (or
        diverged) and evaluate_end is set."""
        config = self.config
        until = config.steps if until is None else min(until, config.steps)
        # disable=None: tqdm draws only on a terminal (a log file would get a line of \r updates).
        shown = config.progress and self.world.is_main
        bar = tqdm(total=config.steps, initial=self.step, disable=None if shown else True, desc=config.run_name,
                   unit="step", dynamic_ncols=True)
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
                    self.history.append(row)
                    bar.set_postfix(d=f"{losses[0]:.3f}", g=f"{losses[1]:.3f}", samples_s=f"{rate:,.0f}")
                    loss_sum.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                    # Checked at the logged steps only: it needs the losses on the host, which the
                    # log already fetched (a check every step would synchronize a GPU every step).
                    if not all(math.isfinite(v) for v in losses):
                        self.diverged_at = self.step
                        if self.world.is_main:
                            print(f"gmgan: {config.run_name}: the losses are not finite by step {self.step} "
                                  f"(d_loss {losses[0]}, g_loss {losses[1]}): training diverged and stops "
                                  f"here; its metrics carry diverged_at = {self.step}", file=sys.stderr, flush=True)
                        break
                if self.step % config.checkpoint_every == 0 and self.step < until:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            bar.close()
            raise
        bar.close()
        self.save_checkpoint()
        if (self.step >= config.steps or self.diverged_at is not None) and evaluate_end:
            return self.evaluate(plots=True, write=True)
        return None

    def evaluate(self, *, plots: bool = True, write: bool = False, temperature: float | None = None) -> dict:
        """Metrics of the current generator (gmgan.scoring), written to metrics.json / .csv and
        samples.png by rank 0 when ``write``; ``temperature`` defaults to the config's."""
        return scoring.evaluate_generator(self.config, self.dataset, self.G, self.sample_fake, step=self.step,
                                          world=self.world, run_dir=self.run_dir, plots=plots, write=write,
                                          temperature=temperature, extra=dict(self.network_sizes, **(
                                              {} if self.diverged_at is None else {"diverged_at": self.diverged_at})))

    def save_checkpoint(self) -> None:
        """checkpoints/step_<step> (gmgan.checkpoint.save_trainer)."""
        checkpoint.save_trainer(self)
