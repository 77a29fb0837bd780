"""Synthetic stick-figure action dataset in the real format (PoseC3D pickle + videos).

Each class is a procedurally animated COCO-17 figure (waving, clapping, squatting, ...)
with random position, size, speed, phase, missing joints and score noise, rendered on a
textured background, so both the pose and the RGB stream can learn the classes. Classes
are their own mirror images (a wave is done with either hand at random) because training
flips clips horizontally with a left/right joint swap.

By default the figures fill most of a (square) frame, like the paper's pre-cropped videos.
``raw=True`` instead draws small figures anywhere in a larger, typically non-square frame,
sometimes against an image edge, like an uncropped camera video; that is the input of the
spatial alignment ``python -m epam_jax.prepare`` (keypoints stay in the raw frame's pixels).

    python -m epam_jax.data.synthetic OUT_DIR --num-classes 6 --train 48 --val 16
    python -m epam_jax.data.synthetic RAW_DIR --raw --size 96 160 --train 8 --val 0
    python -m epam_jax.data.synthetic LONG_DIR --long-video wave,clap,none,squat

``--long-video`` writes one video of the actions in a row (``none``: a stretch without a
person) and its poses, for ``python -m epam_jax.stream``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import av
import numpy as np

from epam_jax.data.annotations import save_annotations

ACTIONS = (
    "wave",
    "clap",
    "squat",
    "jump",
    "walk_across",
    "turn_around",
    "raise_arms",
    "side_kick",
    "bow",
    "punch",
    "arm_circles",
    "drink",
)

# Segment lengths in body heights.
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.17, 0.16, 0.23, 0.22
_SHOULDER_X, _SHOULDER_Y, _HIP_X = 0.11, -0.48, 0.07
# Nose, eyes, ears relative to the neck point (centre of the shoulders).
_FACE = np.array([[0, -0.14], [0.025, -0.16], [-0.025, -0.16], [0.05, -0.14], [-0.05, -0.14]])
# Figure height as a fraction of the frame height: pre-cropped (default) and raw frames.
FIGURE_SCALE = (0.45, 0.7)
RAW_FIGURE_SCALE = (0.2, 0.35)
# Keypoint extent of the rest pose in body heights (x: half width with the arms out;
# y: from the eyes above the hip to the feet below it).
_HALF_WIDTH, _TOP, _BOTTOM = 0.45, 0.64, 0.45
_BONES = (
    (5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12),
    (11, 13), (13, 15), (12, 14), (14, 16),
)  # fmt: skip


def _limb(root: np.ndarray, side: float, angle: np.ndarray, bend: np.ndarray, l1: float,
          l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-segment limb hanging from ``root``: ``angle`` from straight down, outward
    positive (side +1 = the figure's left = image right); ``bend`` adds to the second."""
    d1 = np.stack([side * np.sin(angle), np.cos(angle)], -1)
    a2 = angle + bend
    d2 = np.stack([side * np.sin(a2), np.cos(a2)], -1)
    mid = root + l1 * d1
    return mid, mid + l2 * d2


def _pose(p: dict[str, np.ndarray]) -> np.ndarray:
    """COCO-17 joints (T, 17, 2) in body heights, origin at the mid-hip, y down."""
    t = p["crouch"].shape[0]
    turn = p["turn"][:, None]  # cos of body rotation: squeezes x, negative mirrors
    lean = p["lean"][:, None]  # torso shortening (bow)
    kp = np.zeros((t, 17, 2))
    hip_y = p["crouch"][:, None] * 0.22
    neck = np.concatenate([np.zeros((t, 1)), hip_y + _SHOULDER_Y * (1 - lean)], 1)
    for side, sh, hp in ((1.0, 5, 11), (-1.0, 6, 12)):
        tag = "l" if side > 0 else "r"
        shoulder = neck + np.array([side * _SHOULDER_X, 0.0])
        hip = np.concatenate([np.full((t, 1), side * _HIP_X), hip_y], 1)
        kp[:, sh], kp[:, hp] = shoulder, hip
        kp[:, sh + 2], kp[:, sh + 4] = _limb(
            shoulder, side, p[f"{tag}_arm"], p[f"{tag}_elbow"], _UPPER_ARM, _FOREARM
        )
        # Crouching folds the legs: thigh outward, shin back in, feet stay on the ground.
        fold = np.arccos(np.clip(1 - p["crouch"] * 0.9, -1, 1))
        kp[:, hp + 2], kp[:, hp + 4] = _limb(
            hip, side, p[f"{tag}_leg"] + fold, p[f"{tag}_knee"] - 2 * fold, _THIGH, _SHIN
        )
    kp[:, :5] = neck[:, None] + _FACE[None] * np.array([1.0, 1.0])
    kp[..., 0] *= turn
    kp[..., 1] -= p["lift"][:, None]
    kp[..., 0] += p["shift"][:, None]
    return kp


def _motion(action: str, t: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint-angle trajectories of one action over clip time ``t`` in [0, 1)."""
    cycles = rng.uniform(1.2, 2.5)
    ph = 2 * np.pi * cycles * t + rng.uniform(0, 2 * np.pi)
    s, c = np.sin(ph), np.cos(ph)
    zero = np.zeros_like(t)
    p = {k: zero.copy() for k in ("crouch", "lean", "lift", "shift")}
    p["turn"] = np.ones_like(t)
    for tag in ("l", "r"):
        p[f"{tag}_arm"] = np.full_like(t, 0.15)
        p[f"{tag}_elbow"] = np.full_like(t, 0.1)
        p[f"{tag}_leg"] = np.full_like(t, 0.05)
        p[f"{tag}_knee"] = zero.copy()
    one, other = ("l", "r") if rng.random() < 0.5 else ("r", "l")
    if action == "wave":
        p[f"{one}_arm"] = np.full_like(t, 2.4)
        p[f"{one}_elbow"] = 0.55 * s
    elif action == "clap":
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = 0.5 + 0.35 * s
            p[f"{tag}_elbow"] = -1.3 - 0.5 * s
    elif action == "squat":
        p["crouch"] = 0.5 * (1 - c)
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = 0.2 + 0.6 * (1 - c)
    elif action == "jump":
        p["lift"] = 0.18 * np.abs(s)
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = 0.3 + 2.2 * np.abs(s)
            p[f"{tag}_leg"] = 0.05 + 0.15 * np.abs(s)
    elif action == "walk_across":
        direction = rng.choice([-1.0, 1.0])
        p["shift"] = direction * (t - 0.5) * 1.0
        p["l_leg"], p["r_leg"] = 0.35 * s, -0.35 * s
        p["l_knee"], p["r_knee"] = -0.4 * np.maximum(s, 0), -0.4 * np.maximum(-s, 0)
        p["l_arm"], p["r_arm"] = -0.3 * s + 0.1, 0.3 * s + 0.1
    elif action == "turn_around":
        p["turn"] = np.cos(2 * np.pi * t * rng.uniform(0.8, 1.2) + rng.uniform(0, 0.5))
    elif action == "raise_arms":
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = 0.15 + 1.4 * (1 - c)
    elif action == "side_kick":
        p[f"{one}_leg"] = 0.05 + 0.6 * np.maximum(s, 0) ** 2 * 1.6
        p[f"{other}_arm"] = 0.6 + 0.3 * np.maximum(s, 0)
    elif action == "bow":
        p["lean"] = 0.25 * (1 - c)
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = 0.1 + 0.2 * (1 - c)
    elif action == "punch":
        p["l_arm"], p["r_arm"] = np.full_like(t, 1.4), np.full_like(t, 1.4)
        p["l_elbow"] = -1.8 * (0.5 + 0.5 * s)
        p["r_elbow"] = -1.8 * (0.5 - 0.5 * s)
    elif action == "arm_circles":
        for tag in ("l", "r"):
            p[f"{tag}_arm"] = np.pi + np.pi * s
            p[f"{tag}_elbow"] = zero.copy()
    elif action == "drink":
        k = 0.5 * (1 - c)
        p[f"{one}_arm"] = 0.15 + 0.35 * k
        p[f"{one}_elbow"] = -0.3 - 2.5 * k
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    return p


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency coloured texture plus grain, float32 (H, W, 3) in [0, 255]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(40, 200, 3).astype(np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 6, 2) * 2 * np.pi / np.array([w, h])
        wave = np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(-35, 35, 3).astype(np.float32)
    img += rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255)


def _render(
    bg: np.ndarray, people: list[np.ndarray], colors: list[np.ndarray], thickness: float
) -> np.ndarray:
    """Draw stick figures (per person (T, 17, 2) pixels) over ``bg`` -> uint8 (T, H, W, 3)."""
    h, w = bg.shape[:2]
    n_frames = people[0].shape[0]
    frames = np.repeat(bg[None], n_frames, axis=0)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ia = np.array([a for a, _ in _BONES])
    ib = np.array([b for _, b in _BONES])
    for kp, color in zip(people, colors, strict=True):
        kp = kp.astype(np.float32)
        for f in range(n_frames):
            a, b = kp[f, ia], kp[f, ib]  # (S, 2)
            d = b - a
            len2 = np.maximum((d**2).sum(-1), 1e-6)[:, None, None]
            u = ((xs - a[:, 0, None, None]) * d[:, 0, None, None]
                 + (ys - a[:, 1, None, None]) * d[:, 1, None, None]) / len2
            u = np.clip(u, 0, 1)
            px = a[:, 0, None, None] + u * d[:, 0, None, None]
            py = a[:, 1, None, None] + u * d[:, 1, None, None]
            dist = np.sqrt((xs - px) ** 2 + (ys - py) ** 2).min(0)
            head = np.sqrt((xs - kp[f, 0, 0]) ** 2 + (ys - kp[f, 0, 1]) ** 2)
            alpha = np.clip(thickness - dist + 0.5, 0, 1)
            alpha = np.maximum(alpha, np.clip(2.2 * thickness - head + 0.5, 0, 1))
            frames[f] += alpha[..., None] * (color - frames[f])
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _raw_position(h: int, w: int, height: float, rng: np.random.Generator) -> np.ndarray:
    """Hip position (x, y) of a figure ``height`` pixels tall anywhere in an (h, w) frame:
    uniform where it fits, and half the time pushed against one image edge (so a box
    around it gets clipped there)."""
    lo = np.array([_HALF_WIDTH * height, _TOP * height])
    hi = np.maximum(lo, np.array([w - _HALF_WIDTH * height, h - _BOTTOM * height]))
    pos = rng.uniform(lo, hi)
    if rng.random() < 0.5:
        edge = int(rng.integers(4))  # left, right, top, bottom
        axis = edge // 2
        pos[axis] = (lo if edge % 2 == 0 else hi)[axis]
    return pos


def make_sample(
    action: str,
    num_frames: int,
    size: tuple[int, int],
    rng: np.random.Generator,
    second_person_prob: float = 0.2,
    missing_prob: float = 0.03,
    raw: bool = False,
    figure_scale: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip: frames uint8 (T, H, W, 3), keypoint (M, T, 17, 2) pixels (NaN or 0 for
    missing joints), keypoint_score (M, T, 17).

    ``figure_scale``: (min, max) figure height over frame height (default
    ``FIGURE_SCALE``, or ``RAW_FIGURE_SCALE`` with ``raw``). ``raw`` places the figures
    anywhere in the frame (see ``_raw_position``) instead of near the centre."""
    h, w = size
    lo, hi = figure_scale or (RAW_FIGURE_SCALE if raw else FIGURE_SCALE)
    t = np.arange(num_frames) / num_frames
    height = rng.uniform(lo, hi) * h
    main = _pose(_motion(action, t, rng))
    if raw:
        main = main * height + _raw_position(h, w, height, rng)
    else:
        main = main * height + np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.55, 0.68) * h])
    people = [main]
    if rng.random() < second_person_prob:
        idle = _motion("raise_arms", t, rng)
        for tag in ("l", "r"):
            idle[f"{tag}_arm"] = 0.15 + 0.05 * np.sin(2 * np.pi * t)
        # 0.35-0.55 of the frame height at the default scale, proportionally smaller in raw.
        other_h = rng.uniform(0.35, 0.55) * h * ((lo + hi) / sum(FIGURE_SCALE))
        x = rng.choice([0.15, 0.85]) * w
        people.append(_pose(idle) * other_h + np.array([x, rng.uniform(0.6, 0.7) * h]))
    bg = _background(h, w, rng)
    colors = [rng.uniform(0, 255, 3).astype(np.float32) for _ in people]
    for c in colors:  # keep the figure visible against the mean background colour
        if np.abs(c - bg.mean((0, 1))).sum() < 150:
            c[:] = 255 - bg.mean((0, 1))
    frames = _render(bg, people, colors, thickness=max(1.0, h / 64))
    kp = np.stack(people).astype(np.float32)
    kp += rng.normal(0, 0.004 * h, kp.shape).astype(np.float32)
    score = np.clip(
        rng.uniform(0.75, 0.98, kp.shape[:3]) - np.abs(rng.normal(0, 0.08, kp.shape[:3])), 0, 1
    ).astype(np.float32)
    missing = rng.random(kp.shape[:3]) < missing_prob
    kp[missing] = 0.0
    score[missing] = 0.0
    kp[missing & (rng.random(kp.shape[:3]) < 0.3)] = np.nan
    return frames, kp, score


def make_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    num_classes: int = 6,
    num_train: int = 48,
    num_val: int = 16,
    frames: tuple[int, int] = (40, 64),
    size: tuple[int, int] = (112, 112),
    fps: int = 30,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    raw: bool = False,
    figure_scale: tuple[float, float] | None = None,
) -> Path:
    """Write a synthetic dataset to ``out_dir`` and return its annotation pickle path.

    Layout: ``annotations.pkl`` (``{'split': {'train', 'val'}, 'annotations'}``) and
    ``videos/{frame_dir}.mp4``; read it with ``ClipConfig(video_root=out_dir/'videos')``.
    Classes are balanced (sample i has label i % num_classes); clip lengths are uniform
    in ``frames`` (inclusive). ``size`` is (height, width). ``raw``/``figure_scale``: small
    figures anywhere in the frame, an unaligned dataset for ``epam_jax.prepare`` (see
    ``make_sample``); keypoints and ``img_shape`` are in the frame's pixels either way.
    """
    if not 1 <= num_classes <= len(ACTIONS):
        raise ValueError(f"expected 1 <= num_classes <= {len(ACTIONS)}, got {num_classes}")
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"expected some samples, got train={num_train}, val={num_val}")
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"expected 1 <= min frames <= max frames, got {frames}")
    if size[0] % 2 or size[1] % 2 or min(size) < 16:
        raise ValueError(f"expected an even video size of at least 16, got {size}")
    if figure_scale is not None and not 0 < figure_scale[0] <= figure_scale[1] <= 1:
        raise ValueError(f"expected 0 < min <= max <= 1 figure scale, got {figure_scale}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    annotations, split = [], {"train": [], "val": []}
    total = num_train + num_val
    for i in range(total):
        rng = np.random.default_rng([seed, i])
        name = "train" if i < num_train else "val"
        label = i % num_classes
        n = int(rng.integers(frames[0], frames[1] + 1))
        clip, kp, score = make_sample(
            ACTIONS[label], n, size, rng, raw=raw, figure_scale=figure_scale
        )
        frame_dir = f"{name}_{i:05d}_{ACTIONS[label]}"
        _write_video(out / "videos" / f"{frame_dir}.mp4", clip, fps)
        annotations.append(
            {
                "frame_dir": frame_dir,
                "label": label,
                "img_shape": tuple(size),
                "original_shape": tuple(size),
                "total_frames": n,
                "keypoint": kp,
                "keypoint_score": score,
            }
        )
        split[name].append(frame_dir)
        if progress is not None:
            progress(i + 1, total)
    path = out / "annotations.pkl"
    save_annotations(path, annotations, split)
    return path


def make_long_video(
    out_dir: str | os.PathLike[str],
    actions: Sequence[str],
    segment_frames: int = 96,
    size: tuple[int, int] = (128, 128),
    fps: int = 30,
    seed: int = 0,
) -> tuple[Path, Path]:
    """One video of ``actions`` one after the other, ``segment_frames`` each (``"none"``:
    the background without a person), and its poses as a one-sample annotation pickle
    (no person: zeros). Returns (``long.mp4``, ``long_poses.pkl``) in ``out_dir``."""
    unknown = [a for a in actions if a != "none" and a not in ACTIONS]
    if not actions or unknown:
        raise ValueError(f"expected actions from {ACTIONS} or 'none', got {list(actions)}")
    if segment_frames < 1:
        raise ValueError(f"expected segment_frames >= 1, got {segment_frames}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames, keypoints, scores = [], [], []
    for i, action in enumerate(actions):
        rng = np.random.default_rng([seed, i])
        if action == "none":
            bg = np.clip(_background(*size, rng) + 0.5, 0, 255).astype(np.uint8)
            frames.append(np.repeat(bg[None], segment_frames, axis=0))
            keypoints.append(np.zeros((1, segment_frames, 17, 2), np.float32))
            scores.append(np.zeros((1, segment_frames, 17), np.float32))
            continue
        clip, kp, score = make_sample(action, segment_frames, size, rng,
                                      second_person_prob=0.0)
        frames.append(clip)
        keypoints.append(np.nan_to_num(kp))
        scores.append(score)
    video = out / "long.mp4"
    _write_video(video, np.concatenate(frames), fps)
    poses = out / "long_poses.pkl"
    keypoint = np.concatenate(keypoints, axis=1)
    save_annotations(poses, [{
        "frame_dir": "long", "label": 0, "img_shape": tuple(size),
        "original_shape": tuple(size), "total_frames": keypoint.shape[1],
        "keypoint": keypoint, "keypoint_score": np.concatenate(scores, axis=1),
    }])
    return video, poses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--train", type=int, default=48, help="training samples")
    parser.add_argument("--val", type=int, default=16, help="validation samples")
    parser.add_argument("--frames", type=int, nargs=2, default=(40, 64), metavar=("MIN", "MAX"))
    parser.add_argument("--size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="small figures anywhere in the frame (an unaligned dataset for epam_jax.prepare)",
    )
    parser.add_argument(
        "--figure-scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help=f"figure height / frame height (default {FIGURE_SCALE}, raw {RAW_FIGURE_SCALE})",
    )
    parser.add_argument("--long-video", metavar="ACTIONS",
                        help="comma-separated actions (or 'none'): write long.mp4 and "
                             "long_poses.pkl instead of a dataset")
    parser.add_argument("--segment-frames", type=int, default=96,
                        help="--long-video: frames per action (default 96)")
    args = parser.parse_args(argv)
    if args.long_video is not None:
        video, poses = make_long_video(args.out_dir, args.long_video.split(","),
                                       args.segment_frames, tuple(args.size), args.fps,
                                       args.seed)
        print(f"wrote {video} and {poses}")
        return
    path = make_synthetic_dataset(
        args.out_dir,
        num_classes=args.num_classes,
        num_train=args.train,
        num_val=args.val,
        frames=tuple(args.frames),
        size=tuple(args.size),
        fps=args.fps,
        seed=args.seed,
        raw=args.raw,
        figure_scale=None if args.figure_scale is None else tuple(args.figure_scale),
    )
    print(f"wrote {args.train + args.val} samples, {args.num_classes} classes: {path}")


if __name__ == "__main__":
    main()
