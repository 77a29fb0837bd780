"""Action prediction on a real video, with the attention picture.

    python -m epam_jax.predict VIDEO --checkpoint CKPT [--out-dir DIR]

decode -> poses (MediaPipe, the optional ``pose`` extra; or ``--poses ANN.pkl``) -> the
person crop -> heatmaps -> EPAM-Net, then prints the top-5 classes of the fused score
``rgb_logits + pose_logits`` with NTU RGB+D 60/120 names. MediaPipe pins protobuf<5 and
cannot share an environment with grain: it runs in this process when importable, else in
the interpreter given by ``--pose-python`` or ``$EPAM_POSE_PYTHON``. The clip has the
geometry the checkpoint records (pose frames, RGB stride, frame and heatmap sizes; the
paper's 48 frames of 224x224 for PyTorch checkpoints), printed on the ``clip`` line;
``--size`` overrides it, with a warning when it differs.

``--out-dir`` writes ``prediction.json`` (top-k and settings), ``outputs.npz`` (logits,
scores, attention, sampled frame numbers) and ``attention.png``/``attention.gif``;
``--attention-png``/``--attention-gif`` name the pictures directly.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epam_jax.checkpoints import LoadedModel, describe_clip, load_model
from epam_jax.cli import OneLineErrors, atomic_output, output_dirs, run_cli, write_npz
from epam_jax.data import ClipConfig
from epam_jax.data.datasets import read_names
from epam_jax.data.ntu_classes import class_names
from epam_jax.forward import make_forward
from epam_jax.realvideo import VideoClip, check_video, single_video_annotation, video_clip
from epam_jax.viz import save_attention_gif, save_attention_pictures


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def top_k(scores: np.ndarray, names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` best classes of one clip's fused scores, with softmax probabilities."""
    scores = np.asarray(scores, np.float64)
    probs = _softmax(scores)
    order = np.argsort(-scores, kind="stable")[: max(1, min(k, len(scores)))]
    return [
        {"index": int(i), "name": names[i], "score": float(scores[i]), "prob": float(probs[i])}
        for i in order
    ]


def require_heads(loaded: LoadedModel) -> None:
    """Refuse a backbone checkpoint: it has no classifier to predict with."""
    if not loaded.has_heads:
        raise ValueError(
            f"{loaded.meta['checkpoint']} is a {loaded.meta['model']!r} checkpoint without "
            "classification heads; prediction needs an EPAM-Net ('epam') checkpoint "
            "(use python -m epam_jax.extract for features)"
        )


def predict_clip(loaded: LoadedModel, clip: VideoClip) -> dict[str, np.ndarray]:
    """Logits, fused scores and attention of one clip (the jit-compiled sharded forward)."""
    require_heads(loaded)
    forward, num_devices = make_forward(loaded, fusion="residual", pooling="pooled")
    rgb = np.tile(clip.rgb[None], (num_devices,) + (1,) * clip.rgb.ndim)
    heat = np.tile(clip.heatmap[None], (num_devices,) + (1,) * clip.heatmap.ndim)
    outputs = forward({"rgb": rgb, "heatmap": heat})
    return {k: outputs[k][0] for k in ("rgb_logits", "pose_logits", "scores", "attention")}


def _read_names(path: str | None, num_classes: int) -> list[str]:
    return class_names(num_classes, None if path is None else read_names(path))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m epam_jax.predict",
        description="Top-5 actions of a video with EPAM-Net, and its attention picture.",
    )
    parser.add_argument("video", help="video file (any format PyAV decodes)")
    parser.add_argument("--checkpoint", required=True,
                        help="EPAM-Net checkpoint: epam-jax directory or PyTorch .pth")
    parser.add_argument("--poses", help="PoseC3D pose pickle of this video (skips MediaPipe)")
    parser.add_argument("--pose-python",
                        help="python of an environment with mediapipe (or EPAM_POSE_PYTHON)")
    parser.add_argument("--crop", choices=("person", "none"), default="person",
                        help="cut the box around the person out of the frames first (default), "
                             "or feed whole frames (for videos already cropped)")
    parser.add_argument("--size", type=int, default=None,
                        help="RGB side; pose heatmaps are size/4 (default: the checkpoint's "
                             "clip geometry, 224 for checkpoints that record none)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--class-names", help="text file, one class name per line")
    parser.add_argument("--out-dir", help="write prediction.json, outputs.npz and pictures here")
    parser.add_argument("--attention-png", help="attention picture (PNG grid) path")
    parser.add_argument("--attention-gif", help="animated attention GIF path")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; returns what it printed and wrote (for callers and tests)."""
    args = build_parser().parse_args(argv)
    if args.size is not None and (args.size <= 0 or args.size % 4):
        raise SystemExit(f"error: --size must be a positive multiple of 4, got {args.size}")
    if args.top_k <= 0:
        raise SystemExit(f"error: --top-k must be > 0, got {args.top_k}")
    video = check_video(args.video)
    png, gif = args.attention_png, args.attention_gif
    out_dir = None if args.out_dir is None else Path(args.out_dir)
    if out_dir is not None:
        png = png or out_dir / "attention.png"
        gif = gif or out_dir / "attention.gif"
    pictures = [Path(path).parent for path in (png, gif) if path is not None]
    # made before the slow part (a folder that cannot be is an error now, not after it),
    # and removed again if the prediction fails
    with output_dirs(out_dir), output_dirs(*pictures, what="picture"):
        return _predict(args, video, out_dir, png, gif)


def _predict(args: argparse.Namespace, video: Path, out_dir: Path | None,
             png: str | os.PathLike[str] | None, gif: str | os.PathLike[str] | None
             ) -> dict[str, Any]:
    """``main``'s work once the output folders exist."""
    loaded = load_model(args.checkpoint)
    require_heads(loaded)
    names = _read_names(args.class_names, int(loaded.meta["num_classes"]))
    geometry = loaded.clip_fields(size=args.size)

    ann = single_video_annotation(video, args.poses, args.pose_python)
    config = ClipConfig(video_root=os.fspath(video.parent), **geometry)
    clip = video_clip(video, ann, config, crop=args.crop == "person")
    outputs = predict_clip(loaded, clip)
    best = top_k(outputs["scores"], names, args.top_k)

    detected = int(ann.get("num_detected", ann["total_frames"]))
    crop = "whole frame" if clip.box is None else "person box x {0}..{2}, y {1}..{3}".format(
        *clip.box)
    print(f"video   {video} ({ann['total_frames']} frames, {ann['img_shape'][1]}x"
          f"{ann['img_shape'][0]}), {detected} frames with a person, {crop}")
    print(f"model   {loaded.meta['model']}, {loaded.meta['num_classes']} classes, "
          f"{loaded.meta['attention_type']}, {loaded.meta['checkpoint']}")
    print(f"clip    {describe_clip(geometry)}")
    print(f"top-{len(best)} (fused score rgb_logits + pose_logits, softmax probability):")
    width = max(len(b["name"]) for b in best)
    for rank, b in enumerate(best, 1):
        print(f"  {rank}. {b['name']:<{width}}  p={b['prob']:.3f}  score={b['score']:+.3f}")

    result: dict[str, Any] = {
        "video": os.fspath(video.absolute()),
        "checkpoint": loaded.meta["checkpoint"],
        "num_classes": int(loaded.meta["num_classes"]),
        "crop_box": None if clip.box is None else list(clip.box),
        "frame_indices": clip.frame_indices.tolist(),
        "size": config.rgb_size[0],
        "clip_len": config.clip_len,
        "rgb_stride": config.rgb_stride,
        "top": best,
        "outputs": outputs,
        "files": [],
    }
    attention = outputs["attention"][..., 0]
    if png is not None:
        title = f"{video.name}: top-1 {best[0]['name']} (p={best[0]['prob']:.2f})"
        result["files"] += save_attention_pictures(clip.frames, attention, png, gif, title)
    elif gif is not None:
        result["files"].append(save_attention_gif(clip.frames, attention, gif))
    if out_dir is not None:
        npz = out_dir / "outputs.npz"
        write_npz(npz, dict(outputs, frame_indices=clip.frame_indices))
        report = {k: v for k, v in result.items() if k not in ("outputs", "files")}
        with atomic_output(out_dir / "prediction.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        result["files"] += [npz, out_dir / "prediction.json"]
    for path in result["files"]:
        print(f"wrote   {path}")
    return result


if __name__ == "__main__":
    run_cli(main)
