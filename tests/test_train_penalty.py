"""Gradient penalties (--gp-weight, --gp-kind wgan-gp|r1) for every variant, and on the kernel
backends the same training as on the reference backend (a penalty differentiates the
ops twice, through D's minibatch layer and MD-GAN's simplex head)."""
import math

import pytest
import torch
from torch import nn
from train_support import one_thread, tiny_config, usable_backends  # noqa: F401 (autouse fixture)

from conftest import backend_device
from gmgan import Trainer
from gmgan.config import VARIANTS, build_config, config_from_dict
from gmgan.penalty import gradient_penalty
from gmgan.variants import GAN, Batch


class LinearCritic(nn.Module):
    """D(x) = x . w: its input gradient is w everywhere."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x, labels=None):
        return (x @ self.weight)[:, None], x


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_penalty_value_and_its_gradient_for_d_of_known_input_gradient(tmp_path, kind):
    weight = torch.tensor([3.0, 4.0], dtype=torch.float64)     # ||w|| = 5
    critic = LinearCritic(weight.clone())
    variant = GAN(tiny_config(tmp_path), num_classes=25)
    real = Batch(torch.randn(7, 2, dtype=torch.float64))
    fake = Batch(torch.randn(7, 2, dtype=torch.float64))
    penalty = gradient_penalty(variant, critic, real, fake, kind, torch.Generator().manual_seed(0))
    (gradient,) = torch.autograd.grad(penalty, critic.weight)
    if kind == "wgan-gp":   # (||w|| - 1)^2, d/dw = 2 (||w|| - 1) w / ||w||
        assert float(penalty.detach()) == pytest.approx(16.0)
        torch.testing.assert_close(gradient, 2 * 4 * weight / 5)
    else:                   # ||w||^2 / 2, d/dw = w
        assert float(penalty.detach()) == pytest.approx(12.5)
        torch.testing.assert_close(gradient, weight)


def test_only_wgan_gp_has_a_penalty_by_default_and_old_saved_configs_keep_theirs_off():
    weights = {variant: build_config({"variant": variant}).gp_weight for variant in VARIANTS}
    assert weights == {variant: 10.0 if variant == "wgan-gp" else 0.0 for variant in VARIANTS}
    assert build_config({"variant": "gan", "gp_weight": 2, "gp_kind": "r1"}).gp_weight == 2.0
    # Saved before gp_kind existed, every config held WGAN-GP's gp_weight 10, read only by wgan-gp.
    saved = build_config({"variant": "gan"}).to_dict()
    del saved["gp_kind"]
    assert config_from_dict(dict(saved, gp_weight=10.0)).gp_weight == 0.0
    assert config_from_dict(dict(saved, variant="wgan-gp", gp_weight=10.0)).gp_weight == 10.0


def d_parameters(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.D.parameters()])


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_with_a_penalty_that_changes_d(tmp_path, variant, kind):
    """On the reference backend: finite losses, and D ends elsewhere than without the penalty."""
    results = {}
    for weight in (0.0, 5.0):
        config = tiny_config(tmp_path / str(weight), variant=variant, gp_weight=weight, gp_kind=kind, steps=2,
                             n_critic=1, backend="reference")
        trainer = Trainer(config)
        losses = [float(v) for _ in range(config.steps) for v in trainer.train_step()]
        assert all(math.isfinite(v) for v in losses), losses
        results[weight] = d_parameters(trainer)
    assert torch.isfinite(results[5.0]).all()
    assert not torch.allclose(results[0.0], results[5.0])


KERNEL_BACKENDS = [b for b in usable_backends() if b != "reference"] or ["none"]
# MD-GAN: the penalty differentiates gmkernels.mixture_log_likelihood twice (SimplexGMM's head);
# GAN + minibatch discrimination: gmkernels.minibatch_discrimination twice.
PENALIZED = {"mdgan": dict(variant="mdgan"),
             "gan+minibatch": dict(variant="gan", minibatch_discrimination=True, mbd_kernels=6, mbd_dim=3)}


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("case", sorted(PENALIZED))
@pytest.mark.parametrize("kernels", KERNEL_BACKENDS)
def test_penalized_steps_on_kernel_backend_equal_reference_to_float64_rounding(tmp_path, kernels, case, kind):
    if kernels == "none":
        pytest.skip("no compiled or Triton backend on this machine")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)    # nets, priors and data in float64
    try:
        weights = {}
        for backend in ("reference", kernels):
            # Both runs on the kernels' device (the default, auto, picks the GPU where there is one).
            config = tiny_config(tmp_path / backend, **PENALIZED[case], gp_weight=10.0, gp_kind=kind, steps=3,
                                 batch_size=32, backend=backend, device=str(backend_device(kernels)))
            trainer = Trainer(config)
            assert trainer.dataset.get(torch.arange(2))[0].dtype == torch.float64
            for _ in range(config.steps):
                trainer.train_step()
            weights[backend] = torch.cat([d_parameters(trainer)] + [p.detach().flatten() for p in trainer.G.parameters()])
    finally:
        torch.set_default_dtype(before)
    assert weights["reference"].dtype == torch.float64
    torch.testing.assert_close(weights[kernels], weights["reference"], rtol=1e-10, atol=1e-12)
