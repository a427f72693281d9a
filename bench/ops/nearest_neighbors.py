"""nearest_neighbors, timed as what it is for: precision, recall, density and coverage of two
feature sets (gmkernels.metrics.precision_recall, three tiled passes of the op) against what a
user writes with PyTorch, the blocked ``torch.cdist`` + ``topk`` of the published code run in
row blocks so that one block of distances fits in memory, eager and torch.compile'd; peak memory
of each (the op holds no N x N matrix, the blocked version one block of it)."""
from __future__ import annotations

import torch

import gmkernels
from gmkernels.metrics import precision_recall
from gmkernels.ops import nearest_neighbors as op

from bench.common import Case, CompiledPeers, Contender, bench_devices, kernel_backends

K = 3
# (N per set, D): D = 64 and D = 2048 (Inception features), N up to 50,000 in full runs.
SIZES = {
    "full": [(1000, 64), (10000, 64), (50000, 64), (1000, 2048), (10000, 2048), (50000, 2048)],
    "quick": [(2000, 64), (1000, 2048)],
    "smoke": [(128, 16)],
}
BLOCK_ELEMENTS = 1 << 26   # one block of distances: 64 Mi floats (256 MB in float32)


def _plain(real, fake, k, radii_block, cross_block):
    """The published algorithm in row blocks: radii as the (k+1)-th smallest distance (the self
    distance 0 among them), then one pass over the real x fake blocks for all four numbers."""
    def radii(x):
        rows = max(1, BLOCK_ELEMENTS // len(x))
        return torch.cat([radii_block(x[s:s + rows], x, k) for s in range(0, len(x), rows)])

    real_radii, fake_radii = radii(real), radii(fake)
    rows = max(1, BLOCK_ELEMENTS // len(fake))
    in_real = torch.zeros(len(fake), dtype=torch.int64, device=real.device)
    recall_hits, covered = [], []
    for s in range(0, len(real), rows):
        counts, hit, cover = cross_block(real[s:s + rows], fake, real_radii[s:s + rows], fake_radii)
        in_real += counts
        recall_hits.append(hit)
        covered.append(cover)
    return dict(precision=(in_real > 0).double().mean(), recall=torch.cat(recall_hits).double().mean(),
                density=in_real.double().sum() / (k * len(fake)), coverage=torch.cat(covered).double().mean())


def _radii_block(rows, x, k):
    return torch.cdist(rows, x).topk(k + 1, dim=1, largest=False).values[:, k]


def _cross_block(real_rows, fake, real_radii_rows, fake_radii):
    distance = torch.cdist(real_rows, fake)
    return ((distance <= real_radii_rows[:, None]).sum(0), (distance <= fake_radii[None]).any(1),
            distance.min(1).values <= real_radii_rows)


def cases(kind: str, backends: tuple) -> list:
    result = []
    compiled_radii = torch.compile(_radii_block, dynamic=False)
    compiled_cross = torch.compile(_cross_block, dynamic=False)
    for device in bench_devices():
        names = kernel_backends(backends, device, op.IMPLEMENTED)
        for n, d in SIZES[kind]:
            gen = torch.Generator().manual_seed(0)
            real = torch.randn(n, d, generator=gen).to(device)
            fake = (torch.randn(n, d, generator=gen) * 1.1 + 0.1).to(device)

            def on_backend(name, real=real, fake=fake):
                def run():
                    with gmkernels.use_backend(name):
                        return precision_recall(real, fake, k=K)
                return run

            contenders = [Contender(f"gmkernels[{name}]", on_backend(name)) for name in names]
            contenders += [
                Contender("plain eager", lambda real=real, fake=fake: _plain(real, fake, K, _radii_block, _cross_block)),
                Contender("plain compile", lambda real=real, fake=fake: _plain(real, fake, K, compiled_radii, compiled_cross)),
            ]
            result.append(Case(
                op="nearest_neighbors", size=f"precision/recall N={n} D={d} k={K}", mode="forward",
                contenders=contenders,
                flops=3 * 2.0 * n * n * d,     # three passes over N x N pairs of D-dim dot products
                baseline="plain eager", peer="plain compile",
                targets={f"gmkernels[{name}]": 1.0 for name in names},
                peer_targets={f"gmkernels[{name}]": 1.0 for name in names},
                device=device.type,
            ))
    return result


# The sweep: N per set x D. The user's blocked version holds one block of distances (256 MB), so
# no size is over the memory budget; 50,000 x 2048 (about 30 TFLOP for the three passes) is left to
# the full benchmark above, which fits its time only there.
SWEEP_SIZES = {
    "full": [(n, d) for d in (64, 2048) for n in (1000, 4000, 10000)],
    "quick": [(1000, 64), (1000, 2048)],
    "smoke": [(64, 8)],
}


def _sweep_case(n, d, names, device, compiled, seed):
    def build():
        gen = torch.Generator().manual_seed(seed)
        real = torch.randn(n, d, generator=gen).to(device)
        fake = (torch.randn(n, d, generator=gen) * 1.1 + 0.1).to(device)

        def on_backend(name):
            def run():
                with gmkernels.use_backend(name):
                    return precision_recall(real, fake, k=K)
            return run

        radii_compiled, cross_compiled = compiled(_radii_block, "radii"), compiled(_cross_block, "cross")
        return [Contender(f"gmkernels[{name}]", on_backend(name)) for name in names] + [
            Contender("plain eager", lambda: _plain(real, fake, K, _radii_block, _cross_block)),
            Contender("plain compile", lambda: _plain(real, fake, K, radii_compiled, cross_compiled))]

    return Case(
        op="nearest_neighbors", size=f"precision/recall N={n} D={d} k={K}", mode="forward", contenders=[],
        build=build, flops=3 * 2.0 * n * n * d, baseline="plain eager", peer="plain compile",
        peers=("plain eager", "plain compile"), work=float(n * n * d), work_label="N^2*D", device=device.type)


def sweep_cases(kind: str, backends: tuple) -> list:
    device = bench_devices()[-1]
    names = kernel_backends(backends, device, op.IMPLEMENTED)
    compiled = CompiledPeers()
    return [_sweep_case(n, d, names, device, compiled, seed) for seed, (n, d) in enumerate(SWEEP_SIZES[kind], 1)]
