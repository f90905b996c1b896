"""Run directories: the artefact of every job (config, checkpoints, metrics, plots, report).

A run directory is created with an exclusive ``mkdir``, so two jobs can never share one and an
earlier run is never overwritten: when the name exists a numeric suffix is added. Resuming an
existing run is explicit (``resume=...``) and only then is an existing folder reused.

**One writer at a time.** The process that opens a run directory (rank 0 under ``torchrun``: the
pipelines open it through ``from_main``) holds an exclusive ``flock`` on ``<run>/run.lock``, whose
text names it (``host H pid P``), until it exits. Why: a cluster job resubmitted while the first
one still runs would otherwise resume the same checkpoints and both would overwrite each other's
steps; with the lock the second gets a :class:`~actdistill.data.records.DataError` naming the run
directory and the live holder. The OS drops a ``flock`` when its holder dies, so a killed run's
lock is simply taken over; a lock still held only by an orphan that inherited the descriptor
(a forked DataLoader worker outliving its killed parent) is recognised by the dead pid its text
names on this host and replaced. :class:`ProcessLock` is the one implementation of such a
host/pid ``flock``; the feature cache's per-writer locks use it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from actdistill.config import to_dict
from actdistill.data.records import DataError

LOCK_NAME = "run.lock"
"""The lock file inside a run directory."""


# ------------------------------------------------------------------------------------------ locks
def _pid_namespace() -> str:
    """This process's PID namespace (``/proc/self/ns/pid``), or "" where there is none to read."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def holder_text() -> str:
    """How a lock file names this process: host, pid and PID namespace. Why the namespace: two
    containers can share a host name (Docker with host networking) and a file system while their
    pids live in different namespaces, so a pid alone cannot be checked from the other one."""
    ns = _pid_namespace()
    return f"host {socket.gethostname()} pid {os.getpid()}" + (f" pidns {ns}" if ns else "")


def parse_holder(text: str) -> tuple[str, int, str] | None:
    """``(host, pid, pid namespace)`` from a lock file's text (namespace "" when not recorded), or
    None when it is not in :func:`holder_text`'s form."""
    parts = text.split()
    if len(parts) in (4, 6) and parts[0] == "host" and parts[2] == "pid" and parts[3].isdigit():
        if len(parts) == 6 and parts[4] != "pidns":
            return None
        return parts[1], int(parts[3]), parts[5] if len(parts) == 6 else ""
    return None


def _dead_here(holder: str) -> bool:
    """True when ``holder`` names a process of this host and PID namespace that no longer exists."""
    parsed = parse_holder(holder)
    if parsed is None:
        return False
    host, pid, ns = parsed
    return host == socket.gethostname() and ns != "" and ns == _pid_namespace() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class LockHeld(Exception):
    """The lock is held by a live process; ``holder`` is its lock file's text."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


class ProcessLock:
    """An exclusive ``flock`` on ``path`` held by this process, with its host and pid written inside.

    ``flock`` locks belong to an open file description: two opens conflict even in one process, the
    OS releases the lock when the last descriptor closes (the finaliser closes it when the object
    is dropped) or the process dies, and a forked child shares it (it must never unlock it, and
    does not: the lock is only ever closed). Raises :class:`LockHeld` when a live process holds it.

    Stale locks: a free ``flock`` is simply taken, whatever the file says (``previous`` keeps the
    text of the process that held it last). A ``flock`` still held although the pid the file names
    on this host and PID namespace is dead belongs to an orphan that inherited the descriptor; the
    file is then unlinked (under ``<path>.takeover``, so only one process replaces it) and a fresh
    one locked. A holder on another host or in another PID namespace cannot be checked from here
    and counts as live.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.previous = ""
        for _ in range(8):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
                if _dead_here(holder):
                    self._remove_orphaned(fd)
                    os.close(fd)
                    continue
                os.close(fd)
                raise LockHeld(self.path, holder or "an unknown process") from None
            except OSError as err:  # e.g. a network file system mounted without flock support
                os.close(fd)
                raise DataError(self.path, f"cannot take an exclusive lock ({err.strerror}); this file system "
                                           "does not support flock: put the run directory and caches on one "
                                           "that does (e.g. mount Lustre with -o flock)") from None
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):  # replaced by a takeover between our open and flock
                os.close(fd)
                continue
            self.previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder_text()}\n".encode(), 0)
            self.pid = os.getpid()
            self._finalizer = weakref.finalize(self, os.close, fd)
            return
        raise LockHeld(self.path, "processes that keep replacing it")

    def _remove_orphaned(self, fd: int) -> None:
        guard = os.open(f"{self.path}.takeover", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if _same_file(fd, self.path):  # nobody replaced it yet
                self.path.unlink()
        finally:
            os.close(guard)

    def release(self) -> None:
        """Close the descriptor: the ``flock`` is released (unless a forked child still shares it)."""
        self._finalizer()


# run directory (real path) -> [lock, holds] of this process
_RUN_LOCKS: dict[str, list[Any]] = {}
_RUN_MUTEX = threading.Lock()


def lock_run_dir(path: str | Path) -> ProcessLock:
    """Take (or, when this process has it already, share) the exclusive right to write ``path``.

    Raises a :class:`DataError` naming the run directory and the live holder when another process
    writes it. Released by as many :func:`release_run_dir` calls, or when the process exits.
    """
    key = os.path.realpath(path)
    with _RUN_MUTEX:
        held = _RUN_LOCKS.get(key)
        if held is not None and held[0].pid == os.getpid():  # a forked child must take its own
            held[1] += 1
            return held[0]
        try:
            lock = ProcessLock(Path(path) / LOCK_NAME)
        except LockHeld as err:
            raise DataError(path, f"run directory is in use by another process ({err.holder}, lock file "
                                  f"{LOCK_NAME}); wait for that job to finish or stop it before resuming "
                                  "this run") from None
        _RUN_LOCKS[key] = [lock, 1]
        return lock


def release_run_dir(path: str | Path) -> None:
    """Give back one hold taken by :func:`lock_run_dir`; the last one releases the lock."""
    key = os.path.realpath(path)
    with _RUN_MUTEX:
        held = _RUN_LOCKS.get(key)
        if held is None or held[0].pid != os.getpid():
            return
        held[1] -= 1
        if held[1] <= 0:
            del _RUN_LOCKS[key]
            held[0].release()


@contextlib.contextmanager
def holding_run_dir(path: str | Path) -> Iterator[None]:
    """Hold ``path``'s lock for the ``with`` block (sharing it if this process holds it already)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    lock_run_dir(path)
    try:
        yield
    finally:
        release_run_dir(path)


# ---------------------------------------------------------------------------------- run directories
def create_run_dir(base: str | Path, name: str, timestamp: bool = True) -> Path:
    """Create ``base/name[-YYYYmmdd-HHMMSS][-k]`` exclusively and return it, locked by this process."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}" if timestamp else name
    for k in range(10_000):
        path = base / (stem if k == 0 else f"{stem}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        lock_run_dir(path)
        return path
    raise RuntimeError(f"{base}: could not find a free run directory name for {stem!r}")


def open_run_dir(base: str | Path, name: str, resume: str | Path | None = None, timestamp: bool = True) -> Path:
    """A new run directory, or the existing one named by ``resume`` (which must exist); either way
    locked by this process until it exits (:func:`lock_run_dir`)."""
    if resume is not None:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: run directory to resume does not exist")
        lock_run_dir(path)
        return path
    return create_run_dir(base, name, timestamp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_config(run_dir: str | Path, cfg: Any) -> Path:
    """Write ``cfg`` as ``run_dir/config.yaml``, headed by its ``job:`` (``karmma``, ``fewshot``)
    so that the file says which command it belongs to and ``config show`` / the deploy commands
    need not infer it from the keys."""
    import yaml

    from actdistill.shipped import job_name

    path = Path(run_dir) / "config.yaml"
    job = job_name(type(cfg))
    data = to_dict(cfg)
    atomic_write_text(path, yaml.safe_dump({"job": job, **data} if job else data, sort_keys=False))
    return path
