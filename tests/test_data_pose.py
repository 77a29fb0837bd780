"""Poses from the real NTU clip with MediaPipe (optional extra 'pose').

Runs in this interpreter when mediapipe imports, else through the interpreter named by
EPAM_POSE_PYTHON (a separate environment holding the extra), else skips."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import need_pose, run_pose_cli

from epam_jax.data import (
    ClipConfig,
    load_annotations,
    make_sample,
)
from epam_jax.data.video import iter_video_frames
from epam_jax.realvideo import (
    _poses_in_subprocess,
)

ROOT = Path(__file__).resolve().parents[1]
NTU = ROOT.parent / "shared" / "data" / "ntu_S001C001P001R001A001_rgb.avi"


def extract(tmp_path: Path) -> dict:
    if not NTU.is_file():
        pytest.skip(f"real NTU clip not found at {NTU} (needs ../shared/data beside the project)")
    out = tmp_path / "ntu_pose.pkl"
    if importlib.util.find_spec("mediapipe") is not None:
        python = sys.executable
    elif os.environ.get("EPAM_POSE_PYTHON"):
        python = os.environ["EPAM_POSE_PYTHON"]
    else:
        pytest.skip("mediapipe is not installed (pip install '.[pose]' or set EPAM_POSE_PYTHON)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [python, "-m", "epam_jax.data.pose", str(NTU), str(out), "--label", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "103/103 frames with a person" in done.stdout
    (ann,) = load_annotations(out, num_classes=60)
    return ann


def test_ntu_clip_yields_poses_and_heatmaps(tmp_path: Path) -> None:
    ann = extract(tmp_path)
    assert ann["total_frames"] == 103 and ann["img_shape"] == (1080, 1920)
    assert ann["keypoint"].shape == (1, 103, 17, 2) and ann["num_detected"] == 103
    kp, score = ann["keypoint"][0], ann["keypoint_score"][0]
    assert np.all(score.max(axis=1) > 0.5)  # every frame has confident joints
    # a seated person seen from the front: head above shoulders above hips, left joints of
    # the body on the image's right
    assert np.all(kp[:, 0, 1] < kp[:, 5:7, 1].mean(1))
    assert np.all(kp[:, 5:7, 1].mean(1) < kp[:, 11:13, 1].mean(1))
    assert np.median(kp[:, 5, 0] - kp[:, 6, 0]) > 0
    config = ClipConfig(video_root=str(NTU.parent), video_ext=".avi")
    ann["frame_dir"] = NTU.stem
    sample = make_sample(ann, config, train=False)
    assert sample["rgb"].shape == (16, 224, 224, 3)
    heat = sample["heatmap"]
    assert heat.shape == (48, 56, 56, 17)
    assert np.all(heat.reshape(48, -1, 17).max(1)[:, [0, 5, 6, 11, 12]] > 0.3)


SHAPE = (96, 128)


def test_pose_command_refuses_a_truncated_video_or_keeps_what_decodes(small_videos,
                                                                      tmp_path: Path) -> None:
    """Refused: the command exits with EXIT_BAD_INPUT after one ``error:`` line, which
    predict's subprocess call raises as that ValueError (not the MediaPipe log)."""
    python = need_pose()
    bad = small_videos["avi_cut"]
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
