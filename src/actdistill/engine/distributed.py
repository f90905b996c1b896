"""Distributed helpers: one code path for a single process and for ``torchrun`` (DDP).

Under ``torchrun`` the usual environment variables are set; we initialise the process group with
``gloo`` on CPU and ``nccl`` on GPU. The trainer (Lightning Fabric, on this process group) wraps
trainable task modules in DDP; a frozen teacher is used as-is on every rank. Every rank decodes,
extracts and trains its share; rank 0 alone writes checkpoints, logs and reports, and each rank
writes its own cache files.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


#: minutes a collective (a barrier, a gradient all-reduce) may wait before the job fails
DEFAULT_TIMEOUT_MIN = 30.0


def init_from_env(timeout_min: float | None = None) -> torch.device:
    """Initialise DDP when launched by torchrun; return the device this process should use.

    ``timeout_min`` (``run.dist_timeout_min``): how long a rank may wait at a collective. Every
    stage shares its work across ranks, so a wait is the imbalance of one stage, not a whole
    stage done by rank 0; raise it when ranks read from a slow shared file system."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not is_distributed():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            minutes = DEFAULT_TIMEOUT_MIN if timeout_min is None else timeout_min
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache), the others after it is done."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (to be raised on the other ranks as it is), else a
    ``RuntimeError`` carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def from_main(fn: Callable[[], T], timeout_min: float | None = None) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result (e.g. the new run directory's path).

    Initialises the process group first when launched by torchrun, so a job's set-up (creating a
    run directory, generating a dataset, checking a study directory) happens once, not once per
    rank. When ``fn`` raises, every rank raises the same error (the other ranks would otherwise
    wait in the broadcast until the launcher's timeout), so under ``torchrun`` a refused config
    stops the job at once with its message.
    """
    init_from_env(timeout_min)
    if not is_distributed():
        return fn()
    if is_main():
        try:
            box: list[object] = [("ok", fn())]
        except Exception as err:
            dist.broadcast_object_list([("error", _portable(err))], src=0)
            raise
    else:
        box = [None]
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]  # type: ignore[misc]
    if status == "error":
        raise value
    return value  # type: ignore[no-any-return]


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process): how a stage that shares
    its samples out to ranks (evaluation) puts the results back together."""
    if not is_distributed():
        return [obj]
    out: list[T | None] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out  # type: ignore[return-value]
