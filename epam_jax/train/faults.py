"""Faults of a training run: preemption notices, and processes that die or hang.

``Preemption``: SIGTERM, what cloud schedulers send some time before they take a
machine, asks the loop to stop after a step on which every process agrees, so that all
of them save the same checkpoint. With ``jax.distributed`` the agreement is jax's own
preemption sync manager (``multihost_utils.reached_preemption_sync_point``): the
process that got the signal publishes the notice through the distributed runtime, a
background protocol on every process takes the furthest process's step plus one, and
asking for it per step costs a mutex, no device sync and no collective. Without
``jax.distributed`` jax has no such manager (it answers False forever) and the signal
alone decides.

``StepWatchdog``: a daemon thread that ends the process with one line on stderr and
exit status ``EXIT_LOST`` when no training step completes within its limit, or, sooner,
when steps have stopped and another process no longer shows signs of life. jax's own
health check (``heartbeat_timeout_seconds`` of ``initialize_distributed``) remains the
bound wherever the watchdog is not armed; it aborts the process with jax's message.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL: a transient failure; restarting from the last checkpoint is the remedy.
EXIT_LOST = 75
RESUME_FLAG = "--config.resume=True"

# More than sizeof(struct sigaction) on Linux and macOS; the struct is copied, not read,
# apart from its first member, the handler.
_SIGACTION_BYTES = 512


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sigaction
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return libc


def _get_action(signum: int) -> bytes | None:
    """The process's raw ``struct sigaction`` for ``signum`` (None where unavailable).

    Python's ``signal.getsignal`` only knows handlers set through Python: it reports
    SIG_DFL for SIGTERM even after jax installed its C handler.
    """
    libc = _libc()
    if libc is None:
        return None
    buf = ctypes.create_string_buffer(_SIGACTION_BYTES)
    if libc.sigaction(signum, None, buf) != 0:
        return None
    return buf.raw


def _set_action(signum: int, action: bytes) -> None:
    libc = _libc()
    if libc is not None:
        libc.sigaction(signum, ctypes.create_string_buffer(action, len(action)), None)


def _handler_address(action: bytes) -> int:
    return ctypes.c_void_p.from_buffer_copy(action).value or 0


def _processes() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def _distributed_client() -> Any | None:
    """jax's distributed runtime client (the key-value store), None without it."""
    from jax._src import distributed  # jax exposes the client only here

    return distributed.global_state.client


class Preemption:
    """SIGTERM -> ``reached(step)`` turns True at the same step on every process.

    ``jax.distributed.initialize`` installs a C-level SIGTERM handler, jax's preemption
    notifier, which only records the notice: from then on SIGTERM no longer ends the
    process at all, and a Python handler set over it would hide the notice from jax.
    ``install`` therefore sets a Python handler that passes the first signal on to
    jax's (with several processes) and records it. Policy for more signals: once one
    was received, the next (SIGTERM again, or any other of ``signals``) gets the
    handler that was there before ``install`` (SIG_DFL for SIGTERM: the process ends
    at once; a step directory cut short is never listed, so the last complete
    checkpoint stays resumable). SIGINT is not handled by default: Ctrl-C raises
    KeyboardInterrupt at once, as usual.

    Call ``reached(step)`` once per step on every process, with the same ``step``
    numbers on all (the loop's own), from the first step after ``start_step``.
    ``start_step`` is the step the loop resumes from: jax's protocol counts from the
    last step it was told, so install() tells it ``start_step``; a notice that arrived
    before install() while resuming (start_step > 0) is lost to jax's protocol, and
    the process then ends by the scheduler's SIGKILL as without this class.

    Latency: jax's notifier polls for the signal every second, then the processes
    agree through the coordinator, so the agreed step comes a second or so after the
    signal. While they agree ``reached`` blocks, holding the GIL; should a process die
    just then, jax's heartbeat timeout, not ``StepWatchdog``, ends the others.
    """

    def __init__(self, start_step: int = 0,
                 signals: Sequence[int] = (signal.SIGTERM,)) -> None:
        self.start_step = int(start_step)
        self.signals = tuple(signals)
        self.received: int | None = None   # the signal this process received
        self.step: int | None = None       # the agreed step, once reached
        self._previous: dict[int, Any] = {}
        self._foreign: dict[int, bytes] = {}  # C handlers (jax's) found at install
        self._jax = False

    def install(self) -> Preemption:
        """Set the handlers (main thread only); returns ``self``."""
        if self._previous:
            raise RuntimeError("Preemption is already installed")
        self._jax = jax.distributed.is_initialized()
        if self._jax:
            try:  # also raises early when the preemption service is off
                multihost_utils.reached_preemption_sync_point(self.start_step)
            except RuntimeError as e:
                raise RuntimeError(
                    "preemption across processes needs jax's preemption sync manager; "
                    "leave jax_enable_preemption_service on") from e
        for signum in self.signals:
            before = _get_action(signum)
            previous = signal.signal(signum, self._handle)
            self._previous[signum] = previous
            ours = _get_action(signum)
            if before is not None and ours is not None:
                address = _handler_address(before)
                if address not in (0, 1, _handler_address(ours)):  # SIG_DFL, SIG_IGN
                    self._foreign[signum] = before
            if (self._jax and signum == signal.SIGTERM
                    and signum not in self._foreign):
                self.restore()
                raise RuntimeError(
                    "SIGTERM is not held by jax's preemption notifier (another handler "
                    "replaced it after jax.distributed.initialize, or this platform "
                    "cannot chain C signal handlers): cannot pass the notice on")
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None or self.step is not None:
            # Not the first: what was there before install decides (SIG_DFL: exit now).
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.received = signum
        action = self._foreign.get(signum)
        if action is not None:  # let jax's notifier see it too
            _set_action(signum, action)
            try:
                signal.raise_signal(signum)
            finally:
                signal.signal(signum, self._handle)

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step``; the same answer on every process.

        Once True it stays True for later steps.
        """
        if self.step is not None:
            return step >= self.step
        if self._jax:
            hit = multihost_utils.reached_preemption_sync_point(step)
        else:
            hit = self.received is not None
        if hit:
            self.step = step
        return hit

    def restore(self) -> None:
        """Put back the handlers found at ``install``, jax's C handler included."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
            action = self._foreign.get(signum)
            if action is not None:
                _set_action(signum, action)
        self._previous.clear()
        self._foreign.clear()

    def message(self, checkpoint_dir: str | os.PathLike | None = None) -> str:
        """One line for the log once ``reached`` was True."""
        index, count = _processes()
        who = f"process {index} of {count}: " if count > 1 else ""
        if self.received is not None:
            how = f"{signal.Signals(self.received).name} received by this process"
        else:
            how = "SIGTERM received by another process"
        where = (f"checkpoint of step {self.step} in {Path(checkpoint_dir)}"
                 if checkpoint_dir is not None else f"checkpoint of step {self.step}")
        return (f"{who}preempted ({how}): stopped after step {self.step}, {where} saved; "
                f"restart with {RESUME_FLAG} to continue")

    def __enter__(self) -> Preemption:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()


class _Roster:
    """Which processes still show signs of life, through jax's key-value store.

    Every ``interval_s`` each process bumps its own counter and reads everyone's; a
    counter that stopped changing marks a process that died or hangs, and a failing
    or stuck exchange marks the coordinator (process 0, which holds the store).
    jax's heartbeats say the same but only to jax, which then aborts the process.
    """

    PREFIX = "epam_jax/faults/alive/"
    DONE = "done"

    def __init__(self, client: Any, index: int, count: int, interval_s: float) -> None:
        self.client, self.index, self.count, self.interval_s = client, index, count, interval_s
        now = time.monotonic()
        self._lock = threading.Lock()
        self._values: dict[int, str] = {}
        self._seen = dict.fromkeys(range(count), now)
        self._answered = now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epam-roster", daemon=True)

    def start(self) -> _Roster:
        self._thread.start()
        return self

    def _exchange(self, value: str) -> list[tuple[str, str]]:
        self.client.key_value_set(f"{self.PREFIX}{self.index}", value, allow_overwrite=True)
        return self.client.key_value_dir_get(self.PREFIX)

    def _run(self) -> None:
        beat = 0
        while not self._stop.is_set():
            beat += 1
            try:
                entries = self._exchange(str(beat))
            except Exception:  # the coordinator is gone: its age tells
                entries = None
            now = time.monotonic()
            if entries is not None:
                with self._lock:
                    self._answered = now
                    for key, value in entries:
                        try:
                            index = int(key.rsplit("/", 1)[-1])
                        except ValueError:
                            continue
                        if self._values.get(index) != value:
                            self._values[index] = value
                            self._seen[index] = now
            self._stop.wait(self.interval_s)

    def lost(self, after_s: float) -> list[str]:
        """The processes (or the coordinator) silent for more than ``after_s``."""
        now = time.monotonic()
        with self._lock:
            if self.index != 0 and now - self._answered > after_s:
                return [f"the coordinator, process 0 (no answer for "
                        f"{now - self._answered:.0f} s)"]
            return [f"process {i} (no sign of life for {now - self._seen[i]:.0f} s)"
                    for i in range(self.count)
                    if i != self.index and self._values.get(i) != self.DONE
                    and now - self._seen[i] > after_s]

    def stop(self) -> None:
        """Stop, telling the others that this process finished rather than died."""
        self._stop.set()
        self._thread.join(timeout=2 * self.interval_s + 1)
        done = threading.Thread(target=self._exchange, args=(self.DONE,), daemon=True)
        done.start()
        done.join(timeout=5)


def _ready(leaves: list[Any]) -> bool:
    try:
        return all(x.is_ready() for x in leaves)
    except RuntimeError:  # deleted (donated): it can no longer be asked
        return True


def _with_timeout(fn: Any, timeout_s: float, default: Any) -> Any:
    """``fn()`` in a helper thread; ``default`` if it fails or takes too long."""
    out = [default]

    def call() -> None:
        with contextlib.suppress(Exception):
            out[0] = fn()

    t = threading.Thread(target=call, daemon=True)
    try:
        t.start()
    except RuntimeError:  # no new threads this late in the interpreter's shutdown
        call()
    else:
        t.join(timeout_s)
    return out[0]


class StepWatchdog:
    """Ends a process whose training steps stopped completing, with one clear line.

    Armed by the first ``beat`` (so the first step's compilation is not counted), it
    fires when no step completed for ``timeout_s``, or, with several processes, when
    none completed for ``lost_after_s`` and some other process (or the coordinator)
    showed no sign of life for as long: then the line names it. Firing writes one line
    to stderr (what stopped, which process was lost, the last complete checkpoint in
    ``checkpoint_dir`` and how to resume) and calls ``os._exit(exit_code)``: atexit
    handlers, among them jax's shutdown that would wait for the lost process, are
    skipped on purpose.

    ``beat(step, outputs)`` after dispatching a step: with ``outputs`` (the step's
    metrics, not the donated state) the step counts as completed when they are ready,
    polled from the thread with ``is_ready()`` (no sync in the loop); without them the
    beat itself counts. ``phase(name, timeout_s)`` sets another limit for work that is
    not steps (validation, a first compile); None lifts it.

    As a context manager: a normal exit stops it; an exception leaving the block with
    several processes leaves it running, so that the way out (jax waits for every
    process at shutdown) is bounded as well; with one process it stops.
    """

    def __init__(self, timeout_s: float = 300.0, *, lost_after_s: float = 20.0,
                 checkpoint_dir: str | os.PathLike | None = None, poll_s: float = 1.0,
                 exit_code: int = EXIT_LOST) -> None:
        if timeout_s <= 0 or lost_after_s <= 0 or poll_s <= 0:
            raise ValueError("timeout_s, lost_after_s and poll_s must be positive")
        self.timeout_s = float(timeout_s)
        self.lost_after_s = float(lost_after_s)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.poll_s = float(poll_s)
        self.exit_code = int(exit_code)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._armed = False
        self._progress = 0.0               # monotonic time of the last completed step
        self._last_step: int | None = None
        self._phase: tuple[str, float | None] | None = None
        self._after: str | None = None     # the exception the loop ended with
        self._roster: _Roster | None = None
        self._thread: threading.Thread | None = None

    # -- the loop's side -----------------------------------------------------------
    def start(self) -> StepWatchdog:
        if self._thread is not None:
            raise RuntimeError("StepWatchdog is already started")
        self._index, self._count = _processes()
        client = _distributed_client()
        if self._count > 1 and client is not None:
            self._roster = _Roster(client, self._index, self._count,
                                   max(self.lost_after_s / 4, 0.1)).start()
        self._thread = threading.Thread(target=self._run, name="epam-watchdog",
                                        daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int, outputs: Any = None) -> None:
        """Step ``step`` was dispatched; it completes when ``outputs`` are ready."""
        leaves = [x for x in jax.tree_util.tree_leaves(outputs) if isinstance(x, jax.Array)]
        now = time.monotonic()
        with self._lock:
            if not self._armed:
                self._armed, self._progress = True, now
            if leaves:
                self._pending.append((step, leaves))
                if len(self._pending) > 1024:  # the loop runs far ahead: keep it small
                    self._pending.popleft()
            else:
                self._progress, self._last_step = now, step

    @contextlib.contextmanager
    def phase(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        """Within the block the limit is ``timeout_s`` from its start (None: no limit;
        a lost process is still reported); steps resume their own limit after it."""
        with self._lock:
            previous, self._phase = self._phase, (name, timeout_s)
            self._progress = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._phase = previous
                self._progress = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1)
        if self._roster is not None:
            self._roster.stop()

    def __enter__(self) -> StepWatchdog:
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or self._count == 1:
            self.stop()
            return
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        with self._lock:
            self._after = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            if not self._armed:
                self._armed, self._progress = True, time.monotonic()

    # -- the thread's side ---------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                while self._pending and _ready(self._pending[0][1]):
                    self._last_step = self._pending.popleft()[0]
                    self._progress = now
                if not self._armed:
                    continue
                idle = now - self._progress
                limit = self._phase[1] if self._phase else self.timeout_s
            lost = self._roster.lost(self.lost_after_s) if self._roster else []
            if (limit is not None and idle > limit) or (lost and idle > self.lost_after_s):
                self._fire(idle, lost)

    def _resume_hint(self) -> str:
        if self.checkpoint_dir is None:
            return f"restart every process with {RESUME_FLAG} to resume from the last " \
                   "complete checkpoint"

        def latest() -> int | None:
            # orbax writes a step under a temporary name and renames it when complete
            # (Checkpoints keeps local directories); its own lookup needs a thread pool,
            # which refuses work once the interpreter is shutting down.
            with os.scandir(self.checkpoint_dir) as entries:
                return max((int(e.name) for e in entries
                            if e.name.isdigit() and e.is_dir()), default=None)

        step = _with_timeout(latest, 10.0, None)
        if step is None:
            return f"no complete checkpoint in {self.checkpoint_dir} to resume from"
        return (f"the last complete checkpoint, step {step} in {self.checkpoint_dir}, is "
                f"resumable: restart every process with {RESUME_FLAG}")

    def _fire(self, idle: float, lost: list[str]) -> None:
        with self._lock:
            last, phase, after = self._last_step, self._phase, self._after
        who = f"process {self._index} of {self._count}" if self._count > 1 else "training"
        what = f"no step completed for {idle:.0f} s"
        what += f" after step {last}" if last is not None else " (none yet)"
        if phase is not None:
            what += f" during {phase[0]}"
        if after is not None:
            what += f", since the loop ended with {after}"
        if lost:
            why = "lost " + ", ".join(lost) + ": it died or hangs"
        elif self._count > 1:
            why = f"all {self._count} processes are alive: a collective or the input is stuck"
        else:
            why = "the step or the input pipeline is stuck"
        line = f"{who}: {what}; {why}; exiting with status {self.exit_code}; " \
               f"{self._resume_hint()}"
        _with_timeout(lambda: (sys.stdout.flush(), sys.stderr.flush()), 2.0, None)
        os.write(2, (" ".join(line.split()) + "\n").encode())
        os._exit(self.exit_code)
