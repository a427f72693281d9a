"""Every variant trains on every usable backend with finite losses; reference and cpp agree."""
import math

import pytest
import torch
from train_support import one_thread, skip_if_op_missing, tiny_config, usable_backends  # noqa: F401 (autouse fixture)

import gmkernels
from conftest import backend_device
from gmgan import Trainer
from gmgan.config import VARIANTS
from gmgan.variants import class_map


def train_losses(config, steps=None):
    trainer = Trainer(config)
    losses = []
    for _ in range(steps or config.steps):
        d_loss, g_loss = trainer.train_step()
        losses += [float(d_loss), float(g_loss)]
    return trainer, losses


@pytest.mark.parametrize("backend", usable_backends())
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_with_finite_loss_on_backend(tmp_path, variant, backend):
    config = tiny_config(tmp_path, variant=variant, backend=backend, device=str(backend_device(backend)))
    try:
        trainer, losses = train_losses(config)
    except NotImplementedError as error:
        skip_if_op_missing(error)
    assert all(math.isfinite(v) for v in losses), losses
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters())


@pytest.mark.parametrize("configured", [None, "reference"])
def test_trainer_backend_is_the_configured_one_or_the_process_choice(tmp_path, configured):
    """--backend applies only inside the trainer's calls; without it GMKERNELS_BACKEND (the process
    choice) is used, so GMKERNELS_BACKEND=reference switches a whole run to the reference ops."""
    process_choice = "cpp" if configured and "cpp" in gmkernels.backends() else "reference"
    with gmkernels.use_backend(process_choice):
        trainer = Trainer(tiny_config(tmp_path, variant="deligan", backend=configured))
        seen = []
        original = trainer.G.prior.sample

        def spy(*args, **kwargs):
            seen.append(gmkernels.get_backend())
            return original(*args, **kwargs)

        trainer.G.prior.sample = spy
        trainer.train_step()
        assert seen and set(seen) == {configured or process_choice}
        assert gmkernels.get_backend() == process_choice


@pytest.mark.parametrize("variant", ["gan", "deligan", "gmgan-supervised", "mdgan", "wgan-gp"])
def test_variant_trains_conv_nets_on_images(tmp_path, variant):
    _, losses = train_losses(tiny_config(tmp_path, variant=variant, dataset="digits", mixture="dynamic"), steps=2)
    assert all(math.isfinite(v) for v in losses), losses


@pytest.mark.parametrize("variant", ["gan", "mdgan", "gmgan-supervised"])
def test_options_feature_matching_minibatch_discrimination_conditioning(tmp_path, variant):
    config = tiny_config(tmp_path, variant=variant, feature_matching=True, fm_p=2, minibatch_discrimination=True,
                         mbd_kernels=8, mbd_dim=3, conditional=True)
    trainer, losses = train_losses(config, steps=2)
    assert all(math.isfinite(v) for v in losses), losses
    assert trainer.D.minibatch is not None and trainer.G.num_classes == 25


def test_training_changes_the_learned_prior(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="gmgan", mixture="dynamic"))
    before = trainer.G.prior.scale.detach().clone()
    trainer.run(evaluate_end=False)
    assert not torch.equal(before, trainer.G.prior.scale)


def test_static_gmgan_keeps_its_mixture_fixed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="gmgan", mixture="static"))
    before = trainer.G.prior.mu.clone(), trainer.G.prior.scale.clone()
    trainer.run(evaluate_end=False)
    assert torch.equal(before[0], trainer.G.prior.mu) and torch.equal(before[1], trainer.G.prior.scale)


@pytest.mark.parametrize("kernels", [b for b in usable_backends() if b != "reference"] or ["none"])
@pytest.mark.parametrize("variant", ["deligan", "gmgan", "mdgan"])
def test_same_seed_same_result_on_reference_and_kernel_backend(tmp_path, variant, kernels):
    if kernels == "none":
        pytest.skip("no compiled or Triton backend on this machine")
    results = {}
    for backend in ("reference", kernels):
        # Both runs on the kernel backend's device: CPU and CUDA generators draw different noise.
        config = tiny_config(tmp_path / backend, variant=variant, backend=backend, mixture="dynamic",
                             device=str(backend_device(kernels)))
        try:
            trainer, losses = train_losses(config)
        except NotImplementedError as error:
            skip_if_op_missing(error)
        results[backend] = (torch.cat([p.detach().flatten() for p in trainer.G.parameters()]), losses)
    reference, fused = results["reference"], results[kernels]
    # The backends' normals differ by a few float32 ulp (README: Random123 Philox + libm); four
    # training steps amplify that to ~1e-6 relative, far below any training-relevant difference.
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fused[1]), torch.tensor(reference[1]), rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights_and_different_seed_different_weights(tmp_path):
    first, _ = train_losses(tiny_config(tmp_path / "a", variant="deligan"))
    again, _ = train_losses(tiny_config(tmp_path / "b", variant="deligan"))
    other, _ = train_losses(tiny_config(tmp_path / "c", variant="deligan", seed=1))
    weights = [torch.cat([p.flatten() for p in t.G.parameters()]) for t in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("components,classes", [(10, 10), (25, 10), (4, 10)])
def test_class_map_covers_each_case_of_the_gmgan_mapping(components, classes):
    targets = class_map(components, classes)
    assert targets.shape == (components, classes)
    if components >= classes:   # every Gaussian serves one class, every class is served
        assert torch.equal(targets.sum(1), torch.ones(components))
        assert (targets.sum(0) >= 1).all()
        assert targets[components - 1, (components - 1) % classes] == 1
    else:                       # every class is served by exactly one Gaussian, several per Gaussian
        assert torch.equal(targets.sum(0), torch.ones(classes))
        assert (targets.sum(1) > 1).all()


def test_supervised_gmgan_generator_targets_its_gaussians_classes(tmp_path):
    config = tiny_config(tmp_path, variant="gmgan-supervised", components=50)
    trainer = Trainer(config)
    fake = trainer.sample_fake(16)
    assert fake.component is not None and fake.component.max() < 50
    classes = trainer.variant.generated_classes(fake.component)
    assert torch.equal(classes, fake.component % 25)
