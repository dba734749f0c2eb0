"""A cross-process lock on the data directory, held by every writing command.

It is an ``flock`` on ``data/.toolkit.lock``: the kernel releases it when the holder exits, however it
exits (SIGKILL included), so a dead holder's lock is broken automatically and never needs a manual
break-lock. The file records the holder (pid, host, start time, command) so a waiting process can
say who holds it. The lock is re-entrant within one process (``integrity demo`` migrates, then repairs).
"""
from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import LockTimeoutError, NotInitialisedError

__all__ = ["Holder", "data_dir_lock", "read_holder"]

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def hostname() -> str:
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows
        import socket

        return socket.gethostname()


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started_at: float
    command: str

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid} on {self.host} since {when} ({self.command})"


def read_holder(path: Path) -> Holder | None:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # never open a FIFO for reading: it would block
        raw = path.read_text(encoding="utf-8").strip()
        if not raw:
            return None
        data = json.loads(raw)
        return Holder(int(data["pid"]), str(data["host"]), float(data["started_at"]), str(data.get("command", "?")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


_held: dict[str, list[int]] = {}  # path -> [fd, depth]
_held_guard = threading.Lock()


@contextmanager
def data_dir_lock(
    path: Path,
    *,
    timeout: float,
    command: str,
    on_wait: Callable[[Holder | None], None] | None = None,
    on_takeover: Callable[[Holder], None] | None = None,
) -> Iterator[None]:
    """Hold the lock file at ``path`` for the duration of the block.

    Waits up to ``timeout`` seconds for a live holder, then raises :class:`LockTimeoutError`
    naming it. ``on_takeover`` is told when the previous holder ended without releasing.
    """
    key = str(path.resolve()) if path.parent.exists() else str(path)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key][1] -= 1
        return

    if not path.parent.is_dir():
        raise NotInitialisedError(f"{path.parent}: data directory does not exist", hint="run `migrate upgrade` first")
    # O_NONBLOCK: opening a FIFO someone put in the lock file's place must not hang; fstat refuses it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LockTimeoutError(f"{path}: the lock file is not a regular file (a FIFO or a device)",
                                   hint="move it aside; the toolkit recreates it")
        os.set_blocking(fd, True)
        waiting_since = time.monotonic()
        deadline = waiting_since + timeout
        told = False
        while not _try_lock(fd):
            holder = read_holder(path)
            # A holder that has just taken the lock writes its details a moment later: give it that
            # moment, so the notice names it instead of "another process".
            if not told and on_wait is not None and (holder is not None or time.monotonic() - waiting_since >= 0.5):
                on_wait(holder)
                told = True
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "another process"
                raise LockTimeoutError(
                    f"{path.parent}: locked by {who}; gave up after {timeout:g} s",
                    hint="wait for it to finish (a holder that dies releases the lock by itself), or raise --lock-timeout",
                )
            time.sleep(0.05)
        previous = read_holder(path)
        if previous is not None and on_takeover is not None and previous.pid != os.getpid():
            on_takeover(previous)
        me = {"pid": os.getpid(), "host": hostname(), "started_at": time.time(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        with _held_guard:
            _held[key] = [fd, 1]
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            os.ftruncate(fd, 0)
            _unlock(fd)
    finally:
        os.close(fd)
