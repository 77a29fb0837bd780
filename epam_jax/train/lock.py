"""One training run per workdir: an exclusive, non-blocking lock on ``workdir/train.lock``.

The lock is a ``flock`` on that file, so the kernel drops it when the holding process
ends in any way, SIGKILL and out-of-memory kills included: a lock left by a dead run
never blocks the next one. While held, the file holds a JSON description of the
holder (pid, host, start time, command line), so that a refused run can say which
run is in the way.

Multi-host runs: only process 0 locks (``enabled=jax.process_index() == 0``); the
other processes share its workdir and stop with it. On NFS, Linux emulates ``flock``
with NFS byte-range locks, which also exclude runs on other hosts; a filesystem that
has no locks at all makes ``acquire`` raise ``WorkdirLockUnsupportedError`` (pass
``lock_file`` on a local disk, or ``enabled=False`` to run unguarded).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "train.lock"

# flock's answers on a filesystem that does not lock.
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}

# Locks this process holds, by lock file path, to refuse a second lock on the same
# workdir with a clear message (and to drop inherited descriptors in forked children).
_held: dict[str, WorkdirLock] = {}
_held_guard = threading.Lock()


class WorkdirLockError(RuntimeError):
    """The workdir could not be locked."""


class WorkdirInUseError(WorkdirLockError):
    """Another live run (or another lock in this process) holds the workdir."""

    def __init__(self, message: str, lock_path: Path, holder: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


class WorkdirLockUnsupportedError(WorkdirLockError):
    """The filesystem of the lock file does not support ``flock``."""


def describe_process() -> dict[str, Any]:
    """This process as a lock holder: pid, host, start time, command line."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
        "command": shlex.join(argv),
    }


def read_holder(lock_path: str | os.PathLike, attempts: int = 20) -> dict[str, Any] | None:
    """The holder description in ``lock_path``, or None if there is none (yet).

    The holder writes it right after locking; a reader that comes in between sees an
    empty file or the stale text of an earlier, dead holder, so it looks again for a
    few milliseconds before giving up.
    """
    holder = None
    for attempt in range(attempts):
        holder = _parse(lock_path)
        if holder is not None and not _is_stale(holder):
            return holder
        if attempt + 1 < attempts:
            time.sleep(0.005)
    return holder


def _parse(lock_path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        text = Path(lock_path).read_text(errors="replace")
    except OSError:
        return None
    try:
        # The description is written over the old one and the file cut after it: a
        # reader in between sees the new JSON followed by old bytes, which it ignores.
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_stale(holder: dict[str, Any]) -> bool:
    """True when the described holder is a process of this host that has ended."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    return not _pid_alive(holder["pid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _format_holder(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a process whose description could not be read"
    command = " ".join(str(holder.get("command", "?")).split())  # one line
    if len(command) > 400:
        command = command[:400] + "..."
    text = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}, command: {command}")
    if _is_stale(holder):
        text += " (that pid has ended: a process it started may still hold the lock)"
    return text


class WorkdirLock:
    """Exclusive lock of a training workdir, taken at once or refused at once.

    ``with WorkdirLock(workdir):`` around a run; ``acquire`` never waits: if another
    live process holds the lock it raises ``WorkdirInUseError`` naming that process
    and the lock file. Acquiring the same object again nests (released by the last
    ``release``); a second ``WorkdirLock`` on the same workdir in this process is
    refused like another run. ``enabled=False`` (processes other than 0 of a
    multi-host run) makes it do nothing.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True,
                 lock_file: str | os.PathLike | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.path = Path(lock_file).absolute() if lock_file else self.workdir / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None
        self._depth = 0

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WorkdirLock:
        """Take the lock now or raise ``WorkdirInUseError``; returns self."""
        if not self.enabled:
            return self
        if self._fd is not None:
            self._depth += 1
            return self
        if fcntl is None:  # pragma: no cover - not POSIX
            raise WorkdirLockUnsupportedError(
                f"cannot lock {self.path}: this platform has no fcntl.flock")
        key = os.path.realpath(self.path)
        with _held_guard:
            other = _held.get(key)
            if other is not None:
                raise WorkdirInUseError(
                    f"workdir {self.workdir} is already locked by this process "
                    f"({_format_holder(_parse(self.path))}); lock file {self.path}",
                    self.path, _parse(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._lock_fd()
            try:
                data = (json.dumps(describe_process(), sort_keys=True) + "\n").encode()
                os.pwrite(fd, data, 0)  # one write, then cut: see _parse
                os.ftruncate(fd, len(data))
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._depth = fd, 1
            _held[key] = self
        return self

    def _lock_fd(self) -> int:
        """A descriptor of the lock file holding the lock (the file at the path, not an
        older one replaced or removed meanwhile)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in _BUSY:
                    holder = read_holder(self.path)
                    raise WorkdirInUseError(
                        f"workdir {self.workdir} is in use by another training run: "
                        f"{_format_holder(holder)}; lock file {self.path} (wait for that "
                        f"run to end or stop it, or choose another workdir)",
                        self.path, holder) from None
                if e.errno in _UNSUPPORTED:
                    raise WorkdirLockUnsupportedError(
                        f"cannot lock {self.path}: the filesystem does not support file "
                        f"locks ({os.strerror(e.errno)}); put the lock file on a local "
                        f"disk or run without the lock") from e
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # the file was replaced after we opened it: lock the new one

    def release(self) -> None:
        """Drop the lock (after the last of nested acquires); the file stays, empty."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        with _held_guard:
            _held.pop(os.path.realpath(self.path), None)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"WorkdirLock({str(self.workdir)!r}, locked={self.locked})"


def _forget_locks_in_child() -> None:
    """A forked child shares the parent's lock; close its copy so that the lock ends
    with the parent, not with the last of its children."""
    for lock in list(_held.values()):
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
            lock._fd, lock._depth = None, 0
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)
