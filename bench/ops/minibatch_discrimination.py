"""minibatch_discrimination: the fused op vs the literal N x N x B x C reference, eager and
torch.compile, forward and forward + backward; a large batch that only O(N B C) memory can hold;
and a whole discriminator step with the layer (samples/s)."""
from __future__ import annotations

import torch
from torch import nn

import gmkernels
from gmkernels.nn import MinibatchDiscrimination
from gmkernels.ops import minibatch_discrimination as op
from gmkernels.reference.minibatch_discrimination import minibatch_discrimination as reference

from bench.common import Case, CompiledPeers, Contender, bench_devices, fits_memory, kernel_backends, too_big

# (N, B, C). N=1024 B=100 C=5 is the target: >= 10x eager and faster than torch.compile.
COMPARED_SIZES = {"full": [(256, 50, 5), (1024, 100, 5)], "quick": [(256, 50, 5)], "smoke": [(64, 10, 5)]}
# The reference would hold N^2 B C floats (16.8 GB at N=4096, B=50, C=5): fused kernels only,
# with their peak memory in the report.
LARGE_SIZES = {"full": [(4096, 50, 5)], "quick": [(1024, 20, 5)], "smoke": [(256, 8, 5)]}
D_STEP_BATCH = {"full": 1024, "quick": 128, "smoke": 16}


def _timed_call(fn, M, grad_out, backward: bool):
    """fn(M), and with backward its backward from grad_out (M needs no grad for a forward alone)."""
    def run():
        out = fn(M)
        if backward:
            out.backward(grad_out)
        return out
    return run


def _on_backend(name):
    def call(m):
        with gmkernels.use_backend(name):
            return gmkernels.minibatch_discrimination(m)
    return call


def _op_contenders(M, grad_out, backward, names, with_reference):
    def step(fn):
        return _timed_call(fn, M, grad_out, backward)

    contenders = [Contender(f"gmkernels[{name}]", step(_on_backend(name))) for name in names]
    if with_reference:
        compiled = torch.compile(reference)
        contenders += [Contender("reference eager", step(reference)),
                     Contender("reference compile", step(compiled))]
    return contenders


def make_discriminator(in_features: int, device: torch.device) -> nn.Module:
    """A small MLP discriminator with the layer before its last linear map (improved-gan places
    it there)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(in_features, 512), nn.LeakyReLU(0.2),
        nn.Linear(512, 256), nn.LeakyReLU(0.2),
        MinibatchDiscrimination(256, 100, 5),
        nn.Linear(256 + 100, 1),
    ).to(device)


def _d_step_contenders(batch, names, device):
    in_features = 784
    real = torch.rand(batch, in_features, device=device) * 2 - 1
    fake = torch.rand(batch, in_features, device=device) * 2 - 1
    ones = torch.ones(batch, 1, device=device)
    zeros = torch.zeros(batch, 1, device=device)
    discriminator = make_discriminator(in_features, device)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.functional.binary_cross_entropy_with_logits

    def d_loss():
        # Real and fake minibatches go through D separately, as in improved-gan.
        return bce(discriminator(real), ones) + bce(discriminator(fake), zeros)

    compiled_loss = torch.compile(d_loss)

    def step(loss_fn, backend_name):
        def run():
            with gmkernels.use_backend(backend_name):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn()
                loss.backward()
                optimizer.step()
            return loss
        return run

    contenders = [Contender(f"gmkernels[{name}]", step(d_loss, name)) for name in names]
    return contenders + [Contender("reference eager", step(d_loss, "reference")),
                       Contender("reference compile", step(compiled_loss, "reference"))]


def cases(kind: str, backends: tuple) -> list:
    device = bench_devices()[-1]   # the GPU where there is one: the quadratic op is what it is for
    names = kernel_backends(backends, device, op.IMPLEMENTED)
    result = []
    for N, B, C in COMPARED_SIZES[kind]:
        M = torch.randn(N, B, C, device=device, requires_grad=True)
        grad_out = torch.randn(N, B, device=device)
        for backward in (False, True):
            result.append(Case(
                op="minibatch_discrimination", size=f"N={N} B={B} C={C}",
                mode="forward+backward" if backward else "forward",
                contenders=_op_contenders(M, grad_out, backward, names, with_reference=True),
                # M read once, the output written once: what any implementation must move.
                bytes_moved=None if backward else 4 * (N * B * C + N * B),
                targets={f"gmkernels[{name}]": 10.0 for name in names} if backward else {},
                peer="reference compile",
                peer_targets={f"gmkernels[{name}]": 1.0 for name in names} if backward else {},
            ))
    for N, B, C in LARGE_SIZES[kind]:
        M = torch.randn(N, B, C, device=device, requires_grad=True)
        grad_out = torch.randn(N, B, device=device)
        result.append(Case(
            op="minibatch_discrimination", size=f"N={N} B={B} C={C}", mode="forward+backward",
            contenders=_op_contenders(M, grad_out, True, names, with_reference=False),
            baseline=f"gmkernels[{names[0]}]" if names else "reference eager",
            note=f"reference would hold N^2 B C floats ({4 * N * N * B * C / 1e9:.1f} GB): not run",
        ))
    batch = D_STEP_BATCH[kind]
    result.append(Case(
        op="minibatch_discrimination", size=f"D step N={batch} 784-512-256-MBD(100x5)-1",
        mode="train step", contenders=_d_step_contenders(batch, names, device),
        items=2 * batch,   # a real and a fake minibatch per step
        peer="reference compile",
    ))
    return result


# --- The size sweep (`run.py --sweep`) ---------------------------------------------------------
# Peers: the naive form a user writes (improved-gan's: the N x N x B x C difference, its L1 norm
# over C, exp, summed over the batch), eager and under torch.compile. The reference is not run
# (the naive form is its twin).
# (N, B, C): N in {16, 64, 256, 1024, 4096}, B*C from 16 to 2048 (the N=1024 B=100 C=5
# included).
SWEEP_SIZES = {
    "full": [(16, 4, 4), (16, 256, 8), (64, 4, 4), (64, 50, 5), (64, 256, 8), (256, 4, 4), (256, 50, 5),
             (256, 256, 8), (1024, 4, 4), (1024, 100, 5), (1024, 256, 8), (4096, 4, 4), (4096, 50, 5),
             (4096, 256, 8)],
    "quick": [(64, 50, 5), (256, 50, 5)],
    "smoke": [(16, 4, 3)],
}


def naive_minibatch(M):
    """sum over j != i of exp(-||M_ib - M_jb||_1), through the N x N x B x C difference."""
    l1 = (M[:, None] - M[None]).abs().sum(3)
    return torch.exp(-l1).sum(1) - 1   # the j = i term is exp(0) = 1


def _sweep_case(N, B, C, backward, names, device, compiled, seed):
    # The difference and its absolute value (and their gradients in a backward).
    naive_bytes = 4 * N * N * B * C * (4 if backward else 2)
    peers, skipped = [], []
    for name in ("naive eager", "naive compile"):
        if fits_memory(naive_bytes):
            peers.append(name)
        else:
            skipped.append(too_big(name, naive_bytes))
    mode = "forward+backward" if backward else "forward"

    def build():
        gen = torch.Generator().manual_seed(seed)
        M = torch.randn(N, B, C, generator=gen).to(device).requires_grad_(backward)
        grad_out = torch.randn(N, B, generator=gen).to(device)

        def step(fn):
            return _timed_call(fn, M, grad_out, backward)   # M requires grad only with backward

        out = [Contender(f"gmkernels[{name}]", step(_on_backend(name))) for name in names]
        if "naive eager" in peers:
            out.append(Contender("naive eager", step(naive_minibatch)))
        if "naive compile" in peers:
            out.append(Contender("naive compile", step(compiled(naive_minibatch, mode))))
        return out

    return Case(
        op="minibatch_discrimination", size=f"N={N} B={B} C={C}", mode=mode, contenders=[], build=build,
        # M read once and the output written once (forward); a backward reads the upstream
        # gradient and M again and writes M's gradient.
        bytes_moved=4.0 * (N * B * C + N * B) * (2 if backward else 1),
        baseline="naive eager", peer="naive compile", peers=tuple(peers), skipped=skipped,
        work=float(N * N * B * C), work_label="N^2*B*C", device=device.type)


def sweep_cases(kind: str, backends: tuple) -> list:
    device = bench_devices()[-1]
    names = kernel_backends(backends, device, op.IMPLEMENTED)
    compiled = CompiledPeers()
    result, seed = [], 0
    for N, B, C in SWEEP_SIZES[kind]:
        for backward in (False, True):
            seed += 1
            result.append(_sweep_case(N, B, C, backward, names, device, compiled, seed))
    return result
