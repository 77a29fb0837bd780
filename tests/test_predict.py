"""``python -m epam_jax.predict`` on the real NTU clip: decode, poses, person crop,
scores equal to the dataset pipeline; bad videos are refused before the slow work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    NTU_NAME,
    cut,
    encode_video,
    moving,
    pose_python,
    relative_error,
)
from PIL import Image

from epam_jax import predict
from epam_jax.checkpoints import save_variables
from epam_jax.data import (
    ClipConfig,
    decode_video_frames,
    make_sample,
    normalize_rgb,
    save_annotations,
)
from epam_jax.data.ntu_classes import NTU60_CLASSES, NTU120_CLASSES
from epam_jax.data.pose import video_to_annotation
from epam_jax.data.video import MIN_SIDE
from epam_jax.realvideo import (
    check_video,
    video_poses,
)
from epam_jax.stream import Source


def test_predict_end_to_end_on_real_clip(tmp_path: Path, ntu: Path, ntu_poses, ntu_model,
                                         ntu_reference, capsys) -> None:
    """decode -> poses (MediaPipe in its own interpreter when available) -> person crop ->
    heatmaps -> EPAM-Net, compared with a direct model.apply on inputs rebuilt here."""
    from epam_jax import predict

    ckpt, _ = ntu_model
    pose_path, ann = ntu_poses
    python = pose_python()
    argv = [str(ntu), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "pred")]
    argv += ["--pose-python", python] if python else ["--poses", str(pose_path)]
    result = predict.main(argv)
    printed = capsys.readouterr().out
    assert "top-5" in printed and NTU120_CLASSES[result["top"][0]["index"]] in printed
    top = result["top"]
    assert len(top) == 5 and [t["score"] for t in top] == sorted(
        (t["score"] for t in top), reverse=True)
    assert all(t["name"] == f"A{t['index'] + 1} {NTU60_CLASSES[t['index']]}" for t in top)

    # the person crop holds every confident joint and is square
    x0, y0, x1, y1 = result["crop_box"]
    assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= 1920 and 0 <= y0 < y1 <= 1080
    kp = ann["keypoint"][0][ann["keypoint_score"][0] > 0.5]
    assert np.all((kp[:, 0] >= x0) & (kp[:, 0] <= x1) & (kp[:, 1] >= y0) & (kp[:, 1] <= y1))

    # rebuild the inputs: the sampled frames cut at the box, resized, normalised; heatmaps
    # of the keypoints shifted into the box
    inds = np.asarray(result["frame_indices"])
    native = decode_video_frames(ntu, inds, size=None)[:, y0:y1, x0:x1]
    rgb = normalize_rgb(np.stack(
        [np.asarray(Image.fromarray(f).resize((224, 224), Image.Resampling.BOX))
         for f in native]))
    kp_all = ann["keypoint"].copy()
    kp_all[..., 0][kp_all[..., 0] != 0] -= x0
    kp_all[..., 1][kp_all[..., 1] != 0] -= y0
    boxed = dict(ann, keypoint=kp_all, img_shape=(y1 - y0, x1 - x0))
    pose_only = ClipConfig(rgb=False)
    heat = make_sample(boxed, pose_only, train=False)["heatmap"]
    want = ntu_reference(rgb, heat)
    got = result["outputs"]
    for key in ("rgb_logits", "pose_logits", "attention"):
        assert relative_error(want[key], got[key]) < 1e-4, key

    out = tmp_path / "pred"
    assert sorted(p.name for p in out.iterdir()) == [
        "attention.gif", "attention.png", "outputs.npz", "prediction.json"]
    with np.load(out / "outputs.npz") as f:
        np.testing.assert_array_equal(f["scores"], got["scores"])
        assert f["attention"].shape == (16, 7, 7, 1)
    report = json.loads((out / "prediction.json").read_text())
    assert report["top"] == top and report["crop_box"] == [x0, y0, x1, y1]
    with Image.open(out / "attention.gif") as gif:
        assert gif.n_frames == 16


def test_predict_whole_frame_equals_dataset_pipeline(tmp_path: Path, ntu: Path, ntu_poses,
                                                     ntu_model, ntu_reference) -> None:
    from epam_jax import predict

    ckpt, _ = ntu_model
    pose_path, ann = ntu_poses
    png = tmp_path / "pics" / "att.png"
    result = predict.main([str(ntu), "--checkpoint", str(ckpt), "--poses", str(pose_path),
                           "--crop", "none", "--attention-png", str(png), "--top-k", "3"])
    assert result["crop_box"] is None and len(result["top"]) == 3
    config = ClipConfig(video_root=str(ntu.parent), video_ext=".avi")
    sample = make_sample(dict(ann, frame_dir=NTU_NAME), config, train=False)
    want = ntu_reference(sample["rgb"], sample["heatmap"])
    for key in ("rgb_logits", "pose_logits", "attention"):
        assert relative_error(want[key], result["outputs"][key]) < 1e-4, key
    assert result["files"] == [png] and png.is_file()


def test_predict_clear_errors(tmp_path: Path, ntu: Path, ntu_poses, ntu_model,
                              monkeypatch) -> None:
    from epam_jax import predict, realvideo

    ckpt, variables = ntu_model
    pose_path, ann = ntu_poses
    base = ["--checkpoint", str(ckpt), "--poses", str(pose_path)]
    garbage = tmp_path / "broken.avi"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="cannot read video .*broken.avi"):
        predict.main([str(garbage), *base])
    with pytest.raises(FileNotFoundError, match="no video file"):
        predict.main([str(tmp_path / "missing.avi"), *base])
    # the command line prints the message, not a traceback
    done = subprocess.run(
        [sys.executable, "-m", "epam_jax.predict", str(garbage), *base],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: cannot read video")
    assert "Traceback" not in done.stderr

    empty = dict(ann, keypoint=np.zeros_like(ann["keypoint"]),
                 keypoint_score=np.zeros_like(ann["keypoint_score"]))
    save_annotations(tmp_path / "nobody.pkl", [empty])
    with pytest.raises(ValueError, match="no person found"):
        predict.main([str(ntu), "--checkpoint", str(ckpt), "--poses",
                      str(tmp_path / "nobody.pkl")])

    backbone = {c: {k: v for k, v in variables[c].items() if not k.endswith("_cls_head")}
                for c in ("params", "batch_stats")}
    bb = save_variables(tmp_path / "bb", backbone)
    with pytest.raises(ValueError, match="without classification heads"):
        predict.main([str(ntu), "--checkpoint", str(bb), "--poses", str(pose_path)])

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create the output directory"):
        predict.main([str(ntu), *base, "--out-dir", str(blocker / "out")])
    with pytest.raises(PermissionError, match="picture directory"):
        predict.main([str(ntu), *base, "--attention-png", str(blocker / "a.png")])

    # no MediaPipe anywhere: the message says how to get it
    monkeypatch.delenv("EPAM_POSE_PYTHON", raising=False)
    monkeypatch.setattr(realvideo, "_mediapipe_in_process", lambda: False)
    with pytest.raises(RuntimeError, match="(?s)mediapipe==0.10.14.*--poses"):
        predict.main([str(ntu), "--checkpoint", str(ckpt)])


SHAPE = (96, 128)


def test_truncated_real_avi_is_refused_before_the_slow_work(ntu: Path, tmp_path: Path
                                                            ) -> None:
    """The first 30% of the NTU clip: 15 of the 103 frames its header states. Refused
    by the checks before the checkpoint is read and before MediaPipe starts (neither
    exists here: reaching them would fail otherwise)."""
    bad = cut(ntu, 0.3, tmp_path / "cut.avi")
    message = r"cut.avi' is truncated or corrupt: it decodes to 15 frames, its header states 103"
    with pytest.raises(ValueError, match=message):
        check_video(bad)
    with pytest.raises(ValueError, match=message):
        predict.main([os.fspath(bad), "--checkpoint", os.fspath(tmp_path / "no_ckpt")])
    with pytest.raises(ValueError, match=message):
        video_poses(bad, os.fspath(tmp_path / "no_python"))
    with pytest.raises(ValueError, match=message):
        Source(os.fspath(bad))


def test_tiny_noise_video_is_refused_before_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = encode_video(tmp_path / "noise.mp4",
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
    narrow = encode_video(tmp_path / "narrow.mp4", moving(3, (30, 64)))
    with pytest.raises(ValueError, match="is 64x30 pixels"):
        check_video(narrow)
    assert check_video(encode_video(tmp_path / "edge.mp4", moving(3, (32, 48)))).is_file()
