"""One training run per workdir (epam_jax.train.lock): a second run is refused at once
with the holder's pid, host, start time and command line; the lock of a SIGKILLed run
(or of one whose forked child lives on) does not block; leaving the block releases it.

The holders are small subprocesses that load lock.py alone (no jax import).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epam_jax.train import lock as lock_module
from epam_jax.train.lock import (
    LOCK_FILE,
    WorkdirInUseError,
    WorkdirLock,
    WorkdirLockUnsupportedError,
)

HOLDER = r"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("workdir_lock", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
lock = module.WorkdirLock(sys.argv[2]).acquire()
mode = sys.argv[3]
if mode == "release":
    lock.release()
    os.write(1, b"released\n")
    sys.exit(0)
if mode == "fork":
    if os.fork() == 0:  # the child runs on after the fork hooks: ready to be tested
        os.write(1, f"child {os.getpid()}\n".encode())
        time.sleep(30)
        os._exit(0)
os.write(1, b"locked\n")  # one write each: the child writes to the same pipe
time.sleep(30)
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A workdir beside the holder script."""
    return tmp_path / "run"


def _start_holder(workdir: Path, mode: str = "hold", marker: str = "--run=first"
                  ) -> tuple[subprocess.Popen, list[str]]:
    """A process holding the lock of ``workdir``, and the lines it printed up to 'locked'
    (and its child's, in mode 'fork')."""
    script = workdir.parent / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), lock_module.__file__, str(workdir), mode, marker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise AssertionError(f"holder ended (rc {proc.returncode}): {proc.stderr.read()}")
        lines.append(line.strip())
        done = "released" in lines or "locked" in lines and (
            mode != "fork" or any(x.startswith("child") for x in lines))
        if done:
            return proc, lines


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_second_run_is_refused_at_once_naming_the_holder(workdir: Path) -> None:
    holder, _ = _start_holder(workdir, marker="--config.mode=holder-marker")
    try:
        start = time.perf_counter()
        with pytest.raises(WorkdirInUseError) as refused:
            WorkdirLock(workdir).acquire()
        assert time.perf_counter() - start < 1.0  # refused, not waiting
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "started 20" in message and "holder-marker" in message
        assert f"lock file {workdir / LOCK_FILE}" in message
        assert refused.value.holder["pid"] == holder.pid
        assert refused.value.lock_path == workdir / LOCK_FILE
    finally:
        _kill(holder)
    # SIGKILL leaves its description in the file, but not the lock.
    assert holder.returncode == -signal.SIGKILL
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == holder.pid
    with WorkdirLock(workdir) as lock:
        assert lock.locked
        assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_lock_ends_with_a_killed_run_even_when_its_forked_child_lives(workdir: Path) -> None:
    holder, lines = _start_holder(workdir, mode="fork")
    child = int(next(line for line in lines if line.startswith("child")).split()[1])
    try:
        with pytest.raises(WorkdirInUseError):
            WorkdirLock(workdir).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        os.kill(child, 0)  # still running
        with WorkdirLock(workdir) as lock:
            assert lock.locked
    finally:
        _kill(holder)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_leaving_the_block_releases_the_lock(workdir: Path) -> None:
    with WorkdirLock(workdir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.locked and lock.path.read_text() == ""
    with pytest.raises(KeyError), WorkdirLock(workdir):
        raise KeyError("the run failed")
    # Another process gets it now.
    proc, _ = _start_holder(workdir, mode="release")
    assert proc.wait(10) == 0
    _kill(proc)


def test_same_process_twice(workdir: Path) -> None:
    first = WorkdirLock(workdir).acquire()
    try:
        with pytest.raises(WorkdirInUseError, match="already locked by this process"):
            WorkdirLock(workdir).acquire()
        with first:  # the same object nests
            assert first.locked
        assert first.locked
    finally:
        first.release()
    assert not first.locked
    WorkdirLock(workdir).acquire().release()


def test_disabled_lock_does_nothing(workdir: Path) -> None:
    with WorkdirLock(workdir, enabled=False) as lock:
        assert not lock.locked
    assert not workdir.exists()


def test_filesystem_without_locks_is_a_clear_error(workdir: Path, monkeypatch) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    with pytest.raises(WorkdirLockUnsupportedError, match="does not support file locks"):
        WorkdirLock(workdir).acquire()
    monkeypatch.undo()
    WorkdirLock(workdir).acquire().release()  # nothing was left held
