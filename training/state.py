"""Training-state checkpoints for ``--resume``: safetensors tensors + JSON metadata, never pickle.

One file ``checkpoints/state-<step>.safetensors`` holds the recipe's full state_dict (student,
EMA teacher, heads, mask tokens) under ``model.*``, the optimizer's per-parameter tensors under
``optim.<param index>.<name>`` and, in the safetensors metadata, a JSON document with the step,
the optimizer's hyper-parameters, counters and the config. Files are written to a temporary name,
fsynced and renamed, so a run killed at any moment leaves only whole checkpoints; the newest
``keep`` are kept, and loading falls back to the previous one if the newest is unreadable.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ssl3d_ros.atomic import atomic_write
from ssl3d_ros.checkpoint import TRAINING_STATE_KEY as META_KEY  # a model loader recognises a state by it

log = logging.getLogger(__name__)

STATE_RE = re.compile(r"^state-(\d{8,})\.safetensors$")
FORMAT = 1


@dataclass
class TrainingState:
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer state_dict
    extra: dict[str, Any]  # JSON-serialisable: counters, config, ...
    path: Path | None = None


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


class StateWriteError(OSError):
    """A training state could not be written (disk full, read-only, ...); earlier states are intact."""


def _write_error(path: Path, exc: BaseException) -> StateWriteError:
    code = getattr(exc, "errno", None)
    if code is None:  # safetensors reports I/O failures as "... (os error 28)"
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else errno.EIO
    return StateWriteError(code, f"{path}: could not write training state ({os.strerror(code)}); "
                                 f"earlier states in {path.parent} are unchanged")


def atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file atomically; raises StateWriteError (an OSError naming the file and the
    reason) when it cannot be written, leaving no temporary file and earlier states intact."""
    def write(tmp: Path) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:
            raise _write_error(path, exc) from exc

    try:
        atomic_write(path, write)
    except StateWriteError:
        raise
    except OSError as exc:  # mkstemp, fsync or rename on a full or failing disk
        raise _write_error(path, exc) from exc


def save_state(directory: str | os.PathLike, step: int, model: dict[str, torch.Tensor], optimizer: dict[str, Any],
               extra: dict[str, Any], keep: int = 2) -> Path:
    directory = Path(directory)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.items()}
    optim_tensors, optim_meta = flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    meta = {"format": FORMAT, "step": step, "optimizer": optim_meta, "extra": extra}
    path = directory / f"state-{step:08d}.safetensors"
    atomic_save(tensors, {META_KEY: json.dumps(meta)}, path)
    for old in list_states(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_states(directory: str | os.PathLike) -> list[Path]:
    """State files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STATE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_state(path: str | os.PathLike) -> TrainingState:
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[META_KEY])
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown training-state format {meta.get('format')!r}")
        model, optim = {}, {}
        for key in f.keys():
            if key.startswith("model."):
                model[key[len("model."):]] = f.get_tensor(key)
            elif key.startswith("optim."):
                optim[key] = f.get_tensor(key)
    return TrainingState(meta["step"], model, unflatten_optimizer(optim, meta["optimizer"]), meta["extra"], path)


def load_latest(directory: str | os.PathLike) -> TrainingState | None:
    """The newest readable state in ``directory`` (an unreadable newest one is reported and skipped)."""
    for path in reversed(list_states(directory)):
        try:
            return load_state(path)
        except Exception as exc:  # noqa: BLE001 - any damage means: try the previous one
            log.warning("cannot load training state %s (%s); trying the previous one", path, exc)
    return None


__all__ = ["TrainingState", "StateWriteError", "save_state", "load_state", "load_latest", "list_states", "atomic_save",
           "flatten_optimizer", "unflatten_optimizer"]
