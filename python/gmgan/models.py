"""Networks: MLPs for 2-D data, small DCGAN-style conv nets for images, sizes from the config.

The generator owns its latent prior (``G.prior``), so a mixture's means and scales are trained,
checkpointed and averaged across ranks with the generator's other parameters. The discriminator
returns ``(output, features)``: ``features`` is the last hidden layer (feature matching reads it;
minibatch discrimination, when on, is applied after it, before the output layer).

Discriminator capacity (``d_size``): the big conv D has ``d_channels`` / ``d_hidden[-1]`` widths;
``half`` and ``quarter`` shrink both so that the network has 1/2 or 1/4 of the big one's parameters
(the smaller discriminators of the published Stacked MNIST table), counted on the conv body and a
one-output head, so every variant gets the same widths. ``spectral_norm`` wraps each of D's conv
and linear weights in torch's spectral normalization.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmkernels.nn import MinibatchDiscrimination

from .config import Config, ConfigError


def one_hot(labels: torch.Tensor | None, num_classes: int, dtype) -> torch.Tensor | None:
    return None if labels is None else F.one_hot(labels, num_classes).to(dtype)


def _mlp(widths: list[int], activation) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), activation()]
    return layers


class MLPGenerator(nn.Module):
    """z (+ one-hot label) -> hidden ReLU layers -> output_scale * tanh (MD-GAN: 6 tanh on grid25),
    reshaped to the sample shape (images may use MLPs too)."""

    def __init__(self, z_dim: int, hidden: list[int], shape: tuple, output_scale: float, condition_dim: int = 0):
        super().__init__()
        self.shape = tuple(shape)
        self.body = nn.Sequential(*_mlp([z_dim + condition_dim] + hidden, nn.ReLU),
                                  nn.Linear(hidden[-1], math.prod(shape)))
        self.output_scale = output_scale

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            z = torch.cat([z, condition], 1)
        return (self.output_scale * torch.tanh(self.body(z))).view(z.shape[0], *self.shape)


class ConvGenerator(nn.Module):
    """DCGAN-style: z -> (2c, H/4, W/4) -> ConvT 4/2 -> (c, H/2, W/2) -> ConvT 4/2 -> (C, H, W), BN + ReLU."""

    def __init__(self, z_dim: int, shape: tuple, channels: int, output_scale: float, condition_dim: int = 0):
        super().__init__()
        out_channels, height, width = shape
        self.start = (2 * channels, height // 4, width // 4)
        self.project = nn.Linear(z_dim + condition_dim, math.prod(self.start))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, 2, 1),
        )
        self.output_scale = output_scale

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            z = torch.cat([z, condition], 1)
        hidden = self.project(z).view(z.shape[0], *self.start)
        return self.output_scale * torch.tanh(self.body(hidden))


class Generator(nn.Module):
    """The latent prior and the network: G.sample(n) draws z (and its component) and maps it."""

    def __init__(self, prior: nn.Module, net: nn.Module, num_classes: int = 0):
        super().__init__()
        self.prior, self.net, self.num_classes = prior, net, num_classes

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        condition = one_hot(labels, self.num_classes, z.dtype) if self.num_classes else None
        return self.net(z, condition)


class Discriminator(nn.Module):
    """x (+ label) -> features -> [minibatch discrimination] -> Linear(out_dim). Non-image
    discriminators (MLPs) see x flattened."""

    def __init__(self, body: nn.Module, feature_dim: int, out_dim: int, *, num_classes: int = 0,
                 image: bool = False, minibatch: MinibatchDiscrimination | None = None):
        super().__init__()
        self.body, self.minibatch = body, minibatch
        self.num_classes, self.image = num_classes, image
        head_in = minibatch.out_features if minibatch is not None else feature_dim
        self.head = nn.Linear(head_in, out_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        if not self.image:
            x = x.flatten(1)
        if self.num_classes:
            condition = one_hot(labels, self.num_classes, x.dtype)
            if self.image:  # one constant map per class, as conditional DCGANs do
                condition = condition[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, condition], 1)
        features = self.body(x)
        hidden = self.minibatch(features) if self.minibatch is not None else features
        return self.head(hidden), features


def _conv_body(in_channels: int, shape: tuple, channels: int, hidden: int) -> nn.Module:
    _, height, width = shape
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(channels, 2 * channels, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(2 * channels * (height // 4) * (width // 4), hidden), nn.LeakyReLU(0.2),
    )


D_SIZE_RATIOS = {"big": 1.0, "half": 0.5, "quarter": 0.25}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _counted_discriminator(in_channels: int, shape: tuple, channels: int, hidden: int) -> int:
    """Parameters of the conv body plus a one-output head (built on the meta device: no memory,
    no initialisation)."""
    with torch.device("meta"):
        return parameter_count(nn.Sequential(_conv_body(in_channels, shape, channels, hidden), nn.Linear(hidden, 1)))


def conv_discriminator_widths(in_channels: int, shape: tuple, channels: int, hidden: int, d_size: str) -> dict:
    """The widths of the ``d_size`` conv discriminator built from the big one's (channels,
    hidden): the channels scale by sqrt(ratio) (conv weights grow as their square), then the
    hidden width is the one whose parameter count lies nearest ratio x the big count (the count
    is linear in it). Returns channels, hidden, parameters, big_parameters and ratio."""
    if d_size not in D_SIZE_RATIOS:
        raise ValueError(f"d_size must be one of {', '.join(D_SIZE_RATIOS)}, got {d_size!r}")
    big = _counted_discriminator(in_channels, shape, channels, hidden)
    ratio = D_SIZE_RATIOS[d_size]
    if ratio != 1.0:
        channels = max(1, round(channels * math.sqrt(ratio)))
        at_one = _counted_discriminator(in_channels, shape, channels, 1)
        per_unit = _counted_discriminator(in_channels, shape, channels, 2) - at_one
        hidden = max(1, round((ratio * big - at_one) / per_unit) + 1)
    count = _counted_discriminator(in_channels, shape, channels, hidden)
    return dict(channels=channels, hidden=hidden, parameters=count, big_parameters=big, ratio=count / big)


def spectrally_normalized(module: nn.Module) -> nn.Module:
    """module with every Conv2d / Linear weight under torch's spectral normalization."""
    from torch.nn.utils.parametrizations import spectral_norm

    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            spectral_norm(layer)
    return module


def build_networks(config: Config, sample_shape: tuple, prior: nn.Module, d_out: int, num_classes: int):
    """(G, D) for the config; num_classes > 0 only when conditioning on labels. D.widths records
    the conv discriminator's widths and parameter counts (conv_discriminator_widths)."""
    condition_dim = num_classes if config.conditional else 0
    # What G reads: z_dim, or more when the prior appends codes (InfoGAN); without a prior, z_dim.
    latent_dim = getattr(prior, "dim", config.z_dim)
    if config.arch == "mlp":
        out_dim = math.prod(sample_shape)
        net = MLPGenerator(latent_dim, config.g_hidden, sample_shape, config.output_scale, condition_dim)
        body = nn.Sequential(*_mlp([out_dim + condition_dim] + config.d_hidden, lambda: nn.LeakyReLU(0.2)))
        feature_dim = config.d_hidden[-1]
    else:
        if len(sample_shape) != 3 or sample_shape[1] % 4 or sample_shape[2] % 4:
            raise ConfigError(f"arch conv needs images (C, H, W) with H and W divisible by 4, got {sample_shape}")
        net = ConvGenerator(latent_dim, sample_shape, config.g_channels, config.output_scale, condition_dim)
        widths = conv_discriminator_widths(sample_shape[0] + condition_dim, sample_shape, config.d_channels,
                                           config.d_hidden[-1], config.d_size)
        body = _conv_body(sample_shape[0] + condition_dim, sample_shape, widths["channels"], widths["hidden"])
        feature_dim = widths["hidden"]
    minibatch = (MinibatchDiscrimination(feature_dim, config.mbd_kernels, config.mbd_dim)
                 if config.minibatch_discrimination else None)
    generator = Generator(prior, net, condition_dim)
    discriminator = Discriminator(body, feature_dim, d_out, num_classes=condition_dim,
                                  image=config.arch == "conv", minibatch=minibatch)
    if config.spectral_norm:
        spectrally_normalized(discriminator.body)
        spectrally_normalized(discriminator.head)
    discriminator.widths = widths if config.arch == "conv" else {}
    return generator, discriminator
