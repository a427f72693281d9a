"""Data-parallel training under torchrun: gloo on CPU, nccl on GPU.

Each rank draws its slice of the global batch; after every backward the gradients are averaged
over ranks with one all_reduce per network (what DistributedDataParallel does, done by hand
because a GAN step runs D several times per backward and WGAN-GP differentiates through D's
gradient, which DDP's reducer does not support). Initial weights are equal on every rank because
every rank seeds the same; rank 0 broadcasts them anyway so that a stray difference cannot drift.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device_kind: str) -> World:
    """The torchrun world from its environment (a single process when WORLD_SIZE is unset)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_world(world: World, wait_for_peers: bool = True) -> None:
    """Tear the process group down. On a normal exit every rank first waits for the others: a
    gloo rank that destroys its group and exits while rank 0 is still writing plots was seen to
    abort ("terminate called without an active exception"). After an interrupt the peers may be
    gone, so no barrier then."""
    if world.active and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def leave_rank(code: int) -> None:
    """End a torchrun rank: tear its process group down (after a barrier when ``code`` is 0, so
    no rank leaves while a peer still communicates), flush, and exit at once with ``code``.

    Exiting through ``os._exit`` skips the interpreter's teardown. A rank that had finished its
    work, barrier and destroy_process_group included, was seen to abort there ("terminate called
    without an active exception", SIGABRT) and torchrun then reports the whole job as failed. By
    this point every file is written and closed, and nothing else is left to run."""
    if dist.is_initialized():
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def broadcast_parameters(module: nn.Module, world: World) -> None:
    if world.active:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def average_gradients(module: nn.Module, world: World) -> None:
    """grad <- mean over ranks, as one flat all_reduce."""
    if not world.active:
        return
    parameters = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for parameter, grad in zip(parameters, grads):
        count = grad.numel()
        parameter.grad = flat[offset:offset + count].view_as(grad).clone()
        offset += count


def check_replicas(module: nn.Module, world: World) -> None:
    """Raise if the ranks' copies of module differ (they must stay bit-identical: every rank applies
    the same averaged gradients)."""
    if not world.active:
        return
    checksum = torch.stack([t.detach().double().sum() for t in module.state_dict().values()
                            if t.is_floating_point()]).sum().reshape(1)
    everyone = gather_rows(checksum, world)
    if not bool((everyone == everyone[0]).all()):
        raise RuntimeError(f"replicas diverged across ranks: parameter checksums {everyone.tolist()}")


def gather_rows(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0 (rank order)."""
    if not world.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    if not world.active:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world.size
