"""Every variant trains on every usable backend with finite losses; reference and cpp agree."""
import math

import pytest
import torch
from train_support import one_thread, skip_if_op_missing, tiny_config, usable_backends  # noqa: F401 (autouse fixture)

import gmkernels
from conftest import backend_device
from gmgan import Trainer
from gmgan.config import VARIANTS, ConfigError, replace
from gmgan.distributed import World
from gmgan.trainer import resolve_device
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


@pytest.mark.parametrize("device, cuda_available, world, expected", [
    ("auto", True, World(), "cuda:0"),            # the default on a GPU machine (it raised there)
    ("auto", False, World(), "cpu"),
    ("auto", True, World(rank=3, size=4, local_rank=1), "cuda:1"),
    ("cuda:1", True, World(), "cuda:1"),
    ("cuda", True, World(rank=1, size=2, local_rank=1), "cuda:1"),
    ("cpu", True, World(), "cpu"),
])
def test_device_auto_picks_the_kind_and_the_process_picks_the_index(monkeypatch, device, cuda_available,
                                                                    world, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert resolve_device(replace(tiny_config("unused"), device=device), world) == torch.device(expected)


def test_a_cuda_device_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device cuda:0 requested but CUDA is not available"):
        resolve_device(replace(tiny_config("unused"), device="cuda:0"), World())


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


@pytest.mark.parametrize("variant", ["gan", "deligan", "gmgan-supervised", "mdgan", "wgan-gp", "infogan", "fgan"])
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


# ---- f-GAN: the variational bound of each divergence -----------------------------------------
# Independent of gmgan.variants.fgan: f'(u) (the optimal T = f'(p/q)), the inverse of the output
# activation (the D output v with g_f(v) = T) and D_f in closed form, for each divergence.
F_PRIME = {
    "kl": lambda u: 1 + torch.log(u),
    "reverse-kl": lambda u: -1 / u,
    "pearson": lambda u: 2 * (u - 1),
    "hellinger": lambda u: 1 - u.rsqrt(),
    "js": lambda u: torch.log(2 * u / (1 + u)),
    "gan": lambda u: torch.log(u / (u + 1)),
}
INVERSE_ACTIVATION = {
    "kl": lambda t: t,
    "reverse-kl": lambda t: -torch.log(-t),
    "pearson": lambda t: t,
    "hellinger": lambda t: -torch.log(1 - t),
    "js": lambda t: torch.logit(torch.exp(t) / 2),
    "gan": lambda t: torch.logit(torch.exp(t)),
}
CLOSED_FORM = {
    "kl": lambda p, q: (p * torch.log(p / q)).sum(),
    "reverse-kl": lambda p, q: (q * torch.log(q / p)).sum(),
    "pearson": lambda p, q: ((p - q) ** 2 / q).sum(),
    "hellinger": lambda p, q: ((p.sqrt() - q.sqrt()) ** 2).sum(),
    "js": lambda p, q: (p * torch.log(2 * p / (p + q)) + q * torch.log(2 * q / (p + q))).sum(),   # 2 JSD
    "gan": lambda p, q: (p * torch.log(p / (p + q)) + q * torch.log(q / (p + q))).sum(),          # 2 JSD - log 4
}


@pytest.mark.parametrize("divergence", sorted(F_PRIME))
def test_fgan_bound_at_the_optimal_critic_equals_the_divergence(divergence):
    from gmgan.variants.fgan import DIVERGENCES

    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.tensor([0.25, 0.35, 0.3, 0.1], dtype=torch.float64)
    chosen = DIVERGENCES[divergence]
    optimal_t = F_PRIME[divergence](p / q)
    v = INVERSE_ACTIVATION[divergence](optimal_t)                  # D's output at the optimum
    torch.testing.assert_close(chosen.activation(v), optimal_t, rtol=1e-12, atol=1e-12)
    expected = CLOSED_FORM[divergence](p, q)
    # The loss path: E_p[g_f(v)] - E_q[f*(g_f(v))] with the stable composite, and with f* itself.
    bound = (p * chosen.activation(v)).sum() - (q * chosen.conjugate_of_activation(v)).sum()
    by_conjugate = (p * optimal_t).sum() - (q * chosen.conjugate(optimal_t)).sum()
    assert abs(float(bound - expected)) < 1e-12 and abs(float(by_conjugate - expected)) < 1e-12
    # Any other critic gives a lower bound (the variational inequality).
    worse = (p * chosen.activation(v + 0.3)).sum() - (q * chosen.conjugate_of_activation(v + 0.3)).sum()
    assert float(worse) < float(expected)


@pytest.mark.parametrize("divergence", sorted(F_PRIME))
def test_fgan_stable_composite_equals_conjugate_of_activation(divergence):
    from gmgan.variants.fgan import DIVERGENCES

    chosen = DIVERGENCES[divergence]
    v = torch.linspace(-4, 4, 33, dtype=torch.float64)
    torch.testing.assert_close(chosen.conjugate_of_activation(v), chosen.conjugate(chosen.activation(v)),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gan_loss", ["nonsaturating", "minimax"])
@pytest.mark.parametrize("divergence", sorted(F_PRIME))
def test_fgan_trains_each_divergence(tmp_path, divergence, gan_loss):
    trainer, losses = train_losses(tiny_config(tmp_path, variant="fgan", divergence=divergence, gan_loss=gan_loss),
                                   steps=2)
    assert all(math.isfinite(v) for v in losses), losses
    # The D loss is minus the bound: recompute it on the trainer's own D and a fresh batch.
    from gmgan.variants.fgan import variational_bound

    real, fake = trainer.next_real(), trainer.sample_fake(16)
    with torch.no_grad():
        d_loss = trainer.variant.discriminator_loss(trainer.D, real, fake)
        bound = variational_bound(divergence, trainer.D(real.x)[0], trainer.D(fake.x)[0])
    torch.testing.assert_close(d_loss, -bound)


def test_compare_rows_name_the_fgan_divergence():
    from gmgan.compare import row_settings

    assert row_settings("fgan+reverse-kl") == {"variant": "fgan", "divergence": "reverse-kl"}
    assert row_settings("fgan+kl+sn") == {"variant": "fgan", "divergence": "kl", "spectral_norm": True}


def test_fgan_gan_divergence_is_the_gan_loss(tmp_path):
    """With the gan divergence f-GAN's D loss is the GAN's softplus(-l_real) + softplus(l_fake)."""
    from gmgan.variants import GAN

    trainer = Trainer(tiny_config(tmp_path, variant="fgan", divergence="gan"))
    real, fake = trainer.next_real(), trainer.sample_fake(16)
    gan = GAN(trainer.config, trainer.dataset.num_classes)
    with torch.no_grad():
        torch.testing.assert_close(trainer.variant.discriminator_loss(trainer.D, real, fake),
                                   gan.discriminator_loss(trainer.D, real, fake))
        torch.testing.assert_close(trainer.variant.generator_loss(trainer.D, fake), gan.generator_loss(trainer.D, fake))
        # js differs from gan by constants only: 2 log 2 in D's loss, log 2 in G's.
        js = replace(trainer.config, divergence="js")
        trainer.variant.config = js
        torch.testing.assert_close(trainer.variant.discriminator_loss(trainer.D, real, fake),
                                   gan.discriminator_loss(trainer.D, real, fake) - 2 * math.log(2))
        torch.testing.assert_close(trainer.variant.generator_loss(trainer.D, fake),
                                   gan.generator_loss(trainer.D, fake) - math.log(2))


# ---- InfoGAN ---------------------------------------------------------------------------------
def test_infogan_latent_holds_noise_one_hot_code_and_continuous_codes(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="infogan", z_dim=3, continuous_codes=2))
    assert trainer.config.categories == 25                       # grid25: one class per mode
    assert trainer.D.head.out_features == 1 + 25 + 2 and trainer.G.prior.dim == 3 + 25 + 2
    fake = trainer.sample_fake(500)
    one_hot = fake.latent[:, 3:28]
    assert torch.equal(one_hot.sum(1), torch.ones(500)) and torch.equal(one_hot.argmax(1), fake.component)
    assert fake.latent[:, 28:].abs().max() <= 1 and fake.latent[:, 28:].std() > 0.4      # U[-1, 1]
    assert torch.bincount(fake.component, minlength=25).min() > 0
    z = trainer.G.prior.sample_component(7, 5)
    assert torch.equal(z[:, 3:28].argmax(1), torch.full((5,), 7))


def test_infogan_information_loss_is_cross_entropy_plus_half_squared_error(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="infogan", z_dim=2, continuous_codes=2, info_weight=0.5))
    variant = trainer.variant
    fake = trainer.sample_fake(8)
    with torch.no_grad():
        output, _ = trainer.D(fake.x)
        logit, class_logits, means = output[:, :1], output[:, 1:26], output[:, 26:]
        category, continuous = fake.latent[:, 2:27].argmax(1), fake.latent[:, 27:]
        expected_info = sum(-torch.log_softmax(class_logits[i], 0)[category[i]] +
                            0.5 * ((continuous[i] - means[i]) ** 2).sum() for i in range(8)) / 8
        info = variant.information_loss(class_logits, means, fake)
        torch.testing.assert_close(info, expected_info)
        g_loss = variant.generator_loss(trainer.D, fake)
        torch.testing.assert_close(g_loss, torch.nn.functional.softplus(-logit).mean() + 0.5 * expected_info)


def test_infogan_mutual_information_term_trains_q_and_g(tmp_path):
    """The information loss on fixed fakes falls as D's optimizer trains Q and G's trains G."""
    trainer = Trainer(tiny_config(tmp_path, variant="infogan", steps=100, z_dim=2, categories=4, continuous_codes=1))
    generator = torch.Generator().manual_seed(1)

    def information():
        with torch.no_grad():
            fake = trainer.sample_fake(500, generator)
            _, class_logits, means = trainer.variant._outputs(trainer.D, fake)
            return float(trainer.variant.information_loss(class_logits, means, fake))

    before = information()
    trainer.run(evaluate_end=False)
    assert information() < 0.8 * before


def test_infogan_refuses_feature_matching(tmp_path):
    from gmgan import ConfigError

    with pytest.raises(ConfigError, match="feature matching"):
        Trainer(tiny_config(tmp_path, variant="infogan", feature_matching=True))
