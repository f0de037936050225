"""One run per workdir: a lock file that refuses a second `diffusion-jax train` on the same workdir.

    with WorkdirLock(workdir, command="train"):
        ...                       # a second process on `workdir` raises WorkdirLockedError

The lock is `workdir/lock.<generation>.json` (`lock.1.json` on a fresh workdir), one JSON object
naming its holder:

    {"host": "node7", "pid": 4242, "command": "train",
     "started": "2025-01-02T03:04:05.123456+00:00", "heartbeat": "2025-01-02T03:34:05.654321+00:00",
     "token": "<uuid4 hex, unique to this acquire>"}

A daemon thread rewrites `heartbeat` every `heartbeat_s` seconds (nothing runs on the training
thread). A lock is stale, and is taken over with a warning, when its file is malformed, when its
holder is on this host and its pid is not running, or when its heartbeat is older than
`stale_after_s` (any host: the workdir may be on a shared filesystem). Taking over creates the
next generation's file (see `WorkdirLock._take` for why). The workdir must be a local or mounted
path. With several JAX processes, process 0 alone takes the lock and broadcasts the outcome, so
that all processes go on, or refuse, together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffusion_jax.errors import UserError

log = logging.getLogger(__name__)

_LOCK_NAME = re.compile(r"lock\.([1-9]\d*)\.json")  # lock.<generation>.json
_FIELDS = {"host": str, "pid": int, "command": str, "started": str, "heartbeat": str, "token": str}
_OK, _LOCKED, _FAILED = 0, 1, 2  # the outcome process 0 broadcasts
_MESSAGE_BYTES = 4096


class WorkdirLockedError(UserError):
    """Another live process holds the workdir's lock; the message names it and what to do."""


class WorkdirLock:
    """The lock on `workdir` (created if missing) for the length of a `with` block, or from
    `acquire()` to `release()`. `command` is recorded for the message a second process gets.
    `heartbeat_s`: how often the holder refreshes its heartbeat; `stale_after_s`: how old another
    holder's heartbeat may be before its lock counts as abandoned. `path`: our lock file, while
    this process holds the lock."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        command: str = "train",
        heartbeat_s: float = 30.0,
        stale_after_s: float = 300.0,
    ):
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(
                f"Need 0 < heartbeat_s < stale_after_s, got {heartbeat_s} and {stale_after_s}."
            )
        self.workdir = Path(workdir)
        self.command = command
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.path: Path | None = None
        self._generation = 0
        self._record: dict = {}
        self._data = b""  # the bytes we last wrote to `path`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> WorkdirLock:
        """Takes the lock, or raises WorkdirLockedError naming its live holder."""
        if jax.process_count() == 1:
            self._take()
            return self
        failure = None
        if jax.process_index() == 0:
            try:
                self._take()
            except Exception as e:  # shared below, so that no process waits for process 0 forever
                failure = e
        status = _LOCKED if isinstance(failure, WorkdirLockedError) else _FAILED if failure else _OK
        status, message = _broadcast(status, str(failure or ""))
        if failure is not None:
            raise failure
        if status == _LOCKED:
            raise WorkdirLockedError(message)
        if status == _FAILED:
            raise RuntimeError(f"Process 0 could not take the lock on {self.workdir}: {message}")
        return self

    def release(self) -> None:
        """Stops the heartbeat and removes our lock file, if it still holds our record."""
        if self.path is None:
            return
        self._stop.set()
        self._thread.join()
        if _read(self.path) == self._data:
            self.path.unlink()
        else:
            log.warning("%s no longer holds this process's lock; left in place.", self.path)
        self.path = None

    def _take(self) -> None:
        """Takes generation k+1 when generation k (the highest) is stale or there is none.

        Replacing a stale lock file in place cannot be made safe: of two processes that both
        judged it stale, the second replaces (or removes) the first's fresh lock and both go on.
        Here each generation's file is created once, atomically (`_create`), so exactly one racer
        gets k+1. It then holds the lock if, looking again, generation k still holds the record
        it judged stale (so k was not released and taken afresh meanwhile) and no higher one
        exists; otherwise it removes its file and looks again. The winner removes the files of
        lower generations. No step depends on timing, and a process killed at any point leaves
        only files that are stale by the ordinary rules."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        now = _now()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                  "started": now, "heartbeat": now, "token": uuid.uuid4().hex}  # fmt: skip
        data = _encode(record)
        while True:
            files = _lock_files(self.workdir)
            top, seen = max(files, default=0), b""
            if files:
                seen = _read(files[top])
                if seen is None:
                    continue  # released meanwhile
                holder = _decode(seen)
                reason = self._stale_reason(holder)
                if reason is None:
                    raise WorkdirLockedError(self._locked_message(holder, files[top]))
            path = self.workdir / f"lock.{top + 1}.json"
            if _create(path, data) and self._won(top + 1, path, seen):
                break
        if files:
            log.warning("Took over the stale lock on %s from %s: %s.", self.workdir,
                        _describe(holder), reason)  # fmt: skip
        for old in files.values():
            old.unlink(missing_ok=True)
        self.path, self._generation, self._record, self._data = path, top + 1, record, data
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
        self._thread.start()

    def _won(self, generation: int, path: Path, seen: bytes) -> bool:
        """Whether our new `path` holds the lock (see `_take`); if not, it is removed."""
        files = _lock_files(self.workdir)
        below = files.get(generation - 1)
        if max(files) == generation and (generation == 1 or (below and _read(below) == seen)):
            return True
        path.unlink()
        return False

    def _stale_reason(self, holder: dict | None) -> str | None:
        """Why `holder`'s lock is abandoned, or None if it may be alive."""
        if holder is None:
            return "malformed lock file"
        if holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"]):
            return f"process {holder['pid']} is not running"
        age = _age_s(holder["heartbeat"])
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (over {self.stale_after_s:g} s)"
        return None

    def _locked_message(self, holder: dict, path: Path) -> str:
        return (
            f"{self.workdir} is in use by {_describe(holder)}, last heartbeat "
            f"{_age_s(holder['heartbeat']):.0f} s ago. Wait for it to finish, stop it, or use "
            f"another --workdir; if you are sure it is gone, delete {path}."
        )

    def _beat(self) -> None:
        """Refreshes the heartbeat until release; stops if another process took the lock over."""
        while not self._stop.wait(self.heartbeat_s):
            try:
                if (
                    _read(self.path) != self._data
                    or max(_lock_files(self.workdir), default=0) > self._generation
                ):
                    log.error(
                        "Lost the lock on %s to another process, which judged this one's lock "
                        "stale; two runs may now be writing to it.",
                        self.workdir,
                    )
                    return
                record = {**self._record, "heartbeat": _now()}
                data = _encode(record)
                os.replace(_write_temp(self.path, data), self.path)
                self._record, self._data = record, data
            except OSError as e:  # e.g. a network filesystem's hiccup: try again next beat
                log.warning("Could not refresh the heartbeat of %s: %s", self.path, e)


def _lock_files(workdir: Path) -> dict[int, Path]:
    """The lock files in `workdir`, by generation."""
    found = (_LOCK_NAME.fullmatch(name) for name in os.listdir(workdir))
    return {int(m[1]): workdir / m[0] for m in found if m}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _age_s(iso: str) -> float:
    """Seconds since `iso` (0 for a time ahead of this host's clock)."""
    return max(
        0.0, (datetime.now(UTC) - datetime.fromisoformat(iso).astimezone(UTC)).total_seconds()
    )


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "an unknown holder"
    return (
        f"`{holder['command']}` (pid {holder['pid']} on host {holder['host']}, "
        f"since {holder['started']})"
    )


def _encode(record: dict) -> bytes:
    return (json.dumps(record) + "\n").encode()


def _decode(data: bytes) -> dict | None:
    """The holder recorded in `data`, or None if it is not a complete lock record."""
    try:
        record = json.loads(data)
        if all(isinstance(record[k], t) for k, t in _FIELDS.items()) and record["pid"] > 0:
            for key in ("started", "heartbeat"):
                _age_s(record[key])  # ValueError unless an ISO 8601 time
            return record
    except (ValueError, KeyError, TypeError):
        pass
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _write_temp(path: Path, data: bytes) -> Path:
    """A new file next to `path` holding `data`, flushed to disk."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _create(path: Path, data: bytes) -> bool:
    """Creates `path` holding `data` unless it exists; True if it did.

    A hard link, like O_CREAT | O_EXCL, fails if the name exists, so of several racing processes
    one wins; unlike it, the file appears with its content complete, so a reader never mistakes a
    lock being written for a malformed (abandoned) one. It is also the create that is atomic on
    NFS."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _broadcast(status: int, message: str) -> tuple[int, str]:
    """Process 0's (status, message), on every process."""
    buffer = np.zeros(1 + _MESSAGE_BYTES, np.uint8)
    encoded = message.encode()[:_MESSAGE_BYTES]
    buffer[0], buffer[1 : 1 + len(encoded)] = status, np.frombuffer(encoded, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return int(out[0]), out[1:].tobytes().rstrip(b"\0").decode(errors="replace")
