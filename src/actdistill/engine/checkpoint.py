"""Checkpoints: safetensors weights + resumable training state, written atomically.

Layout inside a run directory::

    checkpoints/epoch_0003/model.safetensors   weights (our format: safetensors, never pickle)
    checkpoints/epoch_0003/state.safetensors   optimizer / scheduler tensors, torch RNG state
    checkpoints/epoch_0003/state.json          epoch, step, metrics, optimizer hyper-parameters,
                                               python / numpy RNG states
    checkpoints/latest                         name of the newest complete checkpoint

A checkpoint folder is assembled under a temporary name and renamed into place, then
``latest`` is replaced atomically, so a job killed at any instant leaves the previous
checkpoint intact and resumable. Foreign checkpoints (``.pt``/``.pth``) load only through
:func:`load_foreign_state_dict`, which uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from actdistill.data.records import DataError
from actdistill.rundir import atomic_write_text

CHECKPOINT_FILES = ("model.safetensors", "state.safetensors", "state.json")
_EPOCH_DIR = re.compile(r"epoch_\d{4,}")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, slots in state["state"].items():
        plain["state"][str(idx)] = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
                plain["state"][str(idx)][name] = "__tensor__"
            else:
                plain["state"][str(idx)][name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for idx, slots in plain["state"].items():
        state[int(idx)] = {
            name: tensors[f"optim.{idx}.{name}"] if value == "__tensor__" else value for name, value in slots.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with DDP's ``module.`` prefix removed and shared tensors de-duplicated."""
    inner = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()}


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(model_state(model), str(tmp), metadata=metadata)
    tmp.replace(path)


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    path = Path(path)
    try:
        state = load_file(str(path))
    except Exception as err:
        raise DataError(path, f"not a readable safetensors file ({err})") from None
    inner = model.module if hasattr(model, "module") else model
    try:
        missing, unexpected = inner.load_state_dict(state, strict=False)
    except RuntimeError as err:  # strict=False still refuses tensors of the wrong shape
        detail = " ".join(str(err).split("\n")[1:3]).strip() or str(err)
        raise DataError(path, f"weights do not match the model: {detail}") from None
    if strict and (missing or unexpected):
        raise DataError(path, f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_checkpoint(
    run_dir: str | Path,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    name: str = "checkpoints",
) -> Path:
    """Write a complete checkpoint for ``epoch`` (the number of finished epochs) atomically."""
    root = Path(run_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch_{epoch:04d}"
    tmp = root / f".tmp_epoch_{epoch:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    plain: dict[str, Any] = {"epoch": epoch, "extra": extra or {}}
    if optimizer is not None:
        t, p = _flatten_optimizer(optimizer.state_dict())
        tensors.update(t)
        plain["optimizer"] = p
    if scheduler is not None:
        plain["scheduler"] = scheduler.state_dict()
    plain["rng"] = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state())}
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(plain, default=_json_default))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", final.name)
    for old in _epoch_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in CHECKPOINT_FILES)


def _epoch_dirs(root: Path) -> list[Path]:
    """``epoch_NNNN`` folders in numeric order. By name, ``epoch_10000`` sorts before ``epoch_9999``
    (step-numbered checkpoints pass 9999), and pruning would delete the checkpoint just written."""
    dirs = [p for p in root.iterdir() if p.is_dir() and _EPOCH_DIR.fullmatch(p.name)]
    return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | Path, name: str = "checkpoints") -> Path | None:
    """The newest complete checkpoint: the one ``latest`` names, else the highest complete epoch.

    The fallback matters when the pointer is gone or names a folder that is not a complete
    checkpoint (deleted by hand, or ``latest`` edited): returning ``None`` there would restart
    training from scratch and, through ``keep`` pruning, delete the newer checkpoints that were
    still on disk. Half-written ``.tmp_epoch_*`` folders are never considered.
    """
    root = Path(run_dir) / name
    pointer = root / "latest"
    if pointer.is_file():
        target = pointer.read_text(errors="replace").strip()
        if _EPOCH_DIR.fullmatch(target) and _complete(root / target):
            return root / target
    if not root.is_dir():
        return None
    done = [p for p in _epoch_dirs(root) if _complete(p)]
    return done[-1] if done else None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model (and optionally optimizer, scheduler, RNG); returns the plain state (epoch, extra)."""
    path = Path(path)
    load_weights(model, path / "model.safetensors")
    try:
        plain = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path / "state.json", f"checkpoint state unreadable ({err})") from None
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except Exception as err:  # safetensors raises its own error types
        raise DataError(path / "state.safetensors", f"not a readable safetensors file ({err})") from None
    try:
        if optimizer is not None and "optimizer" in plain:
            optimizer.load_state_dict(_unflatten_optimizer(tensors, plain["optimizer"]))
        if scheduler is not None and "scheduler" in plain:
            scheduler.load_state_dict(plain["scheduler"])
        if restore_rng:
            torch.set_rng_state(tensors["rng.torch"])
            random.setstate(_tuplify(plain["rng"]["python"]))
            st = plain["rng"]["numpy"]
            np.random.set_state((st[0], np.array(st[1], dtype=np.uint32), st[2], st[3], st[4]))
        int(plain["epoch"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        # a state that does not match this optimizer/scheduler, or lacks the epoch or RNG states,
        # cannot resume the run exactly; say which checkpoint rather than raise a bare KeyError
        raise DataError(path, f"checkpoint state does not match this run or is incomplete "
                              f"({type(err).__name__}: {err})") from None
    return plain


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from a file we did not write: safetensors, or a torch file with weights only.

    ``torch.load(weights_only=True)`` refuses arbitrary pickled objects; we turn that refusal into
    a clear message instead of ever falling back to full unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:
            raise DataError(path, f"not a readable safetensors file ({err})") from None
    obj = torch_load_weights_only(path)
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(path, "does not hold a state dict of tensors")
    return obj


def torch_load_weights_only(path: str | Path, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(weights_only=True)`` of a file we did not write, on the CPU; a refusal (the file
    asks for arbitrary unpickling) or an unreadable file is a :class:`DataError` naming it.

    ``allowed``: extra plain classes the weights-only unpickler may build (e.g. ``Counter``).
    The one place foreign torch files are opened, so the refusal reads the same everywhere."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(path, "refused: the file is not a plain weights checkpoint (it needs arbitrary "
                        f"unpickling, which actdistill never does). Details: {_refusal_reason(err)}") from None


def _refusal_reason(err: Exception) -> str:
    """The line of torch's weights-only error that says what the file asked for.

    Its first line is generic and goes on to suggest ``weights_only=False``, which is exactly
    what must not be done with a file one did not write; the specific line ("Unsupported global:
    GLOBAL posix.system ...", "Unsupported operand 149") is what the user needs to see.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Unsupported") or "GLOBAL" in ln:
            return ln
    first = lines[0] if lines else type(err).__name__
    return first.split(". In PyTorch")[0]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple | list):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    return x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _json_default(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot serialise {type(x).__name__}")
