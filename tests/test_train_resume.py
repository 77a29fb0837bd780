"""End-to-end training through train.py on a tiny synthetic set (mode 'epam'):
a run preempted with SIGTERM (it saves the step and exits 0), resumed, killed with
SIGKILL and resumed again ends with exactly the parameters of an uninterrupted run;
unfinished checkpoint writes are ignored; a non-finite loss stops the run with the last
good checkpoint intact.

The runs share one compiled program through the persistent compilation cache.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from epam_jax.checkpoints import load_meta, load_variables
from epam_jax.data import ClipConfig, ClipLoader, make_synthetic_dataset, save_annotations
from epam_jax.train import Checkpoints
from epam_jax.train.lock import LOCK_FILE, read_holder

ROOT = Path(__file__).resolve().parents[1]
STEPS, CKPT_EVERY, BATCH = 16, 4, 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla_cache")


def _dataset(out: Path) -> Path:
    return make_synthetic_dataset(out, num_classes=3, num_train=32, num_val=5, frames=(10, 24),
                                  size=(32, 32), seed=5)


def _command(dataset: Path, workdir: Path) -> list[str]:
    overrides = dict(
        annotations=dataset, rgb_size=32, heatmap_size=8, clip_len=8, rgb_stride=2,
        num_classes=3)
    args = [f"--config.data.{k}={v}" for k, v in overrides.items()]
    args += [f"--config.{k}={v}" for k, v in dict(
        batch_size=BATCH, eval_batch_size=BATCH, num_train_steps=STEPS, eval_every_steps=8,
        checkpoint_every_steps=CKPT_EVERY, keep_checkpoints=2, progress_bar=False,
        export_best=False, log_every_steps=4).items()]
    args += ["--config.model.dropout_ratio=0.5", "--config.optimizer.lr=0.05"]
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
            "--workdir", str(workdir), *args]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    return env


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=_env(cache))


def _finished_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() \
        else []


def _wait_for_checkpoint(proc: subprocess.Popen, workdir: Path, step: int) -> None:
    """Until a checkpoint of ``step`` or later is complete in ``workdir``."""
    while not [s for s in _finished_steps(workdir) if s >= step]:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.02)


def _val_records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "val"]


def test_sigterm_sigkill_resume_and_non_finite_loss(tmp_path, cache) -> None:
    """One test, so that the runs share a compiled program whatever xdist's scheduling."""
    check_interrupted_runs_end_with_the_uninterrupted_parameters(tmp_path, cache)
    check_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, cache)


def check_interrupted_runs_end_with_the_uninterrupted_parameters(tmp_path: Path, cache: Path
                                                                 ) -> None:
    dataset = _dataset(tmp_path / "data")
    straight = _run(_command(dataset, tmp_path / "a"), cache)
    assert straight.returncode == 0, straight.stderr[-3000:]
    lines = straight.stdout.strip().splitlines()
    assert lines[-3].startswith("final validation top-1: ") and lines[-3].endswith("%")
    assert lines[-2] == f"checkpoint: {tmp_path / 'a' / 'model'}"
    assert lines[-1] == f"attention picture: {tmp_path / 'a' / 'attention.png'}"
    assert (tmp_path / "a" / "attention.png").stat().st_size > 0
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
    val = _val_records(tmp_path / "a")
    assert [r["step"] for r in val] == [8, 16]
    assert all(r["num_samples"] == 5 for r in val)  # 5 samples in batches of 4: one padded
    train = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text()
             .splitlines() if json.loads(line)["kind"] == "train"]
    assert train and all(0.0 <= r["input_wait"] <= 1.0 for r in train)
    assert any(r["input_wait"] > 0 for r in train)  # next() is timed

    # The same run, preempted (SIGTERM) after the first checkpoint: it finishes the step,
    # saves it and exits 0; resumed, it is killed (SIGKILL) past the middle; resumed again
    # it must end exactly where the uninterrupted run did.
    workdir = tmp_path / "b"
    term = subprocess.Popen(_command(dataset, workdir), cwd=ROOT, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # while it runs, a second run on its workdir is refused at once, naming it
        while (read_holder(workdir / LOCK_FILE, attempts=1) or {}).get("pid") != term.pid:
            assert term.poll() is None, "the run ended before it took its workdir"
            time.sleep(0.02)
        second = _run(_command(dataset, workdir), cache)
        assert second.returncode != 0
        assert (f"error: workdir {workdir} is in use by another training run: pid {term.pid} "
                "on host") in second.stderr, second.stderr[-3000:]
        assert len(second.stderr.strip().splitlines()) == 1
        _wait_for_checkpoint(term, workdir, 1)
        term.send_signal(signal.SIGTERM)
        out, err = term.communicate(timeout=300)
    finally:
        term.kill()
        term.wait()
    assert term.returncode == 0, err[-3000:]
    preempted_at = max(_finished_steps(workdir))
    assert 1 <= preempted_at < STEPS
    assert (f"preempted (SIGTERM received by this process): stopped after step {preempted_at}, "
            f"checkpoint of step {preempted_at} in {workdir / 'checkpoints'} saved") in out
    assert not (workdir / "model").exists()

    killed = subprocess.Popen(_command(dataset, workdir), cwd=ROOT, env=_env(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(killed, workdir, max(8, preempted_at + 1))
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    stopped_at = max(_finished_steps(workdir))
    assert preempted_at < stopped_at < STEPS
    resumed = _run(_command(dataset, workdir), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir / 'checkpoints' / str(stopped_at)}" in resumed.stdout

    a = load_variables(tmp_path / "a" / "model", expect_model="epam", expect_num_classes=3)
    b = load_variables(tmp_path / "b" / "model", expect_model="epam", expect_num_classes=3)
    leaves = jax.tree_util.tree_leaves_with_path(a)
    assert len(leaves) > 100
    for (path, x), y in zip(leaves, jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert load_meta(tmp_path / "b" / "model")["step"] == STEPS
    assert _val_records(tmp_path / "a")[-1] == _val_records(tmp_path / "b")[-1]
    assert _finished_steps(tmp_path / "b")[-1] == STEPS

    # A save cut short leaves only orbax's temporary directory: never listed or restored.
    ckpt_dir = tmp_path / "b" / "checkpoints"
    shutil.copytree(ckpt_dir / str(STEPS), ckpt_dir / f"{STEPS + 3}.orbax-checkpoint-tmp")
    assert Checkpoints(ckpt_dir).latest_step() == STEPS


def check_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path: Path, cache: Path
                                                              ) -> None:
    dataset = _dataset(tmp_path / "data2")
    # Find a training sample first seen at step 5 and poison its keypoint scores: finite
    # (non-finite ones are refused when the annotations load), but so large that its
    # heatmaps overflow float32 in the first convolution.
    loader = ClipLoader(dataset, ClipConfig(rgb=False, heatmap_size=(8, 8), clip_len=8),
                        BATCH, True, split="train", seed=0)
    it = iter(loader)
    seen = [set(next(it)["index"].tolist()) for _ in range(5)]
    poisoned = min(seen[4] - set().union(*seen[:4]))
    raw = pickle.loads(dataset.read_bytes())
    raw["annotations"][poisoned]["keypoint_score"][:] = np.float32(3e38)
    save_annotations(dataset, raw["annotations"], raw["split"])

    done = _run(_command(dataset, tmp_path / "w"), cache)
    assert done.returncode != 0
    assert "NonFiniteLossError: non-finite loss (" in done.stderr
    assert "at step 5" in done.stderr and "last good checkpoint is step 4" in done.stderr
    assert _finished_steps(tmp_path / "w") == [4]
    assert not (tmp_path / "w" / "model").exists()
