"""Run configuration: one dataclass, filled from defaults, dataset and variant tables, a preset, a
YAML/JSON file and command-line flags (later sources win).

Fields left at ``None`` are "auto": :func:`build_config` resolves them from the dataset and variant
tables below, so a saved ``config.json`` always holds the concrete values a run used.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields

import gmkernels

from .penalty import KINDS as PENALTY_KINDS
from .variants import REGISTRY

VARIANTS = tuple(REGISTRY)
DATASETS = ("grid25", "ring8", "digits", "stacked-digits", "mnist", "fashion-mnist", "cifar10")
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")


# Settings a resumed run may change: they do not change the model, the data or the schedule.
# (Results stay bit-exact across a resume when backend, device and threads are also unchanged.)
RESUMABLE = ("steps", "checkpoint_every", "log_every", "eval_every", "progress", "threads", "out_dir",
             "backend", "device", "eval_samples")


class ConfigError(ValueError):
    """A configuration the layer cannot run; the CLI prints its message as one line."""


@dataclass
class Config:
    # what to train
    variant: str = "gan"
    dataset: str = "grid25"
    data_dir: str | None = None
    seed: int = 0
    # optimisation: one step = n_critic discriminator updates, then one generator update
    steps: int = 2000
    batch_size: int | None = None
    n_critic: int | None = None
    optimizer: str | None = None            # adam | rmsprop
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    lr_halve_every: int | None = None       # steps; 0 keeps the learning rate constant
    # architecture
    arch: str | None = None                 # mlp (2D data) | conv (images)
    z_dim: int | None = None
    g_hidden: list[int] | None = None       # MLP hidden widths
    d_hidden: list[int] | None = None
    g_channels: int | None = None           # conv base width
    d_channels: int | None = None
    d_size: str = "big"                     # big | half | quarter: D with 1, 1/2 or 1/4 of the big conv D's parameters
    spectral_norm: bool = False             # spectral normalization of D's conv and linear weights
    output_scale: float | None = None       # G output = output_scale * tanh(.)
    latent: str = "uniform"                 # prior of the non-mixture variants: uniform U[-1,1] | normal
    # losses
    gan_loss: str = "nonsaturating"         # nonsaturating | minimax (gan, deligan, gmgan, infogan, fgan)
    clip: float = 0.01                      # wgan weight clipping
    gp_weight: float | None = None          # gradient penalty on D, any variant (10 for wgan-gp, else 0)
    gp_kind: str = "wgan-gp"                # wgan-gp: (||grad D(x_hat)|| - 1)^2 on interpolates | r1: ||grad D(x)||^2 / 2 on real data
    # mixture priors (deligan, gmgan, gmgan-supervised)
    components: int | None = None           # N (deligan) or K (gmgan)
    prior_std: float | None = None          # DeLiGAN sigma init; GM-GAN sigma (static) / A init scale
    mean_range: float | None = None         # means ~ U[-mean_range, mean_range]^z_dim (GM-GAN's c)
    sigma_penalty: float | None = None      # DeLiGAN: coef * mean((1 - sigma)^2)
    assignment: str | None = None           # uniform | per_row (DeLiGAN's published code)
    mixture: str = "static"                 # gmgan: static (fixed mu, sigma I) | dynamic (learned mu, A)
    temperature: float = 1.0                # std scale when sampling for evaluation (quality-diversity)
    # mdgan
    mdgan_dim: int = 9
    mdgan_var: float = 0.25
    mdgan_saturating: bool = True
    # infogan: z = (noise of z_dim, one-hot categorical code, continuous codes ~ U[-1, 1])
    categories: int | None = None           # classes of the categorical code (auto: the toy sets' modes, else 10)
    continuous_codes: int = 2
    info_weight: float = 1.0                # lambda of the mutual-information term
    # fgan: the f-divergence of the variational bound
    divergence: str = "js"                  # kl | reverse-kl | pearson | hellinger | js | gan
    # options for any variant
    feature_matching: bool = False
    fm_p: int = 1
    minibatch_discrimination: bool = False
    mbd_kernels: int = 100
    mbd_dim: int = 5
    conditional: bool = False
    # data
    data_seed: int = 0
    train_per_class: int = 0                # 0 = all; DeLiGAN's limited-data setting uses 50
    stacked_size: int = 128000              # stacked-digits training triples (PacGAN: 128,000)
    # evaluation
    eval_samples: int | None = None         # 2,500 on 2D data (the MD-GAN protocol), 10,000 on images
    eval_every: int = 0                     # steps; 0 = only at the end
    # bookkeeping
    out_dir: str = "runs"
    run_name: str | None = None
    checkpoint_every: int = 500
    log_every: int = 50
    backend: str | None = None              # gmkernels backend; None: the process's (GMKERNELS_BACKEND)
    device: str = "auto"
    threads: int = 0                        # torch.set_num_threads; 0 leaves the default
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def is_2d(self) -> bool:
        return self.dataset in ("grid25", "ring8")


FIELD_TYPES = {f.name: f.type for f in fields(Config)}

# Settings that take one of a fixed set of values (validate checks them, ``gmgan train --help``
# lists them); the backends depend on the machine: backend_choices().
CHOICES = {"variant": VARIANTS, "dataset": DATASETS, "arch": ("mlp", "conv"), "optimizer": ("adam", "rmsprop"),
           "latent": ("uniform", "normal"), "gan_loss": ("nonsaturating", "minimax"),
           "assignment": ("uniform", "per_row"), "mixture": ("static", "dynamic"), "fm_p": (1, 2),
           "gp_kind": PENALTY_KINDS, "d_size": ("big", "half", "quarter"),
           "divergence": ("kl", "reverse-kl", "pearson", "hellinger", "js", "gan")}


def backend_choices() -> tuple:
    """The backend values usable here: auto (the fastest for the inputs' device) and every backend
    of gmkernels.backends(). Leaving backend unset keeps the process's choice (GMKERNELS_BACKEND)."""
    return ("auto",) + gmkernels.backends()

# Dataset defaults (each variant's own settings come from its class, gmgan.variants). grid25
# follows MD-GAN's published grid25 setup (docs/protocols.md): z ~ U[-1,1]^2,
# G 128-128-2 ReLU with 6 tanh output, D 128-128 LeakyReLU(0.2), batch 500, Adam 1e-3 / beta1 0.5,
# lr halved every 500 epochs (= 10,000 steps of 20 batches per epoch). ring8 uses the same nets
# with a 2 tanh output (its modes lie on the unit circle). Images follow DeLiGAN's MNIST setting
# (z 30, Adam 5e-4 / 0.5) on small DCGAN-style nets.
DATASET_DEFAULTS = {
    "grid25": dict(batch_size=500, lr_g=1e-3, lr_d=1e-3, beta1=0.5, beta2=0.999, lr_halve_every=10000,
                   arch="mlp", z_dim=2, g_hidden=[128, 128], d_hidden=[128, 128], output_scale=6.0,
                   eval_samples=2500),
    "ring8": dict(batch_size=500, lr_g=1e-3, lr_d=1e-3, beta1=0.5, beta2=0.999, lr_halve_every=10000,
                  arch="mlp", z_dim=2, g_hidden=[128, 128], d_hidden=[128, 128], output_scale=2.0,
                  eval_samples=2500),
}
_IMAGE_DEFAULTS = dict(batch_size=100, lr_g=5e-4, lr_d=5e-4, beta1=0.5, beta2=0.999, lr_halve_every=0,
                       arch="conv", z_dim=30, g_channels=32, d_channels=32, output_scale=1.0,
                       eval_samples=10000, g_hidden=[256], d_hidden=[256])
for _name in ("digits", "stacked-digits", "mnist", "fashion-mnist", "cifar10"):
    DATASET_DEFAULTS[_name] = dict(_IMAGE_DEFAULTS)
# The published Stacked MNIST protocol counts modes and KL on 26,000 samples.
DATASET_DEFAULTS["stacked-digits"]["eval_samples"] = 26000

NUM_MODES = {"grid25": 25, "ring8": 8, "digits": 10, "stacked-digits": 1000, "mnist": 10,
             "fashion-mnist": 10, "cifar10": 10}


PRESETS = {
    # The README's main command: gan / deligan / gmgan / mdgan on grid25, 3 seeds, in a few minutes
    # on 2 cores (~2.5 min measured with --jobs 2 on an idle machine). Batch 100 instead of
    # MD-GAN's 500: 2.3x cheaper steps, and the number of updates, not the batch, limits what a
    # short run learns.
    "quick": dict(dataset="grid25", batch_size=100, steps=8000, lr_halve_every=3000, checkpoint_every=4000,
                  log_every=250, threads=1),
    # The 2-D tables of docs/results.md (grid25 and ring8): MD-GAN's schedule (lr halved at each
    # quarter of the run) compressed to 12,000 steps of batch 100.
    "toy-results": dict(batch_size=100, steps=12000, lr_halve_every=4000, checkpoint_every=2000, log_every=500,
                        threads=1),
    # MD-GAN's published grid25 protocol: 2,000 epochs of 20 batches of 500, lr halved every 500 epochs.
    "mdgan-paper": dict(dataset="grid25", batch_size=500, steps=40000, lr_halve_every=10000,
                        checkpoint_every=2000, log_every=200),
    # The stacked-digits table of docs/results.md (1,000 modes; the published Stacked MNIST table on
    # the embedded 8x8 digits): batch 100, steps chosen by the measured step time of this machine
    # (docs/results.md), evaluated on 26,000 samples. Combine with --d-size half|quarter.
    "stacked": dict(dataset="stacked-digits", steps=600, checkpoint_every=300, log_every=100, threads=1),
    # DeLiGAN's limited-data image setting on the embedded digits: 50 images per class.
    "digits-limited": dict(dataset="digits", train_per_class=50, steps=3000, checkpoint_every=1000,
                           log_every=100),
}


def coerce(name: str, value):
    """Turn a string (flag or file value) into the field's type."""
    if name not in FIELD_TYPES:
        raise ConfigError(f"unknown setting {name!r}")
    kind = FIELD_TYPES[name]
    if value is None:
        return None
    try:
        if "list[int]" in kind:
            if isinstance(value, str):
                return [int(v) for v in value.replace(" ", "").split(",") if v]
            return [int(v) for v in value]
        if kind.startswith("bool"):
            if isinstance(value, str):
                lowered = value.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind.split(' |')[0]}, got {value!r}") from None


def read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of Config fields."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}".replace("\n", " ")) from None
    else:
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return content


def build_config(overrides: dict | None = None, *, preset: str | None = None,
                 file: str | None = None) -> Config:
    """Config from (lowest to highest priority) defaults, the dataset / variant tables, a preset,
    a YAML/JSON file and explicit overrides (command-line flags). Validated."""
    explicit: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        explicit.update(PRESETS[preset])
    if file is not None:
        explicit.update(read_config_file(file))
    explicit.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(explicit) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    values = {name: coerce(name, value) for name, value in explicit.items()}
    config = Config(**{k: v for k, v in values.items()})
    if config.variant not in VARIANTS:
        raise ConfigError(f"unknown variant {config.variant!r}; choose one of {', '.join(VARIANTS)}")
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    auto = dict(DATASET_DEFAULTS[config.dataset])
    auto.update(REGISTRY[config.variant].defaults_for(NUM_MODES[config.dataset], config.is_2d))
    for name, value in auto.items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    for name in ("components", "prior_std", "mean_range", "sigma_penalty", "assignment", "categories"):
        if getattr(config, name) is None:   # unused by this variant; concrete values keep JSON plain
            setattr(config, name, {"components": 1, "prior_std": 1.0, "mean_range": 1.0,
                                   "sigma_penalty": 0.0, "assignment": "uniform", "categories": 1}[name])
    if config.run_name is None:
        config.run_name = f"{config.dataset}-{config.variant}-s{config.seed}"
    validate(config)
    return config


def upgrade_saved_config(values: dict) -> dict:
    """A config saved by an older gmgan, in today's meaning."""
    if "gp_kind" not in values and values.get("variant") != "wgan-gp":
        # Saved before the gradient penalty was an option of every variant: gp_weight then held
        # WGAN-GP's 10 in every run, and only wgan-gp read it.
        values = dict(values, gp_weight=0.0)
    if "categories" not in values:          # saved before InfoGAN: the unused field's concrete value
        values = dict(values, categories=1)
    return values


def config_from_dict(values: dict) -> Config:
    """A Config saved by a run (every field concrete), validated."""
    values = upgrade_saved_config(values)
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} in saved config")
    config = Config(**{k: coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def _choice(config: Config, name: str, options) -> None:
    if getattr(config, name) not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}, got {getattr(config, name)!r}")


def validate(config: Config) -> None:
    """Raise ConfigError with one clear line for anything the run cannot do."""
    for name, options in CHOICES.items():
        _choice(config, name, options)
    for name in ("steps", "batch_size", "n_critic", "z_dim", "components", "mdgan_dim", "mbd_kernels",
                 "mbd_dim", "eval_samples", "checkpoint_every", "log_every", "categories"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("lr_g", "lr_d", "prior_std", "mean_range", "mdgan_var", "output_scale", "temperature"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("lr_halve_every", "eval_every", "train_per_class", "threads", "sigma_penalty", "clip",
                 "gp_weight", "continuous_codes", "info_weight"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(config, name)}")
    if not (0 <= config.beta1 < 1 and 0 <= config.beta2 < 1):
        raise ConfigError(f"beta1 and beta2 must lie in [0, 1), got {config.beta1}, {config.beta2}")
    if config.backend is not None:
        _choice(config, "backend", backend_choices())
    if config.is_2d and config.arch == "conv":
        raise ConfigError(f"arch conv needs image data; {config.dataset} is 2-D points (use arch mlp)")
    if not config.g_hidden or not config.d_hidden or min(config.g_hidden + config.d_hidden) < 1:
        raise ConfigError("g_hidden and d_hidden must list positive widths, e.g. 128,128")
    if config.arch == "conv" and min(config.g_channels, config.d_channels) < 1:
        raise ConfigError("g_channels and d_channels must be >= 1")
    if config.d_size != "big" and config.arch != "conv":
        raise ConfigError(f"d_size {config.d_size} scales the conv discriminator of image data; arch is {config.arch}")
    if config.dataset in FILE_DATASETS:
        if not config.data_dir:
            raise ConfigError(f"dataset {config.dataset} is read from files: pass --data-dir")
        if not os.path.isdir(config.data_dir):
            raise ConfigError(f"data dir {config.data_dir} does not exist")


def replace(config: Config, **changes) -> Config:
    """A copy with some fields changed, validated."""
    updated = dataclasses.replace(config, **changes)
    validate(updated)
    return updated

