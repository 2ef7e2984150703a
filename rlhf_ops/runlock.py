"""One process per run directory: a lock file ``<run_dir>/.lock``.

Two loops writing the same run dir would interleave ledger rows and overwrite
each other's checkpoints, so the second one must refuse to start. A lock left
behind by a crashed process (its pid is gone, or the file was cut short
mid-write) is taken over, so a crash never needs manual cleanup.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no guard against two processes taking over at once
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILENAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True


class RunLock:
    """Context manager holding ``<run_dir>/.lock`` for the lifetime of a run.

    The file holds JSON ``{pid, hostname, started_at, token}``; the random token
    tells two locks taken by the same process apart.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILENAME
        self._mine: dict | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._mine is not None

    def read_owner(self) -> dict | None:
        """The lock file's content, or None if absent, empty or unparsable."""
        try:
            owner = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    def acquire(self) -> None:
        if self.held:
            raise RuntimeError(f"this RunLock already holds {self.path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mine = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        with self._serialized():
            if not self._create_exclusive(mine):
                owner = self.read_owner()
                if owner is not None and not self._is_stale(owner):
                    raise RunLockedError(self._locked_message(owner))
                self._take_over(owner, mine)
        self._mine = mine

    def release(self) -> None:
        """Remove the lock file, but only if it is still ours."""
        if self._mine is None:
            return
        if self.read_owner() == self._mine:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("%s no longer belongs to this process; leaving it in place", self.path)
        self._mine = None

    @contextlib.contextmanager
    def _serialized(self) -> Iterator[None]:
        # While one process reads a lock, judges it stale and replaces it, another
        # must not do the same (both would believe they won). An flock on the run
        # dir makes check-and-replace one step; it also keeps a reader from seeing
        # a lock that a fresh owner has created but not yet written.
        if fcntl is None:
            yield
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _create_exclusive(self, mine: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _is_stale(self, owner: dict) -> bool:
        if owner.get("hostname") != socket.gethostname():
            return False  # we cannot see processes on another host: assume it is alive
        return not _pid_alive(owner["pid"])

    def _take_over(self, stale_owner: dict | None, mine: dict) -> None:
        if stale_owner is None:
            log.warning("lock file %s is empty or unreadable (crash while writing it); taking it over",
                        self.path)
        else:
            log.warning("taking over stale lock %s from pid %s, which is no longer running",
                        self.path, stale_owner["pid"])
        tmp = self.path.with_name(f"{LOCK_FILENAME}.{mine['token']}.tmp")
        with open(tmp, "w") as f:
            json.dump(mine, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: readers see the old lock or ours, never half
        owner = self.read_owner()
        if owner != mine:  # someone else replaced it in between (only without flock)
            raise RunLockedError(self._locked_message(owner or {"pid": "?"}))

    def _locked_message(self, owner: dict) -> str:
        pid, host = owner.get("pid"), owner.get("hostname", "?")
        since = owner.get("started_at", "?")
        where = "this host" if host == socket.gethostname() else f"host {host}"
        return (
            f"Run dir {self.run_dir} is in use by pid {pid} on {where} (since {since}). "
            f"Wait for that run to finish, stop it (kill {pid}), or use another run_dir. "
            f"If no such run is active (e.g. the pid was reused, or it ran on another "
            f"machine that is gone), delete {self.path} and start again."
        )
