"""Window-by-window recognition (``epam_jax.stream``) on a long real video, noise, a
camera that is not there, a stalled pipe and a live pace it cannot keep up with.

The long video joins the two real clips of ../shared/data (skipped without them); the
pose tests need MediaPipe (in this interpreter or $EPAM_POSE_PYTHON) and skip without it;
the others give poses with ``--poses``. Weights are random (random BatchNorm statistics)."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import av
import jax
import numpy as np
import pytest
from conftest import (
    encode_video,
    moving,
    need_pose,
    random_variables,
    relative_error,
    small_person,
    synthetic_person,
)

from epam_jax.checkpoints import load_model, save_variables
from epam_jax.cli import run_cli
from epam_jax.data import (
    ClipConfig,
    decode_video_frames,
    load_annotations,
    parse_annotations,
    rgb_indices,
    save_annotations,
    uniform_sample_indices,
)
from epam_jax.data.video import MIN_SIDE
from epam_jax.models import EPAMNet
from epam_jax.realvideo import (
    person_box,
    person_inputs,
    video_poses,
)
from epam_jax.stream import WindowPlan, _Recognizer, main, recognize_stream

SIZE = 64
NUM_CLASSES = 6
CLIPS = ("ntu_S001C001P001R001A001_rgb.avi", "person_demo_1080p.mp4")
FPS = 30


def moving_frames(count: int, shape=(180, 320), seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for i in range(count):
        yield np.roll(base, 3 * i, axis=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    variables = random_variables(EPAMNet(num_classes=NUM_CLASSES), seed=7)
    return save_variables(tmp_path_factory.mktemp("ckpt") / "epam", variables), variables


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint[0])


@pytest.fixture(scope="module")
def long_video(shared_data: Path, tmp_path_factory) -> tuple[Path, int]:
    """The two real clips one after the other, at 320x180 (as a long video)."""
    def frames():
        for name in CLIPS:
            with av.open(os.fspath(shared_data / name)) as container:
                for frame in container.decode(container.streams.video[0]):
                    yield frame.to_ndarray(format="rgb24", width=320, height=180)

    path = encode_video(tmp_path_factory.mktemp("long") / "long.mp4", frames())
    with av.open(os.fspath(path)) as container:
        count = sum(1 for _ in container.decode(container.streams.video[0]))
    return path, count


@pytest.fixture(scope="module")
def streamed(long_video, loaded, tmp_path_factory):
    need_pose()
    video, _ = long_video
    out = tmp_path_factory.mktemp("stream")
    result = recognize_stream(
        os.fspath(video), loaded, out, window=2.0, stride=1.0, size=SIZE, top=3,
        video_out=out / "annotated.mp4", pose_python=os.environ.get("EPAM_POSE_PYTHON"))
    return result, out


def test_window_plan_covers_every_length() -> None:
    plan = WindowPlan(span=60, stride=30)
    for frames in (1, 30, 59, 60, 61, 89, 90, 91, 175):
        windows = [(k * 30, 60) for k in range(plan.regular_count(frames))]
        tail = plan.tail(frames)
        windows += [tail] if tail else []
        covered = set()
        for start, length in windows:
            covered |= set(range(start, start + length))
        assert covered == set(range(frames)), frames
        assert all(b[0] > a[0] and b[0] + b[1] > a[0] + a[1]
                   for a, b in zip(windows, windows[1:], strict=False))
        ends = {i for i in range(frames) if plan.completed_by(i) is not None}
        assert ends == {s + 59 for s, _ in windows[: plan.regular_count(frames)]}
    offsets = set(rgb_indices(uniform_sample_indices(60, 48, test_mode=True)).tolist())
    taken = {k * 30 + o for k in range(10) for o in offsets}
    assert {i for i in range(250) if plan.needs_rgb(i)} == {i for i in taken if i < 250}


def test_windows_cover_the_long_video_in_order(streamed, long_video) -> None:
    result, out = streamed
    _, count = long_video
    rows = result.rows
    assert result.frames == count == 175 and result.stopped == "end"
    assert [r["window"] for r in rows] == list(range(len(rows))) and len(rows) == 5
    assert rows[0]["start_frame"] == 0 and rows[-1]["end_frame"] == count
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["start"] < b["start"] and a["end"] < b["end"] and b["start"] <= a["end"]
    for r in rows:
        assert r["end_frame"] - r["start_frame"] == 60
        assert r["start"] == pytest.approx(r["start_frame"] / FPS, abs=1e-6)
        assert r["status"] == "ok" and r["person_frames"] > 0.9 and len(r["top"]) == 3
    on_disk = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert on_disk == rows
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with av.open(os.fspath(out / "annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (320, 180)
        assert sum(1 for _ in container.decode(stream)) == count
    assert result.real_time_factor(result.wall_seconds) > 0


def test_each_window_scores_equal_model_apply(streamed, long_video, checkpoint,
                                              loaded) -> None:
    """Rebuild every window's inputs from its frames (the dataset decoder) and the
    stream's poses, run ``model.apply``: the stream's scores and attention."""
    result, out = streamed
    video, _ = long_video
    _, variables = checkpoint
    (poses,) = load_annotations(out / "poses.pkl")
    saved = dict(np.load(out / "windows.npz"))
    config = ClipConfig(rgb=False, rgb_size=(SIZE, SIZE), heatmap_size=(SIZE // 4, SIZE // 4))
    rgbs, heats = [], []
    for i, (start, end) in enumerate(zip(saved["window_start"], saved["window_end"],
                                         strict=True)):
        frames = start + rgb_indices(uniform_sample_indices(end - start, 48, test_mode=True))
        np.testing.assert_array_equal(saved["rgb_frames"][i], frames)
        ann = parse_annotations([dict(
            poses, total_frames=int(end - start),
            keypoint=poses["keypoint"][:, start:end],
            keypoint_score=poses["keypoint_score"][:, start:end])])[0]
        box = person_box(ann, config)
        assert list(box) == saved["box"][i].tolist()
        native = decode_video_frames(video, frames, size=None)
        rgb, heat, _, _ = person_inputs(native, ann, config, box)
        rgbs.append(rgb)
        heats.append(heat)
    rgb_logits, pose_logits, attention = jax.jit(
        lambda v, r, p: loaded.model.apply(v, r, p, return_attention=True))(
        variables, np.stack(rgbs), np.stack(heats))
    assert relative_error(rgb_logits + pose_logits, saved["scores"]) < 1e-5
    assert relative_error(rgb_logits, saved["rgb_logits"]) < 1e-5
    assert relative_error(attention, saved["attention"]) < 1e-5
    best = np.argmax(saved["scores"], axis=1)
    assert [r["top"][0]["index"] for r in result.rows] == best.tolist()


def test_stream_poses_are_the_video_poses(streamed, long_video) -> None:
    """Frame-by-frame poses equal those ``predict`` gets for the whole video."""
    _, out = streamed
    video, _ = long_video
    (streamed_poses,) = load_annotations(out / "poses.pkl")
    whole = video_poses(video, os.environ.get("EPAM_POSE_PYTHON"))
    np.testing.assert_array_equal(streamed_poses["keypoint"], whole["keypoint"])
    np.testing.assert_array_equal(streamed_poses["keypoint_score"], whole["keypoint_score"])


def test_noise_windows_are_no_person(loaded, tmp_path: Path) -> None:
    need_pose()
    rng = np.random.default_rng(1)
    video = encode_video(tmp_path / "noise.mp4",
                        (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                         for _ in range(75)))
    out = tmp_path / "out"
    result = recognize_stream(os.fspath(video), loaded, out, window=2.0, stride=1.0,
                              size=SIZE, pose_python=os.environ.get("EPAM_POSE_PYTHON"))
    assert [r["status"] for r in result.rows] == ["no_person", "no_person"]
    assert all(r["top"] == [] for r in result.rows)
    saved = np.load(out / "windows.npz")
    assert np.all(np.isnan(saved["scores"])) and saved["scores"].shape == (2, NUM_CLASSES)
    assert (out / "timeline.png").is_file()


def test_camera_that_cannot_be_opened(checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["/dev/video97", "--checkpoint", os.fspath(checkpoint[0]), "--out-dir",
            os.fspath(out), "--size", str(SIZE)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    message = str(exit_info.value)
    assert message.startswith("error: cannot open camera /dev/video97")
    assert "ls /dev/video*" in message
    assert not out.exists()


def test_stalled_stream_keeps_the_timeline_so_far(loaded, tmp_path: Path) -> None:
    """A pipe that stops sending: a clear error after the stall timeout, and every
    output so far complete and readable."""
    source = encode_video(tmp_path / "clip.ts", moving_frames(150), fmt="mpegts")
    poses = tmp_path / "poses.pkl"
    two = synthetic_person(150, (180, 320), "pipe")  # two persons, side by side
    two["keypoint"] = np.concatenate([two["keypoint"], two["keypoint"] - [60, 0]])
    two["keypoint_score"] = np.concatenate([two["keypoint_score"]] * 2)
    save_annotations(poses, [two])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = source.read_bytes()
    released = threading.Event()

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data[: len(data) * 2 // 3])
            f.flush()
            released.wait(30)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = tmp_path / "out"
    try:
        with pytest.raises(RuntimeError, match="stalled") as err:
            recognize_stream(os.fspath(fifo), loaded, out, window=1.0, stride=0.5,
                             size=SIZE, poses=poses, stall_timeout=1.5,
                             video_out=out / "annotated.mp4")
    finally:
        released.set()
        writer.join(10)
    assert "windows so far are in" in str(err.value)
    rows = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and all(r["status"] == "ok" for r in rows)
    saved = np.load(out / "windows.npz")
    assert len(saved["window_start"]) == len(rows)
    assert rows[-1]["end_frame"] < 150
    with av.open(os.fspath(out / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(container.streams.video[0])) > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries
    (read,) = load_annotations(out / "poses.pkl")
    frames = read["total_frames"]
    assert rows[-1]["end_frame"] <= frames < 150
    np.testing.assert_array_equal(read["keypoint"], two["keypoint"][:, :frames])


def test_live_pace_drops_windows_to_keep_up(loaded, tmp_path: Path, monkeypatch) -> None:
    """A model slower than the stream: stale windows are dropped, the run ends about
    when the video does, and the rows stay in order (CSV timeline)."""
    video = encode_video(tmp_path / "live.mp4", moving_frames(90))
    poses = tmp_path / "poses.pkl"
    save_annotations(poses, [synthetic_person(90, (180, 320), "live")])
    slow = _Recognizer._run_model

    def slow_model(self, rgb, heatmap):
        time.sleep(0.6)
        return slow(self, rgb, heatmap)

    monkeypatch.setattr(_Recognizer, "_run_model", slow_model)
    out = tmp_path / "out"
    result = recognize_stream(os.fspath(video), loaded, out, window=1.0, stride=0.2,
                              size=SIZE, poses=poses, pace=True, timeline_format="csv")
    statuses = [r["status"] for r in result.rows]
    assert "dropped" in statuses and "ok" in statuses
    assert result.wall_seconds < 3.0 + 2.5  # 11 windows at 0.6 s would take 6.6 s
    with open(out / "timeline.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == statuses
    assert [int(r["window"]) for r in rows] == list(range(len(rows)))
    assert all(r["name_1"] for r in rows if r["status"] == "ok")


SHAPE = (96, 128)


def test_stream_window_with_a_small_person_box_is_no_person() -> None:
    """A window whose person box is under MIN_SIDE is labelled no_person, not cropped."""
    shape, span = (240, 320), 16
    rec = _Recognizer.__new__(_Recognizer)
    rec.plan = WindowPlan(span, span, clip_len=8, rgb_stride=4)
    rec.config = ClipConfig(rgb=False, rgb_size=(32, 32), heatmap_size=(8, 8), clip_len=8,
                            rgb_stride=4)
    rec.min_person, rec.reader = 0.5, SimpleNamespace(shape=shape)
    rec.detected, rec.missing = [True] * span, [False] * span
    frames = dict(enumerate(moving(span, shape)))
    for scale, status in (((0.25, 0.12), "no_person"), ((1.0, 1.0), "ok")):
        ann = small_person(span, shape, scale)
        rec.keypoints = [ann["keypoint"][:, t] for t in range(span)]
        rec.scores = [ann["keypoint_score"][:, t] for t in range(span)]
        window = rec._window(0, 0, span, frames)
        assert window.status == status and window.box is not None
        side = min(window.box[2] - window.box[0], window.box[3] - window.box[1])
        assert (side < MIN_SIDE) == (status == "no_person")
