"""Bad command lines and failed runs of the tools, each ending in one clear line:

- ``train.py``: a mistyped ``--config.KEY`` (with the closest valid keys), a value of
  the wrong type, a config file that is missing or has no ``get_config``: one line
  ``error: ...`` and exit status 1, before any training work (subprocesses, cheap);
- predict, extract, evaluate, stream, export, prepare: a command that fails leaves no
  empty output folder behind (``epam_jax.cli.output_dirs``), while a folder that existed
  before, or holds results to resume from, is kept;
- a resumed training run: ``metrics.jsonl`` and TensorBoard hold each step once;
- huge and non-positive numeric arguments: capped (``--batch-size``) or one line.

Checkpoints are not what these tests are about: where a run must get past loading one,
``load_model`` is replaced by a stub (EPAM-Net without variables) and nothing compiles.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from epam_jax.checkpoints import LoadedModel
from epam_jax.cli import OutputPathBlocked, output_dirs, run_cli
from epam_jax.data import load_annotations, make_synthetic_dataset, save_annotations
from epam_jax.models import EPAMNet

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
STEPS, CKPT_EVERY = 4, 2  # the resumed training run


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three synthetic clips of 32x32 (annotations.pkl and videos/)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_classes=NUM_CLASSES,
                                  num_train=2, num_val=1, frames=(10, 16), size=(32, 32),
                                  seed=3)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A readable 64x48 mp4 of 20 frames."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for _ in range(20):
            frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture
def bad_checkpoint(tmp_path: Path) -> Path:
    """A folder that is not a checkpoint (no epam_model.json)."""
    path = tmp_path / "not_a_checkpoint"
    path.mkdir()
    return path


def stub_model() -> LoadedModel:
    """An EPAM-Net with heads and no variables: enough to get past loading."""
    meta = {"model": "epam", "num_classes": NUM_CLASSES, "checkpoint": "stub",
            "attention_type": "CBAM_spatial_efficient_temporal"}
    return LoadedModel(EPAMNet(num_classes=NUM_CLASSES), {"params": {}, "batch_stats": {}},
                       meta)


def one_line_error(entry, argv: list[str]) -> str:
    """Run a CLI ``main`` as its ``python -m`` entry point does; the one-line message."""
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: entry(argv))
    message = str(info.value)
    assert info.value.code not in (0, None) and "\n" not in message, message
    return message


def refuses_checkpoint(message: str, path: Path) -> bool:
    """Whether ``message`` is the checkpoint loader's refusal of ``path``."""
    return message.startswith(f"error: {path} ") and "checkpoint" in message


def argparse_error(entry, argv: list[str], capsys) -> str:
    """The argument parser's refusal: exit status 2 and one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument "), err
    return err.strip()


# --------------------------------------------------------------------------- 1. train.py


def test_train_py_bad_config_arguments_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "no_get_config.py").write_text("x = 1\n")
    cases = {
        "--config.optimzer.lr=0.1": "error: unknown config key 'optimzer.lr' in "
        "--config.optimzer.lr=0.1; closest valid keys: optimizer.lr, optimizer.base_lr, "
        "optimizer.nesterov",
        "--config.data.batchsize=4": "error: unknown config key 'data.batchsize' in "
        "--config.data.batchsize=4; closest valid keys: batch_size, eval_batch_size, "
        "optimizer.base_batch_size",
        "--config.batch_size=abc": "error: --config.batch_size=abc: expected int (the type "
        "of batch_size), got 'abc'",
        "missing": f"error: config file {tmp_path / 'none.py'} not found (--config expects "
        "a Python file with a get_config() function)",
        "no_get_config": f"error: config file {tmp_path / 'no_get_config.py'} has no "
        "get_config() function",
    }
    procs = {}
    for case in cases:  # all at once: each only imports and fails
        config = {"missing": tmp_path / "none.py",
                  "no_get_config": tmp_path / "no_get_config.py"}.get(case,
                                                                      ROOT / "configs/demo.py")
        extra = [] if case in ("missing", "no_get_config") else [case]
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--workdir",
               str(tmp_path / "w"), *extra]
        procs[case] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (case, err[-2000:])
        assert err.strip() == cases[case], (case, err[-2000:])
        assert out == ""
    assert not (tmp_path / "w").exists()  # nothing was started


# --------------------------------------------------------------------------- 2. outputs


def test_output_dirs_removes_only_the_empty_folders_it_made(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with output_dirs(tmp_path / "a" / "b" / "c", existing, None) as made:
            assert made == [tmp_path / "a" / "b" / "c", existing]
            assert (tmp_path / "a" / "b" / "c").is_dir()
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # a/b/c all gone

    # scratch files (a settings record) do not count as results; a clip file does
    with pytest.raises(KeyboardInterrupt):
        with output_dirs(tmp_path / "s", scratch=("meta.json",)) as (out,):
            (out / "meta.json").write_text("{}")
            raise KeyboardInterrupt
    assert not (tmp_path / "s").exists()
    with pytest.raises(OSError, match="disk full"):
        with output_dirs(tmp_path / "k" / "feats", scratch=("meta.json",)) as (out,):
            (out / "meta.json").write_text("{}")
            (out / "clip1.npz").write_bytes(b"complete")
            raise OSError("disk full")
    assert sorted(p.name for p in (tmp_path / "k" / "feats").iterdir()) == [
        "clip1.npz", "meta.json"]
    with output_dirs(tmp_path / "ok"):  # success keeps the folder, even empty
        pass
    assert (tmp_path / "ok").is_dir()

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathBlocked, match=f"cannot create the output directory "
                       f"{blocker / 'out'}: {blocker} is a file, not a directory") as info:
        with output_dirs(tmp_path / "first", blocker / "out"):
            pass
    assert isinstance(info.value, NotADirectoryError) and isinstance(info.value,
                                                                     PermissionError)
    assert not (tmp_path / "first").exists()  # made before the refusal, removed again


def test_predict_that_fails_leaves_no_output_folder(tmp_path: Path, video: Path,
                                                    bad_checkpoint: Path) -> None:
    from epam_jax import predict

    out = tmp_path / "new" / "pred"
    base = ["--checkpoint", str(bad_checkpoint), "--out-dir", str(out)]
    assert one_line_error(predict.main, [str(tmp_path / "missing.mp4"), *base]) == (
        f"error: no video file at {tmp_path / 'missing.mp4'}")
    message = one_line_error(predict.main, [str(video), *base,
                                            "--attention-gif", str(tmp_path / "gif" / "a.gif")])
    assert refuses_checkpoint(message, bad_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_checkpoint"]


def test_extract_that_fails_leaves_no_output_folder_but_keeps_one_it_resumes(
        tmp_path: Path, dataset: Path, bad_checkpoint: Path, monkeypatch) -> None:
    from epam_jax import extract

    feats = tmp_path / "feats"
    argv = ["--checkpoint", str(bad_checkpoint), "--out-dir", str(feats), "--annotations",
            str(dataset), "--video-root", str(dataset.parent / "videos"), "--size", "32",
            "--quiet"]
    assert refuses_checkpoint(one_line_error(extract.main, argv), bad_checkpoint)
    assert not feats.exists()

    # past the checkpoint: extract_meta.json is written, then the videos are missing
    monkeypatch.setattr(extract, "load_model", lambda path: stub_model())
    empty_root = tmp_path / "no_videos"
    empty_root.mkdir()
    argv[argv.index("--video-root") + 1] = str(empty_root)
    assert "videos not found" in one_line_error(extract.main, argv)
    assert not feats.exists()

    # a folder that holds results (or existed) is kept as it is
    feats.mkdir()
    (feats / "done_clip.npz").write_bytes(b"complete")
    assert "videos not found" in one_line_error(extract.main, argv)
    assert sorted(p.name for p in feats.iterdir()) == ["done_clip.npz", extract.META_FILE]


def test_evaluate_export_prepare_that_fail_leave_no_output_folder(
        tmp_path: Path, dataset: Path, bad_checkpoint: Path, capsys, monkeypatch) -> None:
    from epam_jax import evaluate, export, prepare

    videos = str(dataset.parent / "videos")
    message = one_line_error(evaluate.main, [
        "--checkpoint", str(bad_checkpoint), "--annotations", str(dataset), "--video-root",
        videos, "--out-dir", str(tmp_path / "eval"), "--confusion",
        str(tmp_path / "pics" / "confusion.png")])
    assert refuses_checkpoint(message, bad_checkpoint)
    message = one_line_error(export.main, [str(bad_checkpoint), str(tmp_path / "exp" / "m"),
                                           "--format", "stablehlo"])
    assert refuses_checkpoint(message, bad_checkpoint)
    # prepare: the annotations name videos of another pattern; none is found
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep"), "--video-pattern", "{frame_dir}_x.mp4",
                         "--no-progress"]) == 1
    assert (tmp_path / "prep" / prepare.MANIFEST_NAME).is_file()  # the failures' record
    shutil.rmtree(tmp_path / "prep")
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep"), "--split", "nosuch"]) == 2
    assert "error:" in capsys.readouterr().err

    def no_plan(*args, **kwargs):  # a failure once the folder and its lock are made
        raise ValueError("cannot plan")

    monkeypatch.setattr(prepare, "_plan", no_plan)
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep" / "sub")]) == 2
    assert capsys.readouterr().err == "error: cannot plan\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_checkpoint"]


def test_stream_that_fails_after_making_its_folders_removes_them(
        tmp_path: Path, video: Path, dataset: Path, monkeypatch) -> None:
    from epam_jax import stream

    ann = dict(load_annotations(dataset)[0], total_frames=20, img_shape=(48, 64),
               original_shape=(48, 64))
    ann["keypoint"] = np.resize(ann["keypoint"], (1, 20, 17, 2))
    ann["keypoint_score"] = np.ones((1, 20, 17), np.float32)
    save_annotations(tmp_path / "poses.pkl", [ann])

    def no_compile(self) -> float:
        raise RuntimeError("the model failed to compile")

    monkeypatch.setattr(stream._Recognizer, "warm_up", no_compile)
    with pytest.raises(RuntimeError, match="failed to compile"):
        stream.recognize_stream(os.fspath(video), stub_model(), tmp_path / "out" / "timeline",
                                poses=tmp_path / "poses.pkl", size=32,
                                video_out=tmp_path / "annotated" / "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.pkl"]


# --------------------------------------------------------------------------- 3. metrics


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
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
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


# --------------------------------------------------------------------------- 5. numbers


def test_huge_batch_size_is_capped_at_the_clips(tmp_path: Path, dataset: Path,
                                                monkeypatch) -> None:
    import jax

    from epam_jax import evaluate, extract
    from epam_jax.data import loader

    devices = len(jax.local_devices())
    clips = len(load_annotations(dataset))
    rows = -(-clips // devices) * devices
    monkeypatch.setattr(extract, "load_model", lambda path: stub_model())
    seen: list[int] = []

    def make_forward(loaded, fusion, pooling, inputs):
        def forward(batch):
            seen.append(len(batch["rgb"]))
            return {"attention": np.zeros((len(batch["rgb"]), 4, 2, 2, 1), np.float32)}
        return forward, devices

    monkeypatch.setattr(extract, "make_forward", make_forward)
    written = extract.main(["--checkpoint", "stub", "--out-dir", str(tmp_path / "f"),
                            "--annotations", str(dataset), "--video-root",
                            str(dataset.parent / "videos"), "--size", "32", "--quiet",
                            "--batch-size", "1000"])  # (unfixed: 1000 clips decoded)
    assert len(written) == clips and seen == [rows]

    class Stop(Exception):
        pass

    class Loader(loader.ClipLoader):  # the batch evaluation asks for, then stop
        def __init__(self, annotations, config, batch_size, *args, **kwargs):
            seen.append(batch_size)
            raise Stop

    monkeypatch.setattr(loader, "ClipLoader", Loader)
    config = extract.ClipConfig(video_root=str(dataset.parent / "videos"), rgb_size=(32, 32),
                                heatmap_size=(8, 8), num_clips=2)
    with pytest.raises(Stop):
        evaluate.evaluate_model(stub_model(), load_annotations(dataset), config,
                                batch_size=100000, progress=False)
    assert seen[-1] == -(-2 * clips // devices) * devices  # 2 views a clip


def test_non_positive_numbers_are_refused_in_one_line(tmp_path: Path, video: Path,
                                                      dataset: Path, capsys) -> None:
    from epam_jax import evaluate, extract, predict, stream

    missing = str(tmp_path / "no_checkpoint")  # refused before the checkpoint is read
    pred = [str(video), "--checkpoint", missing]
    assert one_line_error(predict.main, [*pred, "--size", "30"]) == (
        "error: --size must be a positive multiple of 4, got 30")
    assert one_line_error(predict.main, [*pred, "--top-k", "0"]) == (
        "error: --top-k must be > 0, got 0")
    assert argparse_error(predict.main, [*pred, "--top-k", "many"], capsys) == (
        "error: argument --top-k: invalid int value: 'many' "
        "(usage: python -m epam_jax.predict -h)")

    ext = ["--checkpoint", missing, "--out-dir", str(tmp_path / "f"), "--annotations",
           str(dataset), "--video-root", str(tmp_path)]
    assert one_line_error(extract.main, [*ext, "--batch-size", "0"]) == (
        "error: --batch-size must be > 0, got 0")
    assert argparse_error(extract.main, [*ext, "--size", "30"], capsys) == (
        "error: argument --size: expected a positive multiple of 4, got 30 "
        "(usage: python -m epam_jax.extract -h)")

    ev = ["--checkpoint", missing, "--annotations", str(dataset), "--video-root",
          str(tmp_path)]
    for flag, value, expected in (("--batch-size", "0", "a positive integer"),
                                  ("--workers", "-1", "an integer >= 0"),
                                  ("--num-clips", "0", "a positive integer"),
                                  ("--size", "30", "a positive multiple of 4")):
        assert argparse_error(evaluate.main, [*ev, flag, value], capsys) == (
            f"error: argument {flag}: expected {expected}, got {value} "
            "(usage: python -m epam_jax.evaluate -h)")

    st = [str(video), "--checkpoint", missing, "--out-dir", str(tmp_path / "s")]
    for flag, value, expected in (
            ("--top-k", "0", "--top-k must be > 0, got 0"),
            ("--size", "30", "--size must be a positive multiple of 4, got 30"),
            ("--window", "0", "--window must be > 0, got 0.0"),
            ("--stride", "-1", "--stride must be > 0, got -1.0"),
            ("--clip-len", "0", "--clip-len must be > 0, got 0"),
            ("--rgb-stride", "0", "--rgb-stride must be > 0, got 0"),
            ("--min-person", "2", "--min-person must be a share of frames in [0, 1], got 2.0")):
        assert one_line_error(stream.main, [*st, flag, value]) == f"error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


if __name__ == "__main__":
    if sys.argv[1] == "resume":
        _resume_child(*sys.argv[2:4])
