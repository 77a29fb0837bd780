"""Tools: attention pictures, feature extraction and prediction on the real NTU clip.

Extraction and prediction run in-process through their ``main(argv)`` on the shared real
clip with a small randomly initialised EPAM-Net checkpoint (``save_variables``), and their
outputs are checked against a direct ``model.apply`` on inputs made by ``epam_jax.data``.
Poses come from MediaPipe (in this interpreter or ``$EPAM_POSE_PYTHON``, as
tests/test_data_pose.py); without it, from a synthetic skeleton placed on the person.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import pose_python, random_variables, synthetic_person
from PIL import Image

from epam_jax.checkpoints import save_variables
from epam_jax.cli import atomic_output
from epam_jax.data import (
    ClipConfig,
    decode_video_frames,
    make_sample,
    normalize_rgb,
    save_annotations,
)
from epam_jax.data.ntu_classes import NTU60_CLASSES, NTU120_CLASSES, class_names
from epam_jax.models import EPAMBackbone, EPAMNet, SingleStreamNet
from epam_jax.viz import COLORMAP, denormalize_rgb, overlay, save_attention_pictures

NTU_NAME = "ntu_S001C001P001R001A001_rgb"
NUM_CLASSES = 60


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ntu(shared_data: Path) -> Path:
    path = shared_data / f"{NTU_NAME}.avi"
    if not path.is_file():
        pytest.skip(f"real NTU clip not found at {path}")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A randomly initialised 60-class EPAM-Net checkpoint and its variables."""
    variables = random_variables(EPAMNet(num_classes=NUM_CLASSES))
    path = save_variables(tmp_path_factory.mktemp("ckpt") / "epam", variables)
    return path, variables


@pytest.fixture(scope="module")
def ntu_poses(ntu: Path, tmp_path_factory) -> tuple[Path, dict]:
    """Pose annotation of the NTU clip (MediaPipe when available) as a pickle and a dict."""
    from epam_jax.realvideo import single_video_annotation, video_poses

    python = pose_python()
    ann = video_poses(ntu, python) if python else synthetic_person(103, (1080, 1920))
    path = tmp_path_factory.mktemp("poses") / "ntu_poses.pkl"
    save_annotations(path, [ann])
    return path, single_video_annotation(ntu, poses=path)


@pytest.fixture(scope="module")
def reference(model_dir):
    """A direct ``EPAMBackbone(fusion='residual').apply`` (rgb + rgb * attention, pose
    features, attention) plus EPAM-Net's two I3D heads in numpy (mean over T, H, W, then
    the dense layer), one clip at a time; the seed backbone's rgb * attention follows."""
    _, variables = model_dir
    backbone = EPAMBackbone(fusion="residual")
    backbone_vars = {c: {k: v for k, v in variables[c].items() if not k.endswith("_cls_head")}
                     for c in ("params", "batch_stats")}
    apply = jax.jit(lambda r, p: backbone.apply(backbone_vars, r, p, return_attention=True))

    def head(name: str, feats: np.ndarray) -> np.ndarray:
        fc = variables["params"][name]["fc_cls"]
        pooled = feats.astype(np.float64).mean(axis=(0, 1, 2))
        return pooled @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])

    def run(rgb: np.ndarray, pose: np.ndarray) -> dict[str, np.ndarray]:
        residual, pose_feats, attention = (np.asarray(x)[0] for x in apply(rgb[None], pose[None]))
        rgb_feats = residual / (1.0 + attention)
        return {
            "rgb_logits": head("rgb_cls_head", residual),
            "pose_logits": head("pose_cls_head", pose_feats),
            "attention": attention,
            "rgb_residual": residual,
            "rgb_features": rgb_feats * attention,
            "pose_features": pose_feats,
        }

    return run


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


# --------------------------------------------------------------------------- pictures


def blob_clip(t: int = 16, h: int = 48, w: int = 80):
    """Grey frames and a 7x7 attention map hot in the left-top cell region, moving."""
    frames = np.full((t, h, w, 3), 128, np.uint8)
    att = np.full((t, 7, 7), 0.1, np.float32)
    for i in range(t):
        att[i, 1, i % 7] = 0.9
    return frames, att


def test_attention_pictures_png_grid_and_gif(tmp_path: Path) -> None:
    frames, att = blob_clip()
    paths = save_attention_pictures(frames, att[..., None], tmp_path / "a" / "att.png",
                                    tmp_path / "att.gif", title="blob")
    assert paths == [tmp_path / "a" / "att.png", tmp_path / "att.gif"]
    with Image.open(paths[0]) as png:
        assert png.format == "PNG" and png.size[0] >= 8 * 80 and png.size[1] > 2 * 48
    with Image.open(paths[1]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 16 and gif.info.get("loop") == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "att.gif", "att.png"]
    # The hot cell gets the top of the colour map, the cold rest the bottom, blended.
    blended = overlay(frames, att)
    hot = blended[0, int(1.5 * 48 / 7), int(0.5 * 80 / 7)].astype(int)
    cold = blended[0, int(5.5 * 48 / 7), int(5.5 * 80 / 7)].astype(int)
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40
    expect_cold = np.round(0.55 * 128 + 0.45 * COLORMAP[0].astype(float))
    np.testing.assert_allclose(cold, expect_cold, atol=1)
    # the blob moves one cell to the right per frame, and so does the picture's hot spot
    col = [np.argmax(blended[i, int(1.5 * 48 / 7), :, 0]) for i in range(7)]
    assert np.all(np.diff(col) > 0)


def test_attention_pictures_reject_bad_inputs(tmp_path: Path) -> None:
    frames, att = blob_clip()
    with pytest.raises(ValueError, match="same number of frames T.*16 frames and 8"):
        save_attention_pictures(frames, att[:8], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        save_attention_pictures(frames.astype(np.float32), att, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(T, h, w\)"):
        save_attention_pictures(frames, att[None], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        save_attention_pictures(frames[..., :1], att, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_pictures_refuse_unwritable_directory_and_leave_nothing_half_written(
    tmp_path: Path, monkeypatch
) -> None:
    frames, att = blob_clip()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot create the picture directory"):
        save_attention_pictures(frames, att, blocker / "sub" / "x.png")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            save_attention_pictures(frames, att, locked / "x.png")
    # a failure in the middle of a write leaves neither the file nor a temporary one
    target = tmp_path / "out" / "x.png"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"\x89PNG half")
            raise RuntimeError("disk full")
    assert list((tmp_path / "out").iterdir()) == []

    from epam_jax import extract

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(extract.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        extract.write_npz(tmp_path / "out" / "clip.npz", {"a": np.zeros(3)})
    assert list((tmp_path / "out").iterdir()) == []


def test_denormalize_inverts_normalize() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(denormalize_rgb(normalize_rgb(frames)), frames)


def test_ntu_class_names() -> None:
    assert len(NTU120_CLASSES) == 120 and len(set(NTU120_CLASSES)) == 120
    assert NTU60_CLASSES == NTU120_CLASSES[:60]
    names = class_names(120)
    assert names[0] == "A1 drink water" and names[42] == "A43 falling"
    assert names[59] == "A60 walking apart from each other"
    assert names[60] == "A61 put on headphone"
    assert names[119] == "A120 finger-guessing game (playing rock-paper-scissors)"
    assert class_names(60) == names[:60]
    assert class_names(3) == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError, match="expected 4 class names"):
        class_names(4, ["a", "b"])


# --------------------------------------------------------------------------- checkpoints


def test_load_model_accepts_two_stream_checkpoints_only(tmp_path: Path, model_dir) -> None:
    from epam_jax.checkpoints import load_model

    path, variables = model_dir
    loaded = load_model(path)
    assert isinstance(loaded.model, EPAMNet) and loaded.has_heads
    assert loaded.model.num_classes == NUM_CLASSES
    backbone = {c: {k: v for k, v in variables[c].items() if not k.endswith("_cls_head")}
                for c in ("params", "batch_stats")}
    loaded_bb = load_model(save_variables(tmp_path / "backbone", backbone))
    assert isinstance(loaded_bb.model, EPAMBackbone) and not loaded_bb.has_heads

    rgb_only = save_variables(tmp_path / "rgb", random_variables(SingleStreamNet("rgb")))
    with pytest.raises(ValueError, match="two-stream EPAM-Net checkpoint.*'rgb'"):
        load_model(rgb_only)
    with pytest.raises(FileNotFoundError, match="is not an epam-jax checkpoint: expected "
                                                "epam_model.json and variables/"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "weights.bin")


def test_load_model_from_pytorch_checkpoint(tmp_path: Path, model_dir) -> None:
    torch = pytest.importorskip("torch")
    import converters
    from epam_jax.checkpoints import load_model

    _, variables = model_dir
    state = converters.flax_to_torch(variables, model="epam")
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "epam.pth")
    loaded = load_model(tmp_path / "epam.pth")
    assert isinstance(loaded.model, EPAMNet) and loaded.model.num_classes == NUM_CLASSES
    for got, want in zip(jax.tree_util.tree_leaves(loaded.variables),
                         jax.tree_util.tree_leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    rgb_state = converters.flax_to_torch(random_variables(SingleStreamNet("rgb")), model="rgb")
    torch.save({"state_dict": rgb_state}, tmp_path / "rgb.pth")
    with pytest.raises(ValueError, match="not a two-stream EPAM-Net checkpoint"):
        load_model(tmp_path / "rgb.pth")


# --------------------------------------------------------------------------- extraction


def three_clips(ann: dict, ntu: Path, shared_data: Path, tmp_path: Path):
    """The NTU clip, its first 60 frames, and the other real clip with the same poses,
    as annotations and as a pickle."""
    demo = shared_data / "person_demo_1080p.mp4"
    anns = [
        dict(ann, frame_dir="ntu_full", filename=ntu.name),
        dict(ann, frame_dir="ntu_first60", filename=ntu.name, total_frames=60,
             keypoint=ann["keypoint"][:, :60], keypoint_score=ann["keypoint_score"][:, :60]),
        dict(ann, frame_dir="sub/demo", filename=demo.name, total_frames=72,
             keypoint=ann["keypoint"][:, :72], keypoint_score=ann["keypoint_score"][:, :72]),
    ]
    for a in anns:
        a.pop("num_detected", None)
    ann_file = tmp_path / "anns.pkl"
    save_annotations(ann_file, anns)
    return anns, ann_file


def test_extract_real_clips_matches_model_apply_and_resumes(
    tmp_path: Path, shared_data: Path, ntu: Path, ntu_poses, model_dir, reference
) -> None:
    from epam_jax import extract

    _, ann = ntu_poses
    ckpt, _ = model_dir
    anns, ann_file = three_clips(ann, ntu, shared_data, tmp_path)
    out = tmp_path / "feats"
    argv = ["--checkpoint", str(ckpt), "--out-dir", str(out), "--annotations", str(ann_file),
            "--video-root", str(shared_data), "--batch-size", "1", "--fusion", "residual",
            "--pictures", "--quiet"]
    # the raw 1920x1080 clip is not a prepared dataset video: refused, naming prepare
    with pytest.raises(ValueError, match=r"1920x1080 frames.*python -m epam_jax.prepare"):
        extract.main(argv)
    assert not list(out.glob("*.npz"))
    argv.append("--allow-unprepared")
    written = extract.main(argv)
    names = ["ntu_full", "ntu_first60", "sub__demo"]
    assert sorted(p.name for p in written) == sorted(f"{n}.npz" for n in names)
    config = ClipConfig(video_root=str(shared_data))
    for a, name in zip(anns, names, strict=True):
        with np.load(out / f"{name}.npz") as f:
            got = dict(f)
        assert str(got["frame_dir"]) == a["frame_dir"] and int(got["label"]) == 0
        assert set(got) == {"attention", "rgb_pooled", "pose_pooled", "rgb_logits",
                            "pose_logits", "scores", "label", "frame_dir"}
        assert got["attention"].shape == (16, 7, 7, 1)
        assert got["rgb_pooled"].shape == (432,) and got["pose_pooled"].shape == (216,)
        assert got["rgb_logits"].shape == got["scores"].shape == (NUM_CLASSES,)
        sample = make_sample(a, config, train=False)
        want = reference(sample["rgb"], sample["heatmap"])
        for key in ("rgb_logits", "pose_logits", "attention"):
            assert rel(want[key], got[key]) < 1e-4, key
        assert rel(want["rgb_residual"].mean((0, 1, 2)), got["rgb_pooled"]) < 1e-4
        assert rel(want["pose_features"].mean((0, 1, 2)), got["pose_pooled"]) < 1e-4
        np.testing.assert_allclose(got["scores"], got["rgb_logits"] + got["pose_logits"],
                                   rtol=1e-6, atol=1e-6)
        with Image.open(out / f"{name}_attention.png") as png:
            assert png.size[0] > 8 * 100
    # distinct clips give distinct features
    with np.load(out / "ntu_full.npz") as a, np.load(out / "sub__demo.npz") as b:
        assert rel(a["rgb_pooled"], b["rgb_pooled"]) > 1e-3
    meta = json.loads((out / "extract_meta.json").read_text())
    assert meta["model"] == "epam" and meta["fusion"] == "residual"

    # resume: only the missing clip is extracted again; the others are left untouched
    (out / "ntu_first60.npz").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    again = extract.main(argv)
    assert [p.name for p in again] == ["ntu_first60.npz"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")
            if p.name in before} == before
    assert extract.main(argv) == []
    assert not list(out.glob(".*.tmp"))
    # other settings into the same folder are refused rather than mixed in
    with pytest.raises(ValueError, match="other settings.*fusion"):
        extract.main(argv + ["--fusion", "multiply"])


def test_extract_sharded_over_two_devices(tmp_path: Path, shared_data: Path, ntu: Path,
                                         ntu_poses, model_dir, reference) -> None:
    """Two local (CPU) devices: the batch of 3 becomes 4 split over the mesh, padded with
    one copy; every clip's unpooled and pooled features, attention and logits still match
    a direct model.apply."""
    ckpt, _ = model_dir
    anns, ann_file = three_clips(ntu_poses[1], ntu, shared_data, tmp_path)
    out = tmp_path / "feats"
    code = (
        "import jax, sys; from epam_jax import extract\n"
        "assert jax.local_device_count() == 2, jax.local_devices()\n"
        "extract.main(sys.argv[1:])\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-c", code, "--checkpoint", str(ckpt), "--out-dir", str(out),
           "--annotations", str(ann_file), "--video-root", str(shared_data),
           "--batch-size", "3", "--pooling", "both", "--quiet", "--allow-unprepared"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = ClipConfig(video_root=str(shared_data))
    for a in anns:
        with np.load(out / f"{a['frame_dir'].replace('/', '__')}.npz") as f:
            got = dict(f)
        assert got["rgb_features"].shape == (16, 7, 7, 432)
        assert got["pose_features"].shape == (48, 7, 7, 216)
        sample = make_sample(a, config, train=False)
        want = reference(sample["rgb"], sample["heatmap"])
        for key in ("rgb_logits", "pose_logits", "attention", "rgb_features", "pose_features"):
            assert rel(want[key], got[key]) < 1e-4, key
        assert rel(want["rgb_features"].mean((0, 1, 2)), got["rgb_pooled"]) < 1e-4
        assert rel(want["pose_features"].mean((0, 1, 2)), got["pose_pooled"]) < 1e-4


def test_extract_clear_errors(tmp_path: Path, model_dir, ntu_poses) -> None:
    from epam_jax import extract

    ckpt, _ = model_dir
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot create the output directory"):
        extract.main(["--checkpoint", str(ckpt), "--out-dir", str(blocker / "feats"),
                      "--video", "missing.avi"])
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 200)
    anns = [dict(ntu_poses[1], frame_dir=name, filename=f"{name}.mp4")
            for name in ("broken", "absent")]
    save_annotations(tmp_path / "anns.pkl", anns)
    argv = ["--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "feats"), "--annotations",
            str(tmp_path / "anns.pkl"), "--video-root", str(videos), "--quiet"]
    with pytest.raises(FileNotFoundError, match="1 of 2 videos not found.*absent.mp4"):
        extract.main(argv)
    save_annotations(tmp_path / "anns.pkl", anns[:1])
    with pytest.raises(ValueError, match="cannot read video .*broken.mp4"):  # before compiling
        extract.main(argv)
    assert not list((tmp_path / "feats").glob("*.npz"))


# --------------------------------------------------------------------------- prediction


def test_predict_end_to_end_on_real_clip(tmp_path: Path, ntu: Path, ntu_poses, model_dir,
                                         reference, capsys) -> None:
    """decode -> poses (MediaPipe in its own interpreter when available) -> person crop ->
    heatmaps -> EPAM-Net, compared with a direct model.apply on inputs rebuilt here."""
    from epam_jax import predict

    ckpt, _ = model_dir
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
    want = reference(rgb, heat)
    got = result["outputs"]
    for key in ("rgb_logits", "pose_logits", "attention"):
        assert rel(want[key], got[key]) < 1e-4, key

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
                                                     model_dir, reference) -> None:
    from epam_jax import predict

    ckpt, _ = model_dir
    pose_path, ann = ntu_poses
    png = tmp_path / "pics" / "att.png"
    result = predict.main([str(ntu), "--checkpoint", str(ckpt), "--poses", str(pose_path),
                           "--crop", "none", "--attention-png", str(png), "--top-k", "3"])
    assert result["crop_box"] is None and len(result["top"]) == 3
    config = ClipConfig(video_root=str(ntu.parent), video_ext=".avi")
    sample = make_sample(dict(ann, frame_dir=NTU_NAME), config, train=False)
    want = reference(sample["rgb"], sample["heatmap"])
    for key in ("rgb_logits", "pose_logits", "attention"):
        assert rel(want[key], result["outputs"][key]) < 1e-4, key
    assert result["files"] == [png] and png.is_file()


def test_predict_clear_errors(tmp_path: Path, ntu: Path, ntu_poses, model_dir,
                              monkeypatch) -> None:
    from epam_jax import predict, realvideo

    ckpt, variables = model_dir
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


def test_mediapipe_finds_no_person_in_an_empty_video(tmp_path: Path) -> None:
    import av

    from epam_jax.realvideo import video_poses

    python = pose_python()
    if python is None:
        pytest.skip("mediapipe is not installed (pip install '.[pose]' or set EPAM_POSE_PYTHON)")
    path = tmp_path / "empty_room.mp4"
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(8):
            img = np.full((120, 160, 3), 90 + 5 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(ValueError, match="no person found in .*empty_room.mp4.*8 frames"):
        video_poses(path, python)


def test_crop_config_is_the_pipelines_rule(ntu_poses) -> None:
    """The person box is the compact-keypoint box of the whole clip, so the pose crop
    inside it spans (nearly) the same region: RGB and attention cells line up."""
    from epam_jax.data import compact_keypoints
    from epam_jax.realvideo import crop_annotation, person_box

    _, ann = ntu_poses
    config = ClipConfig(rgb=False)
    box = person_box(ann, config)
    assert box is not None
    inner = crop_annotation(ann, box)
    _, shape = compact_keypoints(inner["keypoint"], inner["img_shape"])
    assert abs(shape[0] - inner["img_shape"][0]) <= 2
    assert abs(shape[1] - inner["img_shape"][1]) <= 2
