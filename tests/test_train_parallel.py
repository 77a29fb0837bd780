"""Data parallelism on CPU devices: 1 device, 4 under jit, 4 under pmap, and two processes
(gloo collectives over 127.0.0.1) reach the same parameters from the same global batches.

XLA_FLAGS must be set before jax starts, so the configurations run in subprocesses (this
file run as a script): one process with 4 CPU devices trains on 1, then 4 under jit, then
4 under pmap; two processes of one device each train together. Mode 'rgb' with small
clips keeps compiles short. Every run starts from the weights the test makes once and
saves (``stable_start``: zero residual gammas, as the original's initialisation, keep
three steps at a high learning rate stable, so summation order stays noise); dropout is
off because pmap draws a mask per device while jit draws one for the global batch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

STEPS, GLOBAL_BATCH, NUM_CLASSES = 3, 8, 5


def global_batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"rgb": rng.standard_normal((GLOBAL_BATCH, 4, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32)}
            for _ in range(STEPS)]


def run(parallel: str, num_devices: int | None, out: str, process: tuple[int, int, int]
        ) -> None:
    """Train STEPS steps; the first process writes the flat params/batch_stats to ``out``."""
    import jax

    from epam_jax.train import (
        DataParallel,
        create_train_state,
        initial_variables,
        initialize_distributed,
        make_optimizer,
        make_schedule,
        training_model,
    )

    port, pid, count = process
    if count > 1:
        initialize_distributed(f"127.0.0.1:{port}", count, pid)
    devices = jax.devices()[:num_devices] if num_devices else None
    dp = DataParallel(parallel, devices)
    model = training_model("rgb", NUM_CLASSES, dropout_ratio=0.0, bn_axis_name=dp.bn_axis_name)
    # the weights the test saved: no process compiles an init of its own
    variables = initial_variables(model, "rgb", jax.random.PRNGKey(0),
                                  checkpoint=str(Path(out).parent / "init"))
    tx = make_optimizer(variables["params"], make_schedule(0.2, 10))
    state = dp.put_state(jax.device_put(create_train_state(model, variables, tx, 0),
                                        dp.replicated))
    step = dp.train_step(mode="rgb")
    local = GLOBAL_BATCH // count
    for batch in global_batches():
        mine = {k: v[pid * local:(pid + 1) * local] for k, v in batch.items()}
        state, metrics = step(state, dp.put_batch(mine))
    final = jax.device_get(dp.get_state(state).variables)
    assert int(dp.fetch(metrics)["count"]) == GLOBAL_BATCH
    if pid == 0:
        flat = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(final)}
        np.savez(out, **flat)


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    # the suite's compiler flags (conftest), with this run's number of CPU devices
    env["XLA_FLAGS"] = " ".join(filter(None, [
        env.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={devices}"]))
    env["JAX_PLATFORMS"] = "cpu"
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _spawn(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], env=_env(devices),
                            cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    try:
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _relative(a: dict, b: dict) -> float:
    """Largest difference of any parameter or statistic, relative to the largest value.

    Relative to the model's scale rather than per tensor: a tensor that stays near its
    zero initialisation (a BatchNorm bias of ~1e-6 after three steps) moves by ~1e-7
    when a different summation order flips one ReLU decision, which is noise, while a
    real error (statistics or gradients not reduced over every device) moves many
    values by the size of an update, orders of magnitude more.
    """
    assert a.keys() == b.keys()
    scale = max(float(np.abs(v).max()) for v in a.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) / scale


def stable_start(model) -> dict:
    """Random weights shaped like the original's initialisation, without compiling one:
    residual gammas zero (each block starts as its shortcut), BatchNorm statistics
    and biases at their initial values. Random gammas and statistics make three steps
    at a high learning rate chaotic (runs drift apart by far more than rounding)."""
    from conftest import random_variables  # here: the training subprocesses skip conftest

    def start(path, value):
        keys = [getattr(k, "key", "") for k in path]
        if keys[0] == "batch_stats":
            return np.full_like(value, 1.0 if keys[-1] == "var" else 0.0)
        if keys[-1] == "bias":
            return np.zeros_like(value)
        if keys[-1] == "scale":
            return np.full_like(value, 0.0 if keys[-3:-1] == ["conv3", "bn"] else 1.0)
        return value

    return jax.tree_util.tree_map_with_path(start, random_variables(model))


@pytest.mark.slow(seconds=120)
def test_one_device_jit_pmap_and_two_processes_agree(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from epam_jax.checkpoints import save_variables
    from epam_jax.train import training_model

    init = stable_start(training_model("rgb", NUM_CLASSES, dropout_ratio=0.0))
    save_variables(tmp_path / "init", init)
    runs = {"one": ("jit", "1"), "jit4": ("jit", "0"), "pmap4": ("pmap", "0")}
    local = [arg for name, (parallel, n) in runs.items()
             for arg in (parallel, n, str(tmp_path / f"{name}.npz"), "0", "0", "1")]
    procs = [_spawn(local, 4)]
    procs += [_spawn(["jit", "0", str(tmp_path / "two.npz"), str(port), str(i), "2"], 1)
              for i in range(2)]
    _wait(procs)
    result = {name: dict(np.load(tmp_path / f"{name}.npz"))
              for name in ("one", "jit4", "pmap4", "two")}
    start = {jax.tree_util.keystr(k): np.asarray(v)
             for k, v in jax.tree_util.tree_leaves_with_path(init)}
    assert _relative(start, result["one"]) > 1e-3  # it trained
    for name in ("jit4", "pmap4", "two"):
        assert _relative(result["one"], result[name]) < 1e-5, name


if __name__ == "__main__":
    args = sys.argv[1:]  # one or more runs of six: parallel, devices, out, port, pid, count
    for i in range(0, len(args), 6):
        parallel, n, out, port, pid, count = args[i:i + 6]
        run(parallel, int(n) or None, out, (int(port), int(pid), int(count)))
