"""Checkpoints: tensors in safetensors, everything else in JSON. Nothing is ever unpickled.

A checkpoint is ``checkpoints/step_XXXXXXX.safetensors`` + ``.json`` (the JSON is written last, so
a JSON file marks a complete checkpoint). Tensors: model state dicts (``G.*``, ``D.*``), optimizer
state tensors (``optim.G.<param index>.<key>``), RNG states (a torch generator state is a uint8
tensor) and the data order. JSON: step, optimizer hyper-parameters, data position, config.
"""
from __future__ import annotations

import glob
import json
import os

import torch
from safetensors.torch import load_file, save_file

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
