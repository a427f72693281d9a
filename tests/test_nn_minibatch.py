"""gmkernels.nn.MinibatchDiscrimination against a transcription of improved-gan's MinibatchLayer,
on every backend: values and gradients, include_self, bias, shapes, flattening, initialisation."""
import math

import pytest
import torch

import gmkernels
from gmkernels.nn import MinibatchDiscrimination
from gmkernels.ops import minibatch_discrimination as op

from conftest import require_backend


def improved_gan_minibatch_layer(x, W, b):
    """openai/improved-gan mnist_svhn_cifar10/nn.py, MinibatchLayer.get_output_for (init=False),
    line by line in torch; W (num_inputs, num_kernels, dim_per_kernel) is its weight-normalised
    theta, here our T viewed in three dimensions."""
    x = x.flatten(1)
    activation = torch.tensordot(x, W, dims=([1], [0]))
    abs_dif = ((activation.unsqueeze(3) - activation.permute(1, 2, 0).unsqueeze(0)).abs().sum(2)
               + 1e6 * torch.eye(x.shape[0], dtype=x.dtype, device=x.device).unsqueeze(1))
    f = torch.exp(-abs_dif).sum(2)
    f = f + b.unsqueeze(0)
    return torch.cat([x, f], 1)


def make_layer(in_features=12, num_kernels=9, kernel_dim=5, device="cpu", seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = MinibatchDiscrimination(in_features, num_kernels, kernel_dim, **kwargs).double()
    with torch.no_grad():
        # Larger than the 0.05 init so that exp(-distance) is far from both 0 and 1.
        layer.T.mul_(4.0)
        if layer.bias is not None:
            layer.bias.uniform_(-2, 0)
    return layer.to(device)


@pytest.mark.parametrize("n", [1, 2, 17, 40])
def test_output_and_gradients_match_improved_gan_layer(backend, n):
    require_backend(op)
    layer = make_layer(device=backend)
    x = torch.randn(n, 12, dtype=torch.float64, device=backend, requires_grad=True)
    out = layer(x)
    W = layer.T.view(12, 9, 5)
    expected = improved_gan_minibatch_layer(x, W, layer.bias)
    assert out.shape == (n, 12 + 9) == (n, layer.out_features)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.T, layer.bias), grad_out)
    want = torch.autograd.grad(expected, (x, layer.T, layer.bias), grad_out)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-10)


def test_include_self_adds_the_self_term_exp0(backend):
    require_backend(op)
    excluded = make_layer(device=backend, seed=3)
    included = make_layer(device=backend, seed=3, include_self=True)
    x = torch.randn(6, 12, dtype=torch.float64, device=backend)
    # improved-gan's formula without the 1e6 diagonal trick is the self-including sum.
    W, b = included.T.view(12, 9, 5), included.bias
    activation = torch.tensordot(x, W, dims=([1], [0]))
    with_self = torch.exp(-(activation[:, None] - activation[None]).abs().sum(-1)).sum(1) + b
    assert torch.allclose(included(x)[:, 12:], with_self, rtol=1e-12, atol=1e-12)
    assert torch.allclose(included(x)[:, 12:] - excluded(x)[:, 12:], torch.ones(6, 9, dtype=torch.float64,
                                                                                 device=backend))


def test_without_bias_gives_the_plain_op():
    layer = make_layer(bias=False)
    x = torch.randn(5, 12, dtype=torch.float64)
    assert layer.bias is None
    M = (x @ layer.T).view(5, 9, 5)
    assert torch.equal(layer(x), torch.cat([x, gmkernels.minibatch_discrimination(M)], 1))


def test_input_passes_through_first_and_extra_dimensions_are_flattened():
    layer = make_layer(in_features=48)
    images = torch.randn(7, 3, 4, 4, dtype=torch.float64)
    out = layer(images)
    assert out.shape == (7, 48 + 9)
    assert torch.equal(out[:, :48], images.flatten(1))
    assert torch.equal(out, layer(images.flatten(1)))


def test_initialisation_follows_improved_gan():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(200, 100, 5)
    T = layer.T.detach().double()
    assert T.shape == (200, 500) and layer.bias.shape == (100,)
    assert torch.equal(layer.bias.detach(), torch.full((100,), -1.0))
    count = T.numel()
    # Mean within 5 standard errors of 0; sample std within 5 standard errors of 0.05
    # (the std of a Gaussian sample std is sigma / sqrt(2 count)).
    assert abs(T.mean().item()) <= 5 * 0.05 / math.sqrt(count)
    assert abs(T.std().item() - 0.05) <= 5 * 0.05 / math.sqrt(2 * count)
    assert MinibatchDiscrimination(8, init_std=1.0).T.std().item() > 0.5   # torchgan's N(0, 1)


def test_defaults_and_repr():
    layer = MinibatchDiscrimination(16)
    assert (layer.num_kernels, layer.kernel_dim, layer.include_self) == (100, 5, False)
    assert layer.out_features == 116
    assert "include_self=False" in repr(layer)


def test_single_sample_sees_no_neighbour():
    layer = make_layer()
    out = layer(torch.randn(1, 12, dtype=torch.float64))
    assert torch.equal(out[0, 12:], layer.bias.detach())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_kernels"):
        MinibatchDiscrimination(8, num_kernels=0)
    layer = MinibatchDiscrimination(8, 4, 3)
    with pytest.raises(ValueError, match="8 features per sample, got 6"):
        layer(torch.randn(5, 6))
    with pytest.raises(ValueError, match=r"x must be \(N, 8\)"):
        layer(torch.randn(8))
