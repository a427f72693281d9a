"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint is ``checkpoints/step_XXXXXXX.safetensors`` + ``.json`` (the JSON is written last, so
a JSON file marks a complete checkpoint). Tensors: model state dicts (``G.*``, ``D.*``), optimizer
state tensors (``optim.G.<param index>.<key>``), RNG states (a torch generator state is a uint8
tensor) and the data order. JSON: step, optimizer hyper-parameters, data position, config.
:func:`save_trainer` and :func:`restore_trainer` write and read a gmgan.trainer.Trainer's state.
"""
from __future__ import annotations

import glob
import json
import os

import torch
from safetensors.torch import load_file, save_file

import gmkernels

from .config import RESUMABLE, ConfigError, upgrade_saved_config
from .distributed import check_replicas, gather_rows

FORMAT = 1


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer):
    """(tensors, json) for an optimizer's state_dict."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                plain[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict, saved: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in saved["plain"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [dict(group, betas=tuple(group["betas"])) if "betas" in group else group
              for group in saved["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save(directory: str, step: int, tensors: dict, info: dict, keep: int = 2) -> str:
    """Write step_<step>.{safetensors,json} atomically and keep the newest ``keep`` checkpoints."""
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"step_{step:07d}")
    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in tensors.items()}
    save_file(tensors, stem + ".safetensors.tmp")
    os.replace(stem + ".safetensors.tmp", stem + ".safetensors")
    with open(stem + ".json.tmp", "w") as handle:
        json.dump(dict(info, step=step, format=FORMAT), handle, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    for old in sorted(glob.glob(os.path.join(directory, "step_*.json")))[:-keep]:
        os.remove(old)
        if os.path.exists(old[:-5] + ".safetensors"):
            os.remove(old[:-5] + ".safetensors")
    return stem


def latest(directory: str) -> str | None:
    """Stem of the newest complete checkpoint in directory, or None."""
    found = sorted(glob.glob(os.path.join(directory, "step_*.json")))
    return found[-1][:-5] if found else None


def load(stem: str):
    """(tensors, info) of a checkpoint stem."""
    with open(stem + ".json") as handle:
        info = json.load(handle)
    if info.get("format") != FORMAT:
        raise ValueError(f"{stem}.json has checkpoint format {info.get('format')}, expected {FORMAT}")
    return load_file(stem + ".safetensors"), info


def prefixed(prefix: str, tensors: dict) -> dict:
    """The entries under ``prefix.`` with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def save_trainer(trainer) -> None:
    """A checkpoint of the trainer at its step. Rank 0 writes; every rank's noise generator state
    is gathered first, and the replicas are checked to be identical."""
    world = trainer.world
    check_replicas(trainer.G, world)
    check_replicas(trainer.D, world)
    noise_states = gather_rows(trainer.noise_rng.get_state().to(trainer.device)[None], world).cpu()
    if not world.is_main:
        return
    tensors = {f"G.{k}": v for k, v in trainer.G.state_dict().items()}
    tensors.update({f"D.{k}": v for k, v in trainer.D.state_dict().items()})
    optim_g, plain_g = optimizer_tensors("optim.G", trainer.opt_g)
    optim_d, plain_d = optimizer_tensors("optim.D", trainer.opt_d)
    tensors.update(optim_g)
    tensors.update(optim_d)
    tensors["rng.data"] = trainer.data_rng.get_state()
    for rank in range(world.size):
        tensors[f"rng.noise.{rank}"] = noise_states[rank]
    if trainer.order is not None:
        tensors["data.order"] = trainer.order
    info = dict(position=trainer.position, world_size=world.size, optim_G=plain_g, optim_D=plain_d,
                config=trainer.config.to_dict(), torch=torch.__version__,
                backend=trainer.config.backend or gmkernels.get_backend())
    save(trainer.checkpoint_dir, trainer.step, tensors, info)


def restore_trainer(trainer) -> None:
    """Load the newest checkpoint of trainer.checkpoint_dir into the trainer, after checking that
    it was written by a run of the same config and number of processes."""
    stem = latest(trainer.checkpoint_dir)
    if stem is None:
        raise ConfigError(f"no checkpoint to resume in {trainer.checkpoint_dir}")
    tensors, info = load(stem)
    world = trainer.world
    if info["world_size"] != world.size:
        raise ConfigError(f"the checkpoint was written by {info['world_size']} processes; resume it with "
                          f"the same number (got {world.size}) to continue the same run")
    for name, value in upgrade_saved_config(info["config"]).items():
        if name not in RESUMABLE and value != getattr(trainer.config, name):
            raise ConfigError(f"checkpoint has {name}={value!r}, config says {getattr(trainer.config, name)!r}")
    trainer.G.load_state_dict(prefixed("G", tensors))
    trainer.D.load_state_dict(prefixed("D", tensors))
    load_optimizer("optim.G", trainer.opt_g, tensors, info["optim_G"])
    load_optimizer("optim.D", trainer.opt_d, tensors, info["optim_D"])
    trainer.data_rng.set_state(tensors["rng.data"])
    trainer.noise_rng.set_state(tensors[f"rng.noise.{world.rank}"].to(trainer.noise_rng.get_state().device))
    trainer.order = tensors.get("data.order")
    trainer.position = info["position"]
    trainer.step = info["step"]
