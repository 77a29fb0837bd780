"""``python -m epam_jax.prepare``: spatial alignment of raw videos (EPAM_NET.md sec. 9).

Small raw synthetic clips (figures somewhere in 96x160 frames) and the real NTU clip are
cut to the pipeline's compact box and resized; outputs, manifest, resume and failures
are checked. Nothing here compiles JAX.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import need_pose

from epam_jax import prepare
from epam_jax.data import (
    ClipConfig,
    compact_box,
    decode_video_frames,
    load_annotations,
    make_sample,
    read_frame_folder,
    resize_frame,
    save_annotations,
)
from epam_jax.data.synthetic import make_synthetic_dataset

RAW_SIZE = (96, 160)
SIDE = 112
# Measured worst frame of the six clips at 112x112 (the raw clips carry per-pixel grain,
# the hardest case for a codec): H.264 CRF 18 32.7 dB, JPEG q95 35.1 dB; a box off by
# one pixel gives 24-26 dB, so these bounds catch a wrong crop, not just a bad codec.
MIN_PSNR = {"mp4": 30.0, "frames": 33.0}


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 stacks (T, H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def _read_output(out: Path, frame_dir: str, fmt: str, n: int) -> np.ndarray:
    if fmt == "mp4":
        return decode_video_frames(out / f"{frame_dir}.mp4", np.arange(n), size=None)
    return read_frame_folder(out / frame_dir, np.arange(n), size=None)


def _run(ann: Path, videos: Path, out: Path, *extra: str) -> int:
    return prepare.main(["--annotations", os.fspath(ann), "--video-root", os.fspath(videos),
                         "--out-dir", os.fspath(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Six raw synthetic clips (20-30 frames of 96x160): (annotation file, videos, anns)."""
    root = tmp_path_factory.mktemp("raw")
    path = make_synthetic_dataset(root, num_classes=6, num_train=4, num_val=2,
                                  frames=(20, 30), size=RAW_SIZE, raw=True)
    return path, root / "videos", load_annotations(path)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> dict[str, Path]:
    """The raw clips prepared at SIDE x SIDE in both formats, in this process."""
    path, videos, _ = raw
    outs = {}
    for fmt in prepare.FORMATS:
        outs[fmt] = tmp_path_factory.mktemp(f"prepared_{fmt}")
        summary = prepare.prepare_videos(path, videos, outs[fmt], size=SIDE, fmt=fmt,
                                         progress=False)
        assert (summary["ok"], summary["failed"], summary["skipped"]) == (6, 0, 0)
    return outs


def test_raw_synthetic_dataset_is_unaligned(raw):
    _, _, anns = raw
    boxes = [compact_box(a["keypoint"], a["img_shape"]) for a in anns]
    assert all(a["img_shape"] == RAW_SIZE for a in anns)
    assert all(b is not None for b in boxes)
    # Small figures: the box is far smaller than the frame, not always centred, and an
    # image edge sometimes clips it to a non-square box.
    assert max(b[3] - b[1] for b in boxes) < 0.8 * RAW_SIZE[0]
    assert len({(b[0] + b[2]) // 20 for b in boxes}) >= 3
    assert any(b[2] - b[0] != b[3] - b[1] for b in boxes)
    assert any(b[0] == 0 or b[1] == 0 or b[2] == RAW_SIZE[1] or b[3] == RAW_SIZE[0]
               for b in boxes)


@pytest.mark.parametrize("fmt", prepare.FORMATS)
def test_prepared_frames_are_the_resized_box(raw, prepared, fmt):
    _, videos, anns = raw
    out = prepared[fmt]
    manifest = json.loads((out / prepare.MANIFEST_NAME).read_text())
    worst = []
    for ann in anns:
        n, frame_dir = ann["total_frames"], ann["frame_dir"]
        rec = manifest["videos"][frame_dir]
        box = compact_box(ann["keypoint"], ann["img_shape"])
        assert tuple(rec["box"]) == box
        assert rec["status"] == "ok" and rec["frames"] == n == rec["total_frames"]
        assert rec["source_size"] == list(RAW_SIZE) and rec["fps"] == 30.0
        got = _read_output(out, frame_dir, fmt, n)
        assert got.shape == (n, SIDE, SIDE, 3)
        x0, y0, x1, y1 = box
        native = decode_video_frames(videos / f"{frame_dir}.mp4", np.arange(n), size=None)
        want = np.stack([resize_frame(f[y0:y1, x0:x1], (SIDE, SIDE)) for f in native])
        worst.append(_psnr(got, want).min())
    assert min(worst) > MIN_PSNR[fmt], worst
    if fmt == "mp4":  # and read back by the training pipeline
        config = ClipConfig(video_root=os.fspath(out), video_ext=".mp4", pose=None,
                            rgb_size=(SIDE, SIDE))
        assert make_sample(anns[0], config, train=False)["rgb"].shape == (16, SIDE, SIDE, 3)


def test_manifest_records_settings_and_sources(raw, prepared):
    path, videos, anns = raw
    manifest = json.loads((prepared["mp4"] / prepare.MANIFEST_NAME).read_text())
    assert manifest["settings"] == {
        "size": SIDE, "format": "mp4", "codec": "libx264", "pix_fmt": "yuv420p", "crf": 18,
        "preset": "fast", "x264_params": "mbtree=0", "padding": 0.25, "threshold": 10.0,
        "hw_ratio": 1.0, "clip_to_image": True,
    }
    assert manifest["annotations"] == os.fspath(path)
    assert sorted(manifest["videos"]) == sorted(a["frame_dir"] for a in anns)
    rec = manifest["videos"][anns[0]["frame_dir"]]
    assert rec["source"] == os.fspath(videos / f"{anns[0]['frame_dir']}.mp4")
    assert rec["output"] == f"{anns[0]['frame_dir']}.mp4" and rec["reason"] is None
    assert rec["fps_fraction"] == "30/1"
    assert not list(prepared["mp4"].glob(".*.tmp*"))


def test_resume_skips_complete_and_redoes_temp_leftovers(raw, tmp_path, capsys):
    path, videos, anns = raw
    out = tmp_path / "out"
    assert _run(path, videos, out, "--size", "32") == 0
    names = [a["frame_dir"] for a in anns]
    mtimes = {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert _run(path, videos, out, "--size", "32") == 0
    assert "ok 0, skipped 6" in capsys.readouterr().out
    assert {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in names} == mtimes
    manifest = json.loads((out / prepare.MANIFEST_NAME).read_text())
    assert {r["status"] for r in manifest["videos"].values()} == {"skipped"}
    assert manifest["videos"][names[0]]["box"] is not None  # earlier details kept

    # A killed run: one output never renamed (only its partial temp file exists), and a
    # stale temp file beside a complete one.
    (out / f"{names[1]}.mp4").unlink()
    (out / f".{names[1]}.tmp.mp4").write_bytes(b"partial")
    (out / f".{names[2]}.tmp.mp4").write_bytes(b"partial")
    summary = prepare.prepare_videos(path, videos, out, size=32, progress=False)
    assert (summary["ok"], summary["skipped"]) == (1, 5)
    assert not list(out.glob(".*.tmp*"))
    n = anns[1]["total_frames"]
    assert _read_output(out, names[1], "mp4", n).shape == (n, 32, 32, 3)

    # Other settings are refused (one clear line), unless --overwrite.
    capsys.readouterr()
    assert _run(path, videos, out, "--size", "48") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "size 32 -> 48" in err and "--overwrite" in err
    assert _run(path, videos, out, "--format", "frames", "--size", "32") == 2
    assert "format 'mp4' -> 'frames'" in capsys.readouterr().err
    assert _run(path, videos, out, "--size", "48", "--overwrite", "--split", "val") == 0
    manifest = json.loads((out / prepare.MANIFEST_NAME).read_text())
    assert manifest["settings"]["size"] == 48 and len(manifest["videos"]) == 2
    assert _read_output(out, names[5], "mp4", 3).shape == (3, 48, 48, 3)


def test_workers_give_the_same_outputs(raw, prepared, tmp_path, capsys):
    path, videos, anns = raw
    out = tmp_path / "out"
    assert _run(path, videos, out, "--size", str(SIDE), "--workers", "2") == 0
    printed = capsys.readouterr().out
    assert "ok 6, skipped 0 (already complete), failed 0" in printed
    assert "videos/s" in printed and "frames/s" in printed and "workers 2" in printed
    for ann in anns:
        n = ann["total_frames"]
        np.testing.assert_array_equal(_read_output(out, ann["frame_dir"], "mp4", n),
                                      _read_output(prepared["mp4"], ann["frame_dir"], "mp4", n))


def test_repeated_runs_write_identical_bytes(raw, tmp_path):
    """Preparing the same videos again in the same process gives byte-identical files
    (x264's macroblock tree made them depend on uninitialised memory at 112x112)."""
    path, videos, anns = raw
    outs = [tmp_path / f"run{i}" for i in range(3)]
    for out in outs:
        summary = prepare.prepare_videos(path, videos, out, size=SIDE, progress=False)
        assert summary["ok"] == len(anns)
    for ann in anns:
        name = f"{ann['frame_dir']}.mp4"
        first = (outs[0] / name).read_bytes()
        assert all((out / name).read_bytes() == first for out in outs[1:]), name


def test_bad_videos_fail_alone(raw, tmp_path, capsys):
    _, videos, anns = raw
    root = tmp_path / "videos"
    root.mkdir()
    for ann in anns:
        (root / f"{ann['frame_dir']}.mp4").symlink_to(videos / f"{ann['frame_dir']}.mp4")
    a = [dict(x) for x in anns]
    (root / f"{a[0]['frame_dir']}.mp4").unlink()  # missing
    data = (videos / f"{a[1]['frame_dir']}.mp4").read_bytes()
    (root / f"{a[1]['frame_dir']}.mp4").unlink()
    (root / f"{a[1]['frame_dir']}.mp4").write_bytes(data[: len(data) * 3 // 10])  # corrupt
    a[2]["keypoint"] = np.zeros_like(a[2]["keypoint"])  # no keypoints
    a[3]["img_shape"] = (100, 100)  # another aspect ratio than the 96x160 video
    # The annotation says twice as many frames as the video has.
    a[4]["keypoint"] = np.concatenate([a[4]["keypoint"]] * 2, axis=1)
    a[4]["keypoint_score"] = np.concatenate([a[4]["keypoint_score"]] * 2, axis=1)
    a[4]["total_frames"] *= 2
    # Same aspect ratio, twice the resolution: the box is scaled to the video.
    a[5]["img_shape"] = (2 * RAW_SIZE[0], 2 * RAW_SIZE[1])
    scaled = np.where(a[5]["keypoint"] != 0, a[5]["keypoint"] * 2, 0)
    a[5]["keypoint"] = scaled.astype(np.float32)
    ann_path = tmp_path / "ann.pkl"
    save_annotations(ann_path, a)
    out = tmp_path / "out"
    assert _run(ann_path, root, out, "--size", "32") == 1
    printed = capsys.readouterr().out
    assert "ok 1, skipped 0 (already complete), failed 5" in printed
    reasons = {
        0: "missing video",
        1: "unreadable video",
        2: "no keypoints",
        3: "annotations and videos do not match",
        4: f"truncated or mismatched: {anns[4]['total_frames']} frames decoded, "
        f"annotation says {a[4]['total_frames']}",
    }
    manifest = json.loads((out / prepare.MANIFEST_NAME).read_text())
    for i, reason in reasons.items():
        assert f"  {a[i]['frame_dir']}: {reason}" in printed
        rec = manifest["videos"][a[i]["frame_dir"]]
        assert rec["status"] == "failed" and reason in rec["reason"]
        assert not (out / f"{a[i]['frame_dir']}.mp4").exists()
    assert "(100, 100)" in manifest["videos"][a[3]["frame_dir"]]["reason"]
    assert "(96, 160)" in manifest["videos"][a[3]["frame_dir"]]["reason"]
    ok = manifest["videos"][a[5]["frame_dir"]]
    x0, y0, x1, y1 = compact_box(a[5]["keypoint"], a[5]["img_shape"])
    assert ok["status"] == "ok" and "box scaled" in " ".join(ok["notes"])
    assert ok["box"] == [round(x0 / 2), round(y0 / 2), round(x1 / 2), round(y1 / 2)]
    assert f"manifest: {out / prepare.MANIFEST_NAME}" in printed
    assert not list(out.glob(".*.tmp*"))


def test_small_keypoint_extent_uses_the_whole_frame(raw, tmp_path):
    _, videos, anns = raw
    ann = dict(anns[0])
    kp = np.nan_to_num(ann["keypoint"])
    centre = kp[kp[..., 0] != 0].mean(0)
    ann["keypoint"] = np.where(kp != 0, centre + (kp - centre) * 0.1, 0).astype(np.float32)
    assert compact_box(ann["keypoint"], ann["img_shape"]) is None
    # The Python API takes annotation dicts too.
    summary = prepare.prepare_videos([ann], videos, tmp_path, size=32, fmt="frames",
                                     progress=False)
    assert (summary["ok"], summary["whole_frame"]) == (1, 1)
    rec = json.loads(Path(summary["manifest"]).read_text())["videos"][ann["frame_dir"]]
    assert rec["box"] is None and "whole frame used" in rec["notes"][0]
    n = ann["total_frames"]
    native = decode_video_frames(videos / f"{ann['frame_dir']}.mp4", np.arange(n), size=None)
    want = np.stack([resize_frame(f, (32, 32)) for f in native])
    assert _psnr(_read_output(tmp_path, ann["frame_dir"], "frames", n), want).min() > 30


def test_run_level_errors_stop_early_with_one_line(raw, tmp_path, capsys):
    path, videos, anns = raw
    out = tmp_path / "out"

    def error(*argv: str, ann: Path = path) -> str:
        assert _run(ann, videos, out, *argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "cannot read the annotation file" in error(ann=tmp_path / "none.pkl")
    ghost = tmp_path / "ghost.pkl"
    save_annotations(ghost, anns, {"train": [anns[0]["frame_dir"]], "ghost": ["nope"]})
    assert "split 'ghost'" in error("--split", "ghost", ann=ghost)
    assert "names no video" in error("--split", "train", "--split", "ghost", ann=ghost)
    assert "unknown split 'test'" in error("--split", "test")
    empty = tmp_path / "empty.pkl"
    save_annotations(empty, [])
    assert "no videos selected" in error(ann=empty)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert _run(path, videos, blocker / "sub", "--no-progress") == 2
    assert "cannot create the output directory" in capsys.readouterr().err
    assert "{frame_dir}" in error("--video-pattern", "{name}.mp4")
    assert prepare.main(["--annotations", os.fspath(path)]) == 2  # usage
    assert not out.exists()


def test_full_disk_stops_the_run(raw, tmp_path, monkeypatch, capsys):
    path, videos, _ = raw

    def full(self, image):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare._FrameWriter, "write", full)
    out = tmp_path / "out"
    assert _run(path, videos, out, "--format", "frames", "--size", "32") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and os.fspath(out) in err
    assert not [p for p in out.iterdir() if p.name != ".prepare.lock"
                and p.name != prepare.MANIFEST_NAME]


# --------------------------------------------------------------------------- real clip

def test_real_ntu_clip(shared_data, ntu, ntu_poses, tmp_path, capsys):
    """The real clip with MediaPipe's poses (the shared ``ntu_poses``, made once)."""
    from epam_jax.realvideo import person_box

    need_pose()
    ann = dict(ntu_poses[1], frame_dir="S001C001P001R001A001")
    ann.pop("filename", None)
    ann_path = tmp_path / "ntu.pkl"
    save_annotations(ann_path, [ann])
    out = tmp_path / "out"
    assert _run(ann_path, shared_data, out, "--video-pattern", "ntu_{frame_dir}_rgb.avi") == 0
    assert "ok 1, skipped 0 (already complete), failed 0" in capsys.readouterr().out
    rec = json.loads((out / prepare.MANIFEST_NAME).read_text())["videos"][ann["frame_dir"]]
    box = person_box(ann, ClipConfig(rgb=False))
    assert box is not None and tuple(rec["box"]) == box
    assert rec["source_size"] == [1080, 1920] and rec["frames"] == 103
    assert rec["fps_fraction"] == "30/1"
    got = decode_video_frames(out / "S001C001P001R001A001.mp4", np.arange(103), size=None)
    assert got.shape == (103, 224, 224, 3)
    picks = [0, 51, 102]
    x0, y0, x1, y1 = box
    native = decode_video_frames(ntu, picks, size=None)
    want = np.stack([resize_frame(f[y0:y1, x0:x1], (224, 224)) for f in native])
    assert _psnr(got[picks], want).min() > 38.0  # measured 40.6-42.4 dB (all 103: >= 40.6)
