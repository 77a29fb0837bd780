"""epam_jax.train.loop end to end through train.py on a tiny synthetic set (mode 'pose':
the loop is the same for every mode, and the pose stream alone traces and compiles in
half the time; EPAM-Net's two streams train through train.py in test_evaluate):
a run preempted with SIGTERM (it saves the step and exits 0), resumed, killed with
SIGKILL and resumed again ends with exactly the parameters of an uninterrupted run and
logs each step once, in ``metrics.jsonl`` and in TensorBoard; unfinished checkpoint
writes are ignored; a non-finite loss stops the run with the last good checkpoint
intact. The runs share compiled programs through the run's compilation cache."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
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




def _events(folder: Path) -> list:
    """Every event of the TensorBoard files in ``folder``, oldest file first (TFRecord:
    length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            events.append(Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return events


def _scalar_steps(events: list, tag: str, purge: bool) -> list[int]:
    """The steps TensorBoard shows for ``tag``; with ``purge``, a SessionLog START at
    step s hides the earlier events of step >= s, as TensorBoard does."""
    from tensorboardX.proto.event_pb2 import SessionLog

    shown: list[int] = []
    for event in events:
        if purge and event.HasField("session_log") and (
                event.session_log.status == SessionLog.START):
            shown = [s for s in shown if s < event.step]
        for value in event.summary.value:
            if value.tag == tag:
                shown.append(event.step)
    return shown


def test_metric_writer_drops_the_rows_a_resumed_run_redoes(tmp_path: Path) -> None:
    from epam_jax.train.loop import MetricWriter

    first = MetricWriter(tmp_path, True)
    for step in range(1, 7):
        first.write(step, "train", {"loss": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "kind": "tra')  # a row cut off by a kill
    resumed = MetricWriter(tmp_path, True, start_step=4)
    for step in (5, 6):
        resumed.write(step, "train", {"loss": 10.0 + step})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 15.0), (6, 16.0)]
    events = _events(tmp_path / "tensorboard")
    assert _scalar_steps(events, "train/loss", purge=False) == [1, 2, 3, 4, 5, 6, 5, 6]
    assert _scalar_steps(events, "train/loss", purge=True) == [1, 2, 3, 4, 5, 6]
    # a second process (not the first) writes nothing
    MetricWriter(tmp_path / "nothing", False).close()
    assert not (tmp_path / "nothing").exists()


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
        export_best=False, log_every_steps=4, mode="pose").items()]
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


@pytest.mark.slow(seconds=100)
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
    assert lines[-2].startswith("final validation top-1: ") and lines[-2].endswith("%")
    assert lines[-1] == f"checkpoint: {tmp_path / 'a' / 'model'}"
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

    a = load_variables(tmp_path / "a" / "model", expect_model="pose", expect_num_classes=3)
    b = load_variables(tmp_path / "b" / "model", expect_model="pose", expect_num_classes=3)
    leaves = jax.tree_util.tree_leaves_with_path(a)
    assert len(leaves) > 100
    for (path, x), y in zip(leaves, jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    assert load_meta(tmp_path / "b" / "model")["step"] == STEPS
    assert _val_records(tmp_path / "a")[-1] == _val_records(tmp_path / "b")[-1]
    # each step logged once although b redid the steps after each of its checkpoints: a
    # row every 4 steps, plus one for the steps up to the preemption
    rows = {w: [json.loads(line) for line in (tmp_path / w / "metrics.jsonl").read_text()
                .splitlines()] for w in "ab"}
    keys = [(r["step"], r["kind"]) for r in rows["b"]]
    assert len(set(keys)) == len(keys)
    train_steps = sorted({4, 8, 12, 16, preempted_at})
    assert [s for s, kind in keys if kind == "train"] == train_steps
    assert [s for s, kind in keys if kind == "val"] == [8, 16]
    kept = ("step", "kind", "loss", "accuracy")  # the first row, untouched (not timings)
    assert [rows["b"][0][k] for k in kept] == [rows["a"][0][k] for k in kept]
    events = _events(tmp_path / "b" / "tensorboard")
    assert _scalar_steps(events, "train/loss", purge=True) == train_steps
    assert _scalar_steps(events, "val/fused/top1", purge=True) == [8, 16]
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
