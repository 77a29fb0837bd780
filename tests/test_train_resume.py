"""End-to-end training through train.py on a tiny synthetic set (mode 'epam'):
a run killed with SIGKILL and resumed ends with exactly the parameters of an
uninterrupted run; unfinished checkpoint writes are ignored; a non-finite loss stops
the run with the last good checkpoint intact.

The three runs share one compiled program through the persistent compilation cache.
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
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               XLA_FLAGS="--xla_backend_optimization_level=0")
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    return env


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=_env(cache))


def _finished_steps(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() \
        else []


def _val_records(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "val"]


def test_sigkill_resume_and_non_finite_loss(tmp_path, cache) -> None:
    """One test, so that the runs share a compiled program whatever xdist's scheduling."""
    check_sigkill_and_resume_end_with_the_uninterrupted_parameters(tmp_path, cache)
    check_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, cache)


def check_sigkill_and_resume_end_with_the_uninterrupted_parameters(tmp_path: Path, cache: Path
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

    # The same run, killed once a checkpoint past the middle is complete, then resumed.
    killed = subprocess.Popen(_command(dataset, tmp_path / "b"), cwd=ROOT, env=_env(cache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not [s for s in _finished_steps(tmp_path / "b") if s >= 8]:
            assert killed.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    stopped_at = max(_finished_steps(tmp_path / "b"))
    assert stopped_at < STEPS
    resumed = _run(_command(dataset, tmp_path / "b"), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'b' / 'checkpoints'}" in resumed.stdout

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
    # Find a training sample first seen at step 5 and poison its keypoint scores.
    loader = ClipLoader(dataset, ClipConfig(rgb=False, heatmap_size=(8, 8), clip_len=8),
                        BATCH, True, split="train", seed=0)
    it = iter(loader)
    seen = [set(next(it)["index"].tolist()) for _ in range(5)]
    poisoned = min(seen[4] - set().union(*seen[:4]))
    raw = pickle.loads(dataset.read_bytes())
    raw["annotations"][poisoned]["keypoint_score"][:] = np.inf
    save_annotations(dataset, raw["annotations"], raw["split"])

    done = _run(_command(dataset, tmp_path / "w"), cache)
    assert done.returncode != 0
    assert "NonFiniteLossError: non-finite loss (" in done.stderr
    assert "at step 5" in done.stderr and "last good checkpoint is step 4" in done.stderr
    assert _finished_steps(tmp_path / "w") == [4]
    assert not (tmp_path / "w" / "model").exists()
