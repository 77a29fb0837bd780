"""epam_jax.train.loop: a resumed run logs each step once, in ``metrics.jsonl`` and in
TensorBoard (the rows and events of the steps it redoes are dropped)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from epam_jax.data import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
STEPS, CKPT_EVERY = 4, 2  # the resumed training run


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


def _resume_child(data: str, workdir: str) -> None:
    """In a subprocess: a run of STEPS steps, then, as if it had been killed after the
    rows of its last step but before that step's checkpoint, that checkpoint removed and
    a row cut off; the same command again resumes."""
    sys.path.insert(0, str(ROOT))
    import configs.demo
    from epam_jax.train import train_and_evaluate

    c = configs.demo.get_config()
    c.mode = "pose"  # one stream: the cheapest compile; the bookkeeping is the same
    c.data.annotations, c.data.num_classes = data, NUM_CLASSES
    c.data.clip_len, c.data.heatmap_size, c.data.worker_count = 8, 8, 0
    c.batch_size = c.eval_batch_size = 2
    c.num_train_steps = c.eval_every_steps = STEPS
    c.checkpoint_every_steps, c.keep_checkpoints, c.log_every_steps = CKPT_EVERY, 3, 1
    c.progress_bar = c.export_best = c.attention_picture = False
    c.optimizer.warmup_steps, c.optimizer.lr = 0, 0.05
    work = Path(workdir)
    train_and_evaluate(c, work)
    shutil.copy(work / "metrics.jsonl", work / "straight.jsonl")
    shutil.rmtree(work / "checkpoints" / str(STEPS))
    with open(work / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "ki')
    train_and_evaluate(c, work)


def test_resumed_training_run_logs_every_step_once(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "data", num_classes=NUM_CLASSES, num_train=8,
                                  num_val=2, frames=(10, 16), size=(32, 32), seed=5)
    work = tmp_path / "w"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),  # the rerun compiles nothing
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
    done = subprocess.run([sys.executable, __file__, "resume", str(data), str(work)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {work / 'checkpoints' / str(CKPT_EVERY)}" in done.stdout

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (work / name).read_text().splitlines()]

    straight, resumed = rows("straight.jsonl"), rows("metrics.jsonl")
    keys = [(r["step"], r["kind"]) for r in resumed]
    assert len(keys) == len(set(keys))
    assert keys == [(r["step"], r["kind"]) for r in straight] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "val")]
    assert resumed[:CKPT_EVERY] == straight[:CKPT_EVERY]  # the rows kept are untouched
    assert resumed[-1]["fused/top1"] == straight[-1]["fused/top1"]  # the same steps redone
    events = _events(work / "tensorboard")
    assert _scalar_steps(events, "train/loss", purge=False) == [1, 2, 3, 4, 3, 4]
    assert _scalar_steps(events, "train/loss", purge=True) == [1, 2, 3, 4]
    assert _scalar_steps(events, "val/fused/top1", purge=True) == [4]


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        _resume_child(*sys.argv[2:4])
