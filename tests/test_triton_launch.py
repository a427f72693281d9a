"""How the Triton launchers address memory and pick devices: the grid
split of mixture_sample's full-scale backward (exercised by lowering its limit), non-contiguous
inputs, and launches on the tensors' own CUDA device. Offsets past 2^31 elements need tensors too
large for CI; the kernels compute them in int64 (checked here on strided views that the int64
row and column offsets address)."""
import pytest
import torch

import gmkernels
from gmkernels.ops import _registry
from gmkernels.ops.mixture_sample import mixture_sample_with_seed, draw_seed

pytestmark = pytest.mark.skipif("triton" not in gmkernels.backends(),
                                reason="triton is not usable here")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sample_gradients(mu, scale, component, seed):
    z = mixture_sample_with_seed(mu, scale, component, seed)
    weights = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    return torch.autograd.grad((z * weights.to(z.device)).sum(), (mu, scale))


def test_full_scale_backward_splits_its_tile_pairs_over_two_grid_axes(monkeypatch):
    """K = 70 makes 3 x 3 row tiles; a limit of 4 programs per axis spreads the 9 pairs over
    three grid rows (as K > 8160 does with the real limit of 65535)."""
    from gmkernels.triton import mixture_sample as triton_sample
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 70, dtype=torch.float64, generator=generator).to(DEVICE).requires_grad_()
    scale = torch.randn(2, 70, 70, dtype=torch.float64, generator=generator).to(DEVICE)
    scale.requires_grad_()
    component = torch.tensor([0, 1, 1, 0, 1], device=DEVICE)
    seed = draw_seed(generator)
    with gmkernels.use_backend("reference"):
        want = _sample_gradients(mu, scale, component, seed)
    monkeypatch.setattr(triton_sample, "MAX_GRID_Y", 4)
    with gmkernels.use_backend("triton"):
        got = _sample_gradients(mu, scale, component, seed)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-5)


def test_strided_views_give_the_bits_of_contiguous_copies():
    """Every launcher reads non-contiguous inputs (transposed, sliced) exactly as their
    contiguous copies: same results, bit for bit."""
    generator = torch.Generator().manual_seed(1)

    def strided(*shape):
        full = torch.randn(*shape[:-2], shape[-1], 2 * shape[-2], generator=generator,
                           dtype=torch.float64)
        return full.transpose(-1, -2)[..., ::2, :].to(DEVICE)   # non-contiguous

    x, means = strided(9, 3), strided(5, 3)
    var, log_weights = torch.rand(5, 3, dtype=torch.float64, generator=generator) + 0.5, None
    probs = torch.softmax(strided(7, 4), 1)
    probs_strided = probs.t().contiguous().t()
    M = strided(6, 4, 3)
    calls = [
        lambda x, means: gmkernels.mixture_log_likelihood(x, means, var.to(DEVICE), log_weights),
        lambda probs: gmkernels.class_pairwise_kl(probs),
        lambda M: gmkernels.minibatch_discrimination(M),
    ]
    with gmkernels.use_backend("triton"):
        for call, inputs in zip(calls, [(x, means), (probs_strided,), (M,)]):
            assert not all(t.is_contiguous() for t in inputs)
            got = call(*inputs)
            want = call(*(t.contiguous() for t in inputs))
            assert torch.equal(got, want)


def test_launchers_run_on_the_device_of_their_tensors(monkeypatch):
    """A tensor on cuda:1 is launched with cuda:1 current (Triton launches on the current
    device); CPU tensors (the interpreter) enter no CUDA device."""
    entered = []

    class RecordingDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    class FakeCudaTensor(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 1)

    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    launch = _registry.on_tensor_device(lambda tensor, number: number + 1)
    assert launch(torch.zeros(1), 1) == 2 and entered == []
    cuda_like = torch.zeros(1).as_subclass(FakeCudaTensor)
    assert launch(cuda_like, 2) == 3 and entered == [torch.device("cuda", 1)]
