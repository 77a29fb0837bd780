"""Faults of a training run: SIGTERM stops every process after one agreed step, and a
process that dies stops the others within a bound, with one line naming it.

Each case runs this file as a script in subprocesses (signals end processes, and
``jax.distributed`` initialises once per process), with a toy jitted step whose mean
over a batch sharded on a global Mesh is an all-reduce across the processes, as in
DataParallel's jit path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = 100            # the preemption runs resume from this step
LOST_AFTER = 3.0       # the watchdog's lost_after_s in the kill runs
KILL_BOUND = 20.0      # seconds a survivor may outlive the killed process
JAX_ABORT = "JAX distributed service detected fatal errors"


# -- the processes -----------------------------------------------------------------
def _toy_step():
    """(step, weights, batch): a jitted update whose mean spans every process."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    def update(w, x):
        return w + jnp.mean(x), {"loss": jnp.mean(x * w)}

    step = jax.jit(update, in_shardings=(rep, rows), out_shardings=(rep, rep),
                   donate_argnums=(0,))
    weights = jax.device_put(jnp.zeros((), jnp.float32), rep)
    return step, weights, lambda: jax.make_array_from_process_local_data(
        rows, np.ones((2,), np.float32))


def _child(mode: str, port: int, pid: int, count: int, arg: str) -> None:
    from epam_jax.train import initialize_distributed
    from epam_jax.train.faults import Preemption, StepWatchdog, _get_action, _handler_address

    if count > 1:
        initialize_distributed(f"127.0.0.1:{port}", count, pid)
    step_fn, w, batch = _toy_step()

    if mode == "preempt":  # arg: the step after which each process signals itself
        signal_at = [int(s) for s in arg.split(",")]
        jax_handler = _handler_address(_get_action(signal.SIGTERM))  # jax's, if any
        preemption = Preemption(start_step=START).install()
        for step in range(START + 1, START + 2000):
            w, metrics = step_fn(w, batch())
            if preemption.reached(step):
                float(metrics["loss"])
                print(f"REACHED {step}", flush=True)
                print(preemption.message("ckpts"), flush=True)
                preemption.restore()
                if _handler_address(_get_action(signal.SIGTERM)) == jax_handler:
                    print("HANDLER RESTORED", flush=True)
                if count == 1:  # a second SIGTERM is final
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)
                    print("SURVIVED", flush=True)
                return
            if step == signal_at[pid]:
                print(f"SIGNAL {step}", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        print("NOT REACHED", flush=True)
        sys.exit(3)

    if mode == "kill":  # arg: the checkpoint directory
        with StepWatchdog(timeout_s=60, lost_after_s=LOST_AFTER, poll_s=0.2,
                          checkpoint_dir=arg) as watchdog:
            for step in range(1, 100000):
                w, metrics = step_fn(w, batch())
                watchdog.beat(step, metrics)
                if step % 2 == 0:  # what the loop's flush does every log_every_steps
                    float(metrics["loss"])
                print(f"STEP {step}", flush=True)
                time.sleep(0.05)

    if mode == "hang":  # a step that never completes, one process
        with StepWatchdog(timeout_s=float(arg), poll_s=0.2) as watchdog:
            w, metrics = step_fn(w, batch())
            watchdog.beat(1, metrics)
            with watchdog.phase("validation"):  # no limit here
                time.sleep(2 * float(arg))
            watchdog.beat(2)
            time.sleep(30)
        print("SURVIVED", flush=True)


# -- the test side -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp: Path, name: str, args: list) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log = tmp / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _reached(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("REACHED ")]
    assert len(lines) == 1, log.read_text()[-3000:]
    return int(lines[0].split()[1])


def test_preemption_handlers_are_put_back() -> None:
    from epam_jax.train.faults import Preemption, _get_action, _handler_address

    def c_handler() -> int:
        return _handler_address(_get_action(signal.SIGTERM))

    before, raw = signal.getsignal(signal.SIGTERM), c_handler()
    with Preemption() as preemption:
        assert signal.getsignal(signal.SIGTERM) == preemption._handle
        assert not preemption.reached(1) and preemption.step is None
    assert signal.getsignal(signal.SIGTERM) == before
    assert c_handler() == raw


def test_one_process_sigterm_stops_at_the_next_step_and_a_second_ends_it(
        tmp_path: Path) -> None:
    proc, log = _spawn(tmp_path, "one", ["preempt", 0, 0, 1, START + 3])
    assert _finish([proc], 60) == [-signal.SIGTERM], log.read_text()[-3000:]
    text = log.read_text()
    assert _reached(log) == START + 4, text
    assert "preempted (SIGTERM received by this process): stopped after step 104" in text
    assert "SURVIVED" not in text


@pytest.mark.parametrize("signal_at", ["5000,105", "104,104"], ids=["one", "both"])
def test_two_processes_stop_after_the_same_step(tmp_path: Path, signal_at: str) -> None:
    port = _free_port()
    runs = [_spawn(tmp_path, f"p{i}", ["preempt", port, i, 2, signal_at]) for i in range(2)]
    codes = _finish([p for p, _ in runs], 90)
    logs = [log for _, log in runs]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    steps = [_reached(log) for log in logs]
    assert steps[0] == steps[1] > min(int(s) for s in signal_at.split(",")), steps
    here = [f"process {i} of 2: preempted (SIGTERM received by this process)"
            in log.read_text() for i, log in enumerate(logs)]
    assert here == [signal_at == "104,104", True], here
    assert all("HANDLER RESTORED" in log.read_text() for log in logs)


def test_watchdog_ends_a_hung_step_but_not_a_phase(tmp_path: Path) -> None:
    proc, log = _spawn(tmp_path, "hang", ["hang", 0, 0, 1, 2])
    t0 = time.monotonic()
    assert _finish([proc], 60) == [75], log.read_text()[-3000:]
    text = log.read_text()
    assert time.monotonic() - t0 < 30
    assert "training: no step completed for 2 s after step 2;" in text, text
    assert "the step or the input pipeline is stuck" in text
    assert "SURVIVED" not in text


@pytest.mark.parametrize("victim", [1, 0])
def test_killing_a_process_stops_the_other_within_the_bound(tmp_path: Path,
                                                            victim: int) -> None:
    ckpts = tmp_path / "ckpts"
    for name in ("2", "4", "6.orbax-checkpoint-tmp-1"):  # step 6 was cut short
        (ckpts / name).mkdir(parents=True)
    port = _free_port()
    runs = [_spawn(tmp_path, f"p{i}", ["kill", port, i, 2, ckpts]) for i in range(2)]
    procs, logs = [p for p, _ in runs], [log for _, log in runs]
    try:
        deadline = time.monotonic() + 60
        while "STEP 5\n" not in logs[victim].read_text():
            assert time.monotonic() < deadline and procs[victim].poll() is None, \
                logs[victim].read_text()[-3000:]
            time.sleep(0.1)
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = procs[1 - victim]
        code = survivor.wait(timeout=KILL_BOUND + 60)
        took = time.monotonic() - killed
    finally:
        _finish(procs, 0.1)
    text = logs[1 - victim].read_text()
    assert code != 0 and took < KILL_BOUND, (code, took, text[-3000:])
    if victim == 1:  # ours: one line naming the lost process and the checkpoint
        line = [ln for ln in text.splitlines() if ln.startswith("process 0 of 2: ")]
        assert code == 75 and len(line) == 1, text[-3000:]
        assert "lost process 1 (no sign of life for" in line[0]
        assert "the last complete checkpoint, step 4 in" in line[0]
        assert "restart every process with --config.resume=True" in line[0]
    else:  # the coordinator's loss: jax aborts the others at once, before any watchdog
        assert code in (-signal.SIGABRT, 128 + signal.SIGABRT), (code, text[-3000:])
        assert JAX_ABORT in text


if __name__ == "__main__":
    mode, port, pid, count, arg = sys.argv[1:]
    _child(mode, int(port), int(pid), int(count), arg)
