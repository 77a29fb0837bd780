"""From raw videos to the paper's numbers on CPU: prepare -> train -> evaluate.

A raw synthetic dataset (small figures somewhere in larger, non-square frames) is
spatially aligned by ``epam_jax.prepare``; training on the raw videos is refused; a few
training steps run on the prepared ones; ``python -m epam_jax.evaluate`` then measures the
exported model with 2 test clips + flip, and its scores and metrics are checked against a
direct ``model.apply`` on the same inputs averaged by hand. A randomised PyTorch reference
checkpoint (``.pth``, the trainer's container) is evaluated too and checked against the
reference's own forward pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import random_variables, relative_error
from PIL import Image

from epam_jax import evaluate
from epam_jax.checkpoints import load_model
from epam_jax.data import ClipConfig, load_annotations, make_sample, make_synthetic_dataset
from epam_jax.metrics import accuracy_metrics, softmax
from epam_jax.prepare import prepare_videos

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
SIZE, CLIP_LEN, STRIDE = 64, 16, 4  # 4 RGB frames of 64x64, 16 pose frames of 16x16
GEOMETRY = ["--size", str(SIZE), "--clip-len", str(CLIP_LEN), "--rgb-stride", str(STRIDE)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    annotations = make_synthetic_dataset(root / "raw", num_classes=NUM_CLASSES, num_train=8,
                                         num_val=6, frames=(20, 30), size=(96, 160), raw=True,
                                         seed=5)
    summary = prepare_videos(annotations, root / "raw" / "videos", root / "prepared",
                             size=SIZE, progress=False)
    assert summary["ok"] == 14 and summary["failed"] == 0, summary
    return {"annotations": annotations, "raw": root / "raw" / "videos",
            "prepared": root / "prepared", "root": root}


def train(dataset: dict[str, Path], video_root: Path, workdir: Path, init: Path
          ) -> subprocess.CompletedProcess:
    """Two steps of ``train.py`` with the demo config from ``init``, attention picture
    included, compiled at XLA's lowest optimisation level (the numbers are the same;
    compiling is several times faster)."""
    overrides = {"data.annotations": dataset["annotations"], "data.video_root": video_root,
                 "data.num_classes": NUM_CLASSES, "batch_size": 4, "eval_batch_size": 4,
                 "num_train_steps": 2, "eval_every_steps": 2, "log_every_steps": 1,
                 "optimizer.warmup_steps": 0, "attention_picture": True,
                 "progress_bar": False, "init.checkpoint": init}
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
           "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in overrides.items())]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def reference_views(variables, anns, config: ClipConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, V, C) rgb and pose logits of every view, computed directly: the same inputs
    (``make_sample`` of each view) through the PyTorch reference network holding
    ``variables`` (the parity tests pin it to ``model.apply``), without the loader, the
    sharded eval step or the score table."""
    torch = pytest.importorskip("torch")
    from converters import flax_to_torch
    from converters.reference import build_reference

    ref = build_reference("epam", num_classes=NUM_CLASSES).eval()
    ref.load_state_dict(flax_to_torch(variables, model="epam"))
    inputs = [make_sample(a, config, train=False, view=v)
              for a in anns for v in range(config.num_views)]
    rgb = np.stack([s["rgb"] for s in inputs]).transpose(0, 4, 1, 2, 3)
    pose = np.stack([s["heatmap"] for s in inputs]).transpose(0, 4, 1, 2, 3)
    with torch.no_grad():
        rgb_logits, pose_logits = ref(torch.from_numpy(np.ascontiguousarray(rgb)),
                                      torch.from_numpy(np.ascontiguousarray(pose)))
    shape = (len(anns), config.num_views, -1)
    return rgb_logits.numpy().reshape(shape), pose_logits.numpy().reshape(shape)


@pytest.mark.slow(seconds=75)
def test_prepare_train_evaluate_end_to_end(dataset, tmp_path: Path, capsys) -> None:

    from epam_jax.checkpoints import save_variables
    from epam_jax.models import EPAMNet

    init = save_variables(tmp_path / "init", random_variables(EPAMNet(num_classes=NUM_CLASSES)))
    # raw 160x96 videos are refused before anything compiles
    refused = train(dataset, dataset["raw"], tmp_path / "refused", init)
    assert refused.returncode != 0
    assert re.search(r"160x96 frames.*python -m epam_jax.prepare", refused.stderr)
    assert not (tmp_path / "refused" / "checkpoints").exists()
    done = train(dataset, dataset["prepared"], tmp_path / "run", init)
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = tmp_path / "run" / "model"
    lines = done.stdout.strip().splitlines()
    assert lines[-3].startswith("final validation top-1: ") and lines[-3].endswith("%")
    assert lines[-2] == f"checkpoint: {model_dir}"
    assert lines[-1] == f"attention picture: {tmp_path / 'run' / 'attention.png'}"
    with Image.open(tmp_path / "run" / "attention.png") as png:
        assert png.size[0] > 0 and png.size[1] > 0
    # the export records the demo's clip geometry, which GEOMETRY repeats (so no warning)
    from epam_jax.checkpoints import load_meta

    recorded = load_meta(model_dir)["clip"]
    assert (recorded["clip_len"], recorded["rgb_stride"], recorded["rgb_size"]) == (
        CLIP_LEN, STRIDE, [SIZE, SIZE])

    out = tmp_path / "eval"
    argv = ["--checkpoint", str(model_dir), "--annotations", str(dataset["annotations"]),
            "--split", "val", "--video-root", str(dataset["prepared"]), *GEOMETRY,
            "--num-clips", "2", "--flip", "--batch-size", "4", "--out-dir", str(out),
            "--quiet"]
    report = evaluate.main(argv)
    printed = capsys.readouterr().out
    assert "fused (1:1)" in printed and "per-class accuracy" in printed
    assert "clips/s" in printed
    assert report == json.loads((out / "metrics.json").read_text())
    assert report["settings"]["num_views"] == 4 and report["num_clips"] == 24

    # scores equal the network on the same inputs; K clips + flip = the views averaged
    loaded = load_model(model_dir)
    anns = load_annotations(dataset["annotations"], split="val")
    config = ClipConfig(clip_len=CLIP_LEN, rgb_stride=STRIDE, rgb_size=(SIZE, SIZE),
                        heatmap_size=(SIZE // 4, SIZE // 4), video_root=str(dataset["prepared"]),
                        num_clips=2, test_flip=True)
    rgb, pose = reference_views(loaded.variables, anns, config)
    with np.load(out / "scores.npz") as f:
        scores = dict(f)
    assert scores["frame_dir"].tolist() == [a["frame_dir"] for a in anns]
    assert scores["label"].tolist() == [a["label"] for a in anns]
    assert relative_error(rgb, scores["view_rgb_logits"]) < 1e-4
    assert relative_error(pose, scores["view_pose_logits"]) < 1e-4
    assert relative_error(rgb.mean(1), scores["rgb_logits"]) < 1e-4
    fused = rgb.mean(1) + pose.mean(1)
    assert relative_error(fused, scores["fused_scores"]) < 1e-4
    labels = np.array([a["label"] for a in anns])
    # metrics recomputed from the per-video scores (checked above against the network;
    # taken from the file so that a near-tie cannot flip an argmax between the two)
    rgb_s, pose_s = scores["rgb_logits"], scores["pose_logits"]
    for name, s in (("fused", rgb_s + pose_s), ("rgb", rgb_s), ("pose", pose_s),
                    ("rgb:pose=2:1", 2 * rgb_s + pose_s)):
        want = accuracy_metrics(s, labels, NUM_CLASSES)
        for key in ("top1", "top5", "mean_class"):
            assert report[name][key] == pytest.approx(want[key]), (name, key)
    with Image.open(out / "confusion.png") as png:
        assert png.size[0] > 100 and png.size[1] > 100

    # --average prob averages each stream's softmax over the views
    prob = evaluate.main(argv[:-3] + ["--average", "prob", "--quiet"])
    want = accuracy_metrics(softmax(rgb).mean(1) + softmax(pose).mean(1), labels, NUM_CLASSES)
    assert prob["fused"]["mean_class"] == pytest.approx(want["mean_class"])


def test_evaluate_a_pytorch_reference_checkpoint(dataset, tmp_path: Path) -> None:
    """The trainer's .pth container (DistributedDataParallel keys) of a randomised reference,
    evaluated with the official protocol (1 clip, no flip), scores = the reference's own
    rgb_logits + pose_logits on the same inputs."""
    torch = pytest.importorskip("torch")
    from converters.reference import build_reference, randomize_

    ref = randomize_(build_reference("epam", num_classes=NUM_CLASSES), seed=3).eval()
    pth = tmp_path / "epam_ref.pth"
    torch.save({"epoch": 7, "model_state_dict": {f"module.{k}": v
                                                 for k, v in ref.state_dict().items()}}, pth)
    report = evaluate.main(["--checkpoint", str(pth), "--annotations",
                            str(dataset["annotations"]), "--split", "val", "--video-root",
                            str(dataset["prepared"]), *GEOMETRY, "--batch-size", "4",
                            "--scores", str(tmp_path / "s.npz"), "--quiet", "--no-per-class"])
    anns = load_annotations(dataset["annotations"], split="val")
    config = ClipConfig(clip_len=CLIP_LEN, rgb_stride=STRIDE, rgb_size=(SIZE, SIZE),
                        heatmap_size=(SIZE // 4, SIZE // 4), video_root=str(dataset["prepared"]))
    samples = [make_sample(a, config, train=False) for a in anns]
    rgb = torch.from_numpy(np.stack([s["rgb"] for s in samples]).transpose(0, 4, 1, 2, 3))
    pose = torch.from_numpy(np.stack([s["heatmap"] for s in samples]).transpose(0, 4, 1, 2, 3))
    with torch.no_grad():
        rgb_logits, pose_logits = (t.numpy() for t in ref(rgb.contiguous(), pose.contiguous()))
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert relative_error(rgb_logits, f["rgb_logits"]) < 1e-4
        assert relative_error(pose_logits, f["pose_logits"]) < 1e-4
        assert relative_error(rgb_logits + pose_logits, f["fused_scores"]) < 1e-4
    labels = np.array([a["label"] for a in anns])
    want = accuracy_metrics(rgb_logits + pose_logits, labels, NUM_CLASSES)
    assert report["fused"]["top1"] == pytest.approx(want["top1"])
    assert report["settings"]["num_views"] == 1


def test_evaluate_clear_errors(dataset, tmp_path: Path) -> None:
    base = ["--annotations", str(dataset["annotations"]), "--video-root",
            str(dataset["prepared"]), *GEOMETRY, "--quiet"]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate.main(["--checkpoint", str(tmp_path / "none"), *base])
    from epam_jax.checkpoints import save_variables
    from epam_jax.models import EPAMNet, variable_shapes

    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                   variable_shapes(EPAMNet(num_classes=NUM_CLASSES)))
    ckpt = save_variables(tmp_path / "ckpt", {c: zeros[c] for c in ("params", "batch_stats")})
    with pytest.raises(ValueError, match="classifies 3 classes but the ntu60_xsub recipe has 60"):
        evaluate.main(["--checkpoint", str(ckpt), "--dataset", "ntu60_xsub", *base])
    with pytest.raises(ValueError, match="unknown split"):
        evaluate.main(["--checkpoint", str(ckpt), "--split", "xsub_val", *base])
    other = tmp_path / "other.pkl"
    from epam_jax.data import save_annotations

    save_annotations(other, load_annotations(dataset["annotations"]),
                     {"val": ["nothing_like_this"]})
    with pytest.raises(ValueError, match="selects no sample"):
        evaluate.main(["--checkpoint", str(ckpt), *base[:0], "--annotations", str(other),
                       "--split", "val", "--video-root", str(dataset["prepared"]), *GEOMETRY])
    with pytest.raises(FileNotFoundError, match="videos not found"):
        evaluate.main(["--checkpoint", str(ckpt), "--split", "val", *base[:2],
                       "--video-root", str(dataset["raw"].parent), *GEOMETRY])
    with pytest.raises(ValueError, match="not a prepared video"):
        evaluate.main(["--checkpoint", str(ckpt), "--split", "val", *base[:2],
                       "--video-root", str(dataset["raw"]), *GEOMETRY])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        evaluate.main(["--checkpoint", str(ckpt), "--split", "val", *base,
                       "--out-dir", str(blocker / "out")])
    assert not (tmp_path / "out").exists()
