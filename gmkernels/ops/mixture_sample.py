"""mixture_sample: reparameterized sampling from a Gaussian-mixture prior.

The wrapper draws the components (uniformly, from ``weights``, or as given) and one 62-bit seed
from torch's generator; the kernels then make eps with the shared Philox stream
(csrc/kernels/philox.h), so eps is never stored: the backward regenerates it from the seed, or
(CPU, eager, diagonal scale: see recovers_noise) reads it back from the forward's z.
"""
from __future__ import annotations

import os

import torch

from .. import backend
from ..reference import mixture_sample as reference
from . import _checks, _registry


def _positive_total(weights: _checks.Summary) -> bool:
    """Every weight >= 0 (a NaN fails) and a positive sum."""
    return weights.low >= 0 and weights.total > 0


def _check(mu, scale, n, component, generator, weights):
    mu = _checks.float_tensor(mu, "mu")
    scale = _checks.float_tensor(scale, "scale")
    n = _checks.non_negative_int(n, "n")
    _checks.ndim(mu, "mu", 2, "(N, K)")
    num_components, dim = mu.shape
    if num_components == 0:
        raise ValueError("mu must have at least one component (N >= 1), got shape (0, K)")
    full = (num_components, dim, dim)
    if tuple(scale.shape) not in ((num_components, dim), full):
        raise ValueError(
            f"scale must be (N, K) = {(num_components, dim)} (diagonal std) or (N, K, K) = {full}"
            f" (lower-triangular factor), got shape {tuple(scale.shape)}"
        )
    _checks.same_dtype({"mu": mu, "scale": scale, "weights": weights})
    _checks.same_device({"mu": mu, "scale": scale, "component": component, "weights": weights})
    if component is not None:
        _checks.int64_tensor(component, "component")
        if tuple(component.shape) != (n,):
            raise ValueError(f"component must have shape (n,) = ({n},), got {tuple(component.shape)}")
        _checks.index_range(component, "component", num_components)
    if weights is not None:
        if component is not None:
            raise ValueError("pass either component or weights, not both")
        _checks.float_tensor(weights, "weights")
        if tuple(weights.shape) != (num_components,):
            raise ValueError(f"weights must have shape (N,) = ({num_components},), got {tuple(weights.shape)}")
        if _checks.checking_values() and not _positive_total(_checks.summary(weights)):
            raise ValueError("weights must be >= 0 with a positive sum")
    _checks.finite(scale, "scale")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != mu.device.type:
            raise ValueError(f"generator is on {generator.device}, mu on {mu.device}")
    return num_components, n


def draw_seed(generator: torch.Generator | None = None) -> torch.Tensor:
    """A 0-dim int64 CPU tensor of 62 random bits from ``generator`` (default: torch's CPU
    generator, so ``torch.manual_seed`` reproduces it)."""
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 2**62, (), dtype=torch.int64, device=device, generator=generator)
    return seed.cpu()


def mixture_sample(mu: torch.Tensor, scale: torch.Tensor, n: int, *,
                   component: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   weights: torch.Tensor | None = None):
    """Draw ``n`` samples z = mu[c] + S[c] eps from a Gaussian mixture, differentiably in mu and
    scale to every order (the double backward is this op again, with the same eps).

    Args:
        mu: (N, K) component means.
        scale: (N, K) diagonal scales with z = mu_c + scale_c * eps (DeLiGAN, GM-GAN static), or
            (N, K, K) factors A with z = mu_c + A_c eps (GM-GAN dynamic, Sigma_c = A_c A_c^T),
            read as lower-triangular like ``scale_tril`` in torch.distributions. Any sign is
            accepted, as in DeLiGAN's code, where a learned scale may cross zero: |scale| is the
            standard deviation (eps is symmetric, so the sign changes which z a seed gives, not
            the distribution), and the gradient is the plain d z / d scale = eps.
        n: number of samples (an int >= 0: Python or NumPy).
        component: optional (n,) int64 components in [0, N) chosen by the caller.
        generator: the only RNG state consumed when given; otherwise torch's default generators.
        weights: optional (N,) non-negative mixture weights (need not sum to 1); uniform if None.

    Returns:
        (z, component): z (n, K) in mu's dtype, component (n,) int64.

    Reproducibility: the same components and seed give the same z bits on one backend, and z
    within 1e-5 across backends (the normals differ by a few float32 ulp between math
    libraries). The backward is deterministic on the CPU always (every gradient entry summed in
    sample order by one writer, the same bits for any thread count); the CUDA and Triton
    backwards add with atomics unless ``torch.use_deterministic_algorithms(True)`` is set, which
    switches them to the ordered path. On the CPU in eager mode a diagonal backward reads eps back
    from z as (z - mu_c) / scale_c where that is accurate (see ``recovers_noise``): its gradients
    then differ from the regenerating path's in the last bits (float32: eps within ~4e-6).
    """
    num_components, n = _check(mu, scale, n, component, generator, weights)
    if component is None:
        if n == 0:
            component = torch.empty(0, dtype=torch.int64, device=mu.device)
        elif weights is None:
            component = torch.randint(num_components, (n,), device=mu.device, generator=generator)
        else:
            component = torch.multinomial(weights, n, replacement=True, generator=generator)
    seed = draw_seed(generator)
    return mixture_sample_with_seed(mu, scale, component, seed), component


def mixture_sample_with_seed(mu: torch.Tensor, scale: torch.Tensor, component: torch.Tensor,
                             seed: torch.Tensor) -> torch.Tensor:
    """z for given components and Philox seed (0-dim int64 CPU tensor): the same z on every
    backend, within float rounding. Arguments are assumed checked."""
    if recovers_noise(mu, scale):
        return _RecoveringNoise.apply(mu, scale, component, seed)
    return _OP(mu.device, mu, scale, component, seed)


RECOVER_SWITCH = "GMKERNELS_SAMPLE_RECOVER_EPS"
"""``GMKERNELS_SAMPLE_RECOVER_EPS=0`` (read on every call) makes every backward regenerate eps
from the seed (see recovers_noise)."""


def recovers_noise(mu, scale) -> bool:
    """Whether this call's first backward reads eps back from the samples instead of drawing it
    again: eps = (z - mu_c) / scale_c from the forward's z (no normal drawn: forward+backward
    1.1-1.3x faster, measured at n K = 1.6 10^4 to 3 10^7 on 2 threads).

    Only in eager mode on the cpp backend with CPU tensors and a diagonal scale, when a gradient
    will be taken, and unless ``GMKERNELS_SAMPLE_RECOVER_EPS=0``. The backward then checks the
    values: every scale nonzero and every |mu| at most 64 times its |scale| (z is rounded to half
    an ulp of z, so eps comes back off by up to ~2^-24 (|mu| / |scale| + 2 |eps|): below 4e-6 in
    float32 within that limit); otherwise, after an in-place change of z or mu, and in a
    backward that records a graph (a gradient penalty's), eps is regenerated from the seed as on
    every other path. The forward's z stays referenced by the autograd graph until its backward
    (a user's generator keeps it for its first layer's backward anyway)."""
    setting = os.environ.get(RECOVER_SWITCH, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{RECOVER_SWITCH} must be 0 or 1, got {setting!r}")
    if setting == "0" or _registry.traced():
        return False
    if not (mu.device.type == "cpu" and scale.dim() == 2 and torch.is_grad_enabled()
            and (mu.requires_grad or scale.requires_grad)):
        return False
    return backend.resolve("mixture_sample", _OP.implemented, mu.device) == "cpp"


class _RecoveringNoise(torch.autograd.Function):
    """The op whose first backward that records no graph reads eps back from the forward's z
    (see recovers_noise); z and mu are held as detached aliases with their versions, so that an
    in-place change of either sends the backward back to the seed instead of raising."""

    @staticmethod
    def forward(ctx, mu, scale, component, seed):
        z = _registry.compiled_ops().mixture_sample(mu, scale, component, seed)
        _setup_context(ctx, (mu, scale, component, seed), z)
        ctx.samples = (z.detach(), mu.detach())
        ctx.versions = (z._version, mu._version)
        return z

    @staticmethod
    def backward(ctx, grad_z):
        (z, mu), versions = ctx.samples, ctx.versions
        if torch.is_grad_enabled() or (z._version, mu._version) != versions:
            return _backward(_registry.compiled_ops(), ctx, grad_z)
        scale, component, seed = ctx.saved_tensors
        grad_mu, grad_scale = torch.ops.gmkernels.mixture_sample_backward_from_samples(
            grad_z, z, mu, scale, component, seed)
        needs = ctx.needs_input_grad
        return grad_mu if needs[0] else None, grad_scale if needs[1] else None, None, None


def _fake(mu, scale, component, seed):
    return mu.new_empty(component.shape[0], mu.shape[1])


def _fake_backward(grad_z, scale, component, seed):
    return scale.new_empty(scale.shape[0], scale.shape[1]), torch.empty_like(scale)


def _setup_context(ctx, inputs, output):
    mu, scale, component, seed = inputs
    ctx.save_for_backward(scale, component, seed)


def _backward(ops, ctx, grad_z):
    """The backward op regenerates eps from the seed."""
    scale, component, seed = ctx.saved_tensors
    grad_mu, grad_scale = ops.mixture_sample_backward(grad_z, scale, component, seed)
    return grad_mu, grad_scale, None, None


def _setup_backward_context(ctx, inputs, output):
    grad_z, scale, component, seed = inputs
    ctx.save_for_backward(scale, component, seed)


def _double_backward(ops, ctx, grad_grad_mu, grad_grad_scale):
    scale, component, seed = ctx.saved_tensors
    return (sample_of_cotangents(ops.mixture_sample, grad_grad_mu, grad_grad_scale, scale,
                                 component, seed), None, None, None)


def sample_of_cotangents(sample, grad_grad_mu, grad_grad_scale, scale, component, seed):
    """The double backward: (grad_mu, grad_scale) = backward(grad_z) is linear in grad_z and does
    not depend on mu or scale (eps depends on the seed only), with grad_mu_c = sum_{s: c_s = c}
    grad_z_s and grad_scale_c = sum_s grad_z_s eps_s (its lower triangle, for a full scale). Its
    transpose maps (G_mu, G_scale) to G_mu[c_s] + tril(G_scale)[c_s] eps_s: the forward op itself,
    with the same components and seed. No memory, and every order (the forward is differentiable)."""
    if grad_grad_mu is None and grad_grad_scale is None:
        return None
    if grad_grad_mu is None:
        grad_grad_mu = scale.new_zeros(scale.shape[0], scale.shape[1])
    if grad_grad_scale is None:
        grad_grad_scale = torch.zeros_like(scale)
    return sample(grad_grad_mu, grad_grad_scale, component, seed)


_OP = _registry.register(_registry.OpDeclaration(
    name="mixture_sample",
    schema="mixture_sample(Tensor mu, Tensor scale, Tensor component, Tensor seed) -> Tensor",
    backward_schema="mixture_sample_backward(Tensor grad_z, Tensor scale, Tensor component,"
                    " Tensor seed) -> (Tensor, Tensor)",
    reference=reference.mixture_sample,
    fake=_fake, fake_backward=_fake_backward,
    setup_context=_setup_context, backward=_backward,
    setup_backward_context=_setup_backward_context, double_backward=_double_backward,
))
IMPLEMENTED = _OP.implemented
if "cpp" in IMPLEMENTED:
    # The CPU backward from the samples (eager only, see recovers_noise): fake tensors for
    # opcheck.
    torch.library.register_fake("gmkernels::mixture_sample_backward_from_samples",
                                lambda grad_z, z, mu, scale, component, seed:
                                _fake_backward(grad_z, scale, component, seed))
