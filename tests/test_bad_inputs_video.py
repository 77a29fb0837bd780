"""Bad inputs on the way from a video to a clip: truncated files, frames too small to
find a person in, pose files of other clips, other and variable frame rates, damaged
annotation pickles. Each is built small in tmp_path; the MediaPipe runs need the pose
interpreter (``conftest.pose_python``) and skip without it."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from conftest import pose_python, synthetic_person

from epam_jax import predict
from epam_jax.data import (
    ClipConfig,
    decode_video_frames,
    load_annotations,
    rgb_indices,
    save_annotations,
    uniform_sample_indices,
)
from epam_jax.data.pose import pose_interpreter_env, video_to_annotation
from epam_jax.data.synthetic import make_long_video, make_synthetic_dataset
from epam_jax.data.video import MIN_SIDE, iter_video_frames, probe_video
from epam_jax.realvideo import (
    _poses_in_subprocess,
    check_video,
    person_box,
    person_inputs,
    single_video_annotation,
    video_clip,
    video_poses,
)
from epam_jax.stream import Source, WindowPlan, _poses_for, _Recognizer

NTU = "ntu_S001C001P001R001A001_rgb.avi"
SHAPE = (96, 128)
# rgb=False: video_clip decodes the crop itself (predict sets video_root instead)
CONFIG = ClipConfig(rgb=False, rgb_size=(32, 32), heatmap_size=(8, 8))


def moving(n: int, shape: tuple[int, int] = SHAPE, seed: int = 0) -> list[np.ndarray]:
    """Frames that all differ (moving ramps plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    frames = []
    for i in range(n):
        img = np.stack([(xx * 3 + i * 7) % 256, (yy * 5 + i * 3) % 256,
                        ((xx + yy) * 2 + i * 11) % 256], -1)
        frames.append(np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames, fps: int = 30, fmt: str | None = None,
                times_ms: list[int] | None = None, options: dict[str, str] | None = None
                ) -> Path:
    """Frames to an H.264 video; ``times_ms``: their timestamps in milliseconds (a
    variable rate)."""
    with av.open(os.fspath(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = options or {}
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            if i == 0:
                stream.height, stream.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.reformat(format="rgb24", interpolation="AREA").to_ndarray()


def plain_frames(path: Path) -> list[np.ndarray]:
    """Every frame by a plain PyAV decode loop."""
    with av.open(os.fspath(path)) as container:
        return [rgb(f) for f in container.decode(video=0)]


def cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def need_pose() -> str:
    python = pose_python()
    if python is None:
        pytest.skip("mediapipe is not installed (make pose-env, or set EPAM_POSE_PYTHON)")
    return python


def run_pose_cli(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "epam_jax.data.pose", *args], capture_output=True,
                          text=True, env=pose_interpreter_env(python), timeout=120)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Intact and truncated small videos."""
    root = tmp_path_factory.mktemp("videos")
    steps = np.resize([20, 33, 34, 50, 100, 17], 39)
    times = [0, *np.cumsum(steps).tolist()]
    paths = {
        "avi": write_video(root / "clip.avi", moving(60), fmt="avi"),
        "mkv": write_video(root / "clip.mkv", moving(60), fmt="matroska"),
        "mp4_60fps": write_video(root / "fast.mp4", moving(40), fps=60),
        "mp4_15fps": write_video(root / "slow.mp4", moving(40), fps=15),
        "mp4_vfr": write_video(root / "vfr.mp4", moving(40), times_ms=times),
        "mkv_vfr": write_video(root / "vfr.mkv", moving(40), fmt="matroska", times_ms=times),
        "ts_vfr": write_video(root / "vfr.ts", moving(40), fmt="mpegts", times_ms=times),
    }
    paths["avi_cut"] = cut(paths["avi"], 0.4, root / "cut.avi")
    paths["mkv_cut"] = cut(paths["mkv"], 0.5, root / "cut.mkv")
    return paths


# --------------------------------------------------------------------------- 1. truncated


def test_truncated_real_avi_is_refused_before_the_slow_work(shared_data: Path,
                                                            tmp_path: Path) -> None:
    """The first 30% of the NTU clip: 15 of the 103 frames its header states. Refused
    by the checks before the checkpoint is read and before MediaPipe starts (neither
    exists here: reaching them would fail otherwise)."""
    bad = cut(shared_data / NTU, 0.3, tmp_path / "cut.avi")
    message = r"cut.avi' is truncated or corrupt: it decodes to 15 frames, its header states 103"
    with pytest.raises(ValueError, match=message):
        check_video(bad)
    with pytest.raises(ValueError, match=message):
        predict.main([os.fspath(bad), "--checkpoint", os.fspath(tmp_path / "no_ckpt")])
    with pytest.raises(ValueError, match=message):
        video_poses(bad, os.fspath(tmp_path / "no_python"))
    with pytest.raises(ValueError, match=message):
        Source(os.fspath(bad))


@pytest.mark.parametrize(("name", "message"), [
    ("avi_cut", r"cut.avi' is truncated or corrupt: it decodes to \d+ frames, its header "
                r"states 60$"),
    ("mkv_cut", r"cut.mkv' is truncated or corrupt: it decodes to \d+ frames lasting 0\.\d\d "
                r"s, its header states 2\.00 s$"),
], ids=["avi_frame_count", "mkv_duration"])
def test_truncated_files_are_refused_by_every_whole_video_reader(videos, name: str,
                                                                 message: str) -> None:
    """A frame count (AVI) or a duration alone (Matroska) in the header: the probe, the
    frame iterator (after the frames that decode, which are the intact file's), the pose
    extraction (before MediaPipe, absent from this interpreter) and the stream's file."""
    bad = videos[name]
    with pytest.raises(ValueError, match=message):
        probe_video(bad)
    with pytest.raises(ValueError, match=message):
        video_to_annotation(bad)
    with pytest.raises(ValueError, match=message):
        Source(os.fspath(bad))
    intact = plain_frames(videos[name.removesuffix("_cut")])
    got = []
    # the iterator names the damaged frame where the decoder flags the last one corrupt
    damaged = rf"{message}|cut.\w+' is corrupt: frame \d+ does not decode cleanly$"
    with av.open(os.fspath(bad)) as container, pytest.raises(ValueError, match=damaged):
        for frame in iter_video_frames(container, os.fspath(bad)):
            got.append(rgb(frame))
    assert 0 < len(got) < len(intact)
    for k, frame in enumerate(got):
        np.testing.assert_array_equal(frame, intact[k])
    # where the caller allows it: the same frames, and the message reported
    reported = []
    with av.open(os.fspath(bad)) as container:
        kept = sum(1 for _ in iter_video_frames(container, os.fspath(bad),
                                                report=reported.append))
    assert kept == len(got) and len(reported) == 1 and re.search(damaged, reported[0])


def test_lost_stretch_in_a_file_without_frame_count(tmp_path: Path) -> None:
    """Garbage over the middle of a Matroska file (a keyframe, and a cluster, every 10
    frames: the demuxer finds the next one): what decodes spans the duration but leaves
    a hole, which a variable frame rate does not."""
    data = write_video(tmp_path / "gop10.mkv", moving(60), fmt="matroska",
                       options={"g": "10"}).read_bytes()
    third = len(data) // 3
    bad = tmp_path / "holed.mkv"
    bad.write_bytes(data[:third] + np.random.default_rng(0).bytes(third) + data[2 * third:])
    with pytest.raises(ValueError, match=r"holed.mkv' is truncated or corrupt: it decodes to "
                                         r"\d+ frames with none from [\d.]+ s to [\d.]+ s"):
        probe_video(bad)


def test_pose_command_refuses_a_truncated_video_or_keeps_what_decodes(videos,
                                                                      tmp_path: Path) -> None:
    """Refused: the command exits with EXIT_BAD_INPUT after one ``error:`` line, which
    predict's subprocess call raises as that ValueError (not the MediaPipe log)."""
    python = need_pose()
    bad = videos["avi_cut"]
    with pytest.raises(ValueError, match=r"^'.*cut.avi' is truncated or corrupt: it decodes"):
        _poses_in_subprocess(bad, python, 0)
    out = tmp_path / "poses.pkl"
    done = run_pose_cli(python, os.fspath(bad), os.fspath(out), "--allow-truncated")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: " in done.stderr and "keeping the poses of the frames that decode" in (
        done.stderr)
    (ann,) = load_annotations(out)
    with av.open(os.fspath(bad)) as container:
        kept = sum(1 for _ in iter_video_frames(container, "x", report=lambda _: None))
    assert ann["total_frames"] == kept


# --------------------------------------------------------------------------- 2. tiny frames


def test_tiny_noise_video_is_refused_before_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = write_video(tmp_path / "noise.mp4",
                        [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(30)])
    message = (r"each frame of .*noise.mp4 is 8x8 pixels; person detection and EPAM-Net need "
               rf"at least {MIN_SIDE} pixels on its shorter side")
    with pytest.raises(ValueError, match=message):
        check_video(noise)
    with pytest.raises(ValueError, match=message):
        predict.main([os.fspath(noise), "--checkpoint", os.fspath(tmp_path / "no_ckpt")])
    with pytest.raises(ValueError, match=message):
        video_poses(noise, os.fspath(tmp_path / "no_python"))
    with pytest.raises(ValueError, match="noise.mp4' is 8x8 pixels"):
        video_to_annotation(noise)
    with pytest.raises(ValueError, match=r"each frame of .*noise.mp4 is 8x8 pixels"):
        Source(os.fspath(noise))
    # the shorter side counts: 30x64 is refused, 32x48 is not
    narrow = write_video(tmp_path / "narrow.mp4", moving(3, (30, 64)))
    with pytest.raises(ValueError, match="is 64x30 pixels"):
        check_video(narrow)
    assert check_video(write_video(tmp_path / "edge.mp4", moving(3, (32, 48)))).is_file()


def test_the_projects_own_demo_videos_pass(tmp_path: Path) -> None:
    """``make demo``'s 64x64 videos and the stream demo's 128x128 long video, with person
    boxes of their own poses at least MIN_SIDE."""
    data = make_synthetic_dataset(tmp_path / "demo", num_classes=2, num_train=2, num_val=0,
                                  frames=(24, 24), size=(64, 64))
    for ann in load_annotations(data):
        video = check_video(tmp_path / "demo" / "videos" / f"{ann['frame_dir']}.mp4")
        clip = video_clip(video, ann, CONFIG)
        assert min(clip.box[2] - clip.box[0], clip.box[3] - clip.box[1]) >= MIN_SIDE
    video, poses = make_long_video(tmp_path / "long", ["wave", "none", "squat"], 24)
    source = Source(os.fspath(video))
    source.close()
    (ann,) = load_annotations(poses)
    for start in (0, 48):  # the person's segments
        window = dict(ann, keypoint=ann["keypoint"][:, start:start + 24], total_frames=24)
        x0, y0, x1, y1 = person_box(window, CONFIG)
        assert min(x1 - x0, y1 - y0) >= MIN_SIDE


def small_person(total: int, shape: tuple[int, int], scale: tuple[float, float]) -> dict:
    """``synthetic_person`` shrunk about the frame's centre by ``scale`` = (x, y)."""
    ann = synthetic_person(total, shape, "small")
    centre = np.array([shape[1] / 2, shape[0] / 2], np.float32)
    ann["keypoint"] = centre + (ann["keypoint"] - centre) * np.array(scale, np.float32)
    return ann


def test_person_too_small_to_crop_is_refused(tmp_path: Path) -> None:
    video = write_video(tmp_path / "far.mp4", moving(30, (120, 160)))
    ann = small_person(30, (120, 160), (0.35, 0.22))
    x0, y0, x1, y1 = person_box(ann, CONFIG)
    assert min(x1 - x0, y1 - y0) < MIN_SIDE
    with pytest.raises(ValueError, match=rf"the person box of .*far.mp4 \(x {x0}..{x1}, y "
                                         rf"{y0}..{y1}\) is {x1 - x0}x{y1 - y0} pixels; .*at "
                                         rf"least {MIN_SIDE} .*--crop none"):
        video_clip(video, ann, CONFIG)
    dot = small_person(30, (120, 160), (0.05, 0.05))
    with pytest.raises(ValueError, match=r"the person in .*far.mp4 spans \d+x\d+ pixels, "
                                         r"under the 10 pixels"):
        video_clip(video, dot, CONFIG)
    whole = dataclasses.replace(CONFIG, rgb=True, video_root=os.fspath(tmp_path))
    assert video_clip(video, ann, whole, crop=False).box is None  # whole frame: allowed


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


# --------------------------------------------------------------------------- 3. pose files


def person(frame_dir: str, total: int, **extra) -> dict:
    ann = synthetic_person(total, SHAPE, frame_dir)
    ann["keypoint"] = ann["keypoint"] + len(frame_dir)  # tell the samples apart
    return dict(ann, **extra)


def test_pose_file_sample_is_the_one_named_after_the_video(videos, tmp_path: Path) -> None:
    video = videos["mp4_vfr"]  # vfr.mp4, 40 frames
    poses = tmp_path / "many.pkl"
    samples = [person("other_a", 50), person("vfr", 40), person("other_b", 41)]
    save_annotations(poses, samples)
    ann = single_video_annotation(video, poses)
    np.testing.assert_array_equal(ann["keypoint"], samples[1]["keypoint"])
    assert (ann["frame_dir"], ann["filename"], ann["total_frames"]) == ("vfr", "vfr.mp4", 40)
    by_file = [person("x_1", 40, filename="x_1.mp4"),
               person("x_22", 40, filename="videos/vfr.mp4")]
    save_annotations(poses, by_file)
    np.testing.assert_array_equal(single_video_annotation(video, poses)["keypoint"],
                                  by_file[1]["keypoint"])
    np.testing.assert_array_equal(_poses_for(os.fspath(poses), os.fspath(video))["keypoint"],
                                  by_file[1]["keypoint"])


def test_pose_file_with_no_or_several_samples_of_the_video_is_refused(
        videos, tmp_path: Path) -> None:
    video = videos["mp4_vfr"]
    poses = tmp_path / "many.pkl"
    save_annotations(poses, [person(f"clip_{i}", 40) for i in range(5)])
    message = (r"many.pkl holds 5 samples and none is this video's \(frame_dir 'vfr' or "
               r"filename 'vfr.mp4'\); it holds 'clip_0', 'clip_1', 'clip_2' and 2 more$")
    with pytest.raises(ValueError, match=message):
        single_video_annotation(video, poses)
    with pytest.raises(ValueError, match=message):
        _poses_for(os.fspath(poses), os.fspath(video))  # the stream's --poses
    save_annotations(poses, [person("vfr", 40), person("a", 40), person("b", 40,
                                                                      filename="vfr.mp4")])
    with pytest.raises(ValueError, match=r"holds 2 samples of this video .*: 'vfr', 'b'; "
                                         r"expected one$"):
        single_video_annotation(video, poses)
    save_annotations(poses, [])
    with pytest.raises(ValueError, match="many.pkl holds no annotation"):
        single_video_annotation(video, poses)


def test_pose_sample_of_another_length_is_refused(videos, tmp_path: Path) -> None:
    """A single sample is taken whatever its name, but only about as long as the video
    (within truncation_tolerance: 2 frames of 40)."""
    video = videos["mp4_vfr"]
    poses = tmp_path / "one.pkl"
    for total, ok in ((40, True), (42, True), (38, True), (43, False), (103, False)):
        save_annotations(poses, [person("another_clip", total)])
        if ok:
            assert single_video_annotation(video, poses)["total_frames"] == total
            continue
        with pytest.raises(ValueError, match=rf"one.pkl sample 'another_clip' has {total} "
                                             r"frames, the video .*vfr.mp4 has 40; they must "
                                             r"agree within 2 frames$"):
            single_video_annotation(video, poses)
    missing = person("vfr", 40)
    missing["keypoint"] = np.full_like(missing["keypoint"], np.nan)  # every joint missing
    save_annotations(poses, [missing])
    with pytest.raises(ValueError, match="no person found in .*vfr.mp4: the pose file"):
        single_video_annotation(video, poses)


# --------------------------------------------------------------------------- 4a. frame rates


@pytest.mark.parametrize("name", ["mp4_60fps", "mp4_15fps", "mp4_vfr", "mkv_vfr", "ts_vfr"])
def test_other_and_variable_frame_rates_equal_a_plain_decode(videos, name: str) -> None:
    """The predict path's decoding (probe, whole-video frames for the poses, the clip's
    sampled frames, clamp past the end) sees exactly a plain decode loop's frames, and
    the clip is made of them."""
    video = videos[name]
    plain = plain_frames(video)
    n = len(plain)
    assert n == 40 and probe_video(video).frames == n
    with av.open(os.fspath(video)) as container:
        whole = [rgb(f) for f in iter_video_frames(container, os.fspath(video))]
    assert len(whole) == n
    for k in range(n):
        np.testing.assert_array_equal(whole[k], plain[k])
    ann = synthetic_person(n, SHAPE, video.stem)
    clip = video_clip(video, ann, CONFIG)
    inds = rgb_indices(uniform_sample_indices(n, 48, test_mode=True), 3)
    np.testing.assert_array_equal(clip.frame_indices, inds)
    native = np.stack([plain[i] for i in inds])
    want, _, _, _ = person_inputs(native, ann, CONFIG, person_box(ann, CONFIG))
    np.testing.assert_array_equal(clip.rgb, want)
    # a pose file a frame longer than the video: clamped to its last frame, not "truncated"
    last = decode_video_frames(video, [0, n], size=None, clamp=True)
    np.testing.assert_array_equal(last[1], plain[-1])


def test_variable_rate_video_poses_cover_every_frame(videos, tmp_path: Path) -> None:
    python = need_pose()
    out = tmp_path / "poses.pkl"
    done = run_pose_cli(python, os.fspath(videos["mkv_vfr"]), os.fspath(out))
    assert done.returncode == 0, done.stderr[-2000:]
    (ann,) = load_annotations(out)
    assert ann["total_frames"] == 40 and ann["img_shape"] == SHAPE


# --------------------------------------------------------------------------- 4b. pickles


GOOD = synthetic_person(20, SHAPE, "clip")


def _pickled(**changes) -> bytes:
    ann = dict(GOOD, **changes)
    return pickle.dumps([{k: v for k, v in ann.items() if v is not None}], protocol=4)


class _System:
    def __reduce__(self):
        return (os.system, ("echo ran",))


_GOOD_BYTES = pickle.dumps([GOOD], protocol=4)
_NAN = GOOD["keypoint"].copy()
_NAN[0, 3, 5] = np.nan
_INF = GOOD["keypoint"].copy()
_INF[0, 3, 5, 0] = np.inf
_NAN_SCORE = GOOD["keypoint_score"].copy()
_NAN_SCORE[0, 2, 1] = np.nan
PICKLES = {
    "truncated": (_GOOD_BYTES[: len(_GOOD_BYTES) // 2],
                  r"annotation pickle is truncated or corrupt \(UnpicklingError"),
    "random_bytes": (np.random.default_rng(0).bytes(500),
                     r"annotation pickle is truncated or corrupt"),
    "append_to_a_tuple": (b"\x80\x04)K\x01a.",
                          r"truncated or corrupt \(AttributeError"),
    "huge_frame": (b"\x80\x04\x95" + b"\xff" * 8, r"truncated or corrupt \(OverflowError"),
    "os_system": (pickle.dumps([_System()]), r"refusing to load annotation pickle: it "
                                             r"references posix.system"),
    "list_of_ints": (pickle.dumps([1, 2, 3]), r"annotation 0: expected a dict, got int"),
    "an_int": (pickle.dumps(7), r"expected a list of sample dicts, got int"),
    "no_keypoint": (_pickled(keypoint=None), r"annotation 0 \('clip'\): missing required "
                                             r"key\(s\) \['keypoint'\]"),
    "keypoint_shape": (_pickled(keypoint=GOOD["keypoint"][..., :1]),
                       r"expected 'keypoint' of shape \(M, total_frames=20, 17, 2\), got "
                       r"\(1, 20, 17, 1\)"),
    "keypoint_frames": (_pickled(keypoint=GOOD["keypoint"][:, :19]),
                        r"expected 'keypoint' of shape \(M, total_frames=20, 17, 2\), got "
                        r"\(1, 19, 17, 2\)"),
    "keypoint_list": (_pickled(keypoint=GOOD["keypoint"].tolist()),
                      r"expected 'keypoint' to be a numeric numpy array, got list"),
    "keypoint_complex": (_pickled(keypoint=GOOD["keypoint"].astype(complex)),
                         r"numeric numpy array, got dtype complex128"),
    "keypoint_inf": (_pickled(keypoint=_INF), r"expected finite 'keypoint' coordinates \(NaN "
                                              r"for a missing joint\), got 1 infinite"),
    "score_nan": (_pickled(keypoint_score=_NAN_SCORE),
                  r"expected finite 'keypoint_score' values, got 1 NaN or infinite"),
}


def test_empty_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^annotation file '.*empty.pkl' is empty$"):
        load_annotations(path)


@pytest.mark.parametrize("case", PICKLES)
def test_damaged_annotation_pickles_name_the_file_and_the_fault(tmp_path: Path,
                                                                case: str) -> None:
    data, fault = PICKLES[case]
    path = tmp_path / f"{case}.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert len(message) < 400, message
    assert re.search(fault, message), message


def test_nan_keypoints_are_missing_joints(tmp_path: Path) -> None:
    """NaN marks a missing joint in PoseC3D files (the synthetic writer uses it; the
    pipeline maps it to 0), so it loads, as NaN."""
    path = tmp_path / "nan.pkl"
    path.write_bytes(_pickled(keypoint=_NAN))
    (ann,) = load_annotations(path)
    assert np.isnan(ann["keypoint"][0, 3, 5]).all()
    assert not np.isnan(np.delete(ann["keypoint"].reshape(-1, 2), 3 * 17 + 5, 0)).any()

