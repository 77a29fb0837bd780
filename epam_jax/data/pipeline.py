"""One sample of the original pipeline: annotation (+ video) -> model inputs.

Order as in the original: sample 48 pose frame indices, decode the RGB frames at every
3rd of them, keypoint NaN -> 0, compact box, resize to 56x56, (train) flip RGB and
keypoints together, heatmaps, RGB normalisation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from epam_jax.data.heatmaps import generate_heatmaps, pack_keypoints
from epam_jax.data.sampling import eval_clip_indices, rgb_indices, uniform_sample_indices
from epam_jax.data.transforms import (
    compact_keypoints,
    flip_frames,
    flip_keypoints,
    normalize_rgb,
    resize_keypoints,
)
from epam_jax.data.video import frame_size, load_frames


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """What a sample holds and how it is made; defaults are the paper's settings.

    ``pose``: 'heatmap' gives (T, H, W, C) heatmaps made on the host, 'keypoint' gives
    (num_persons, T, 17, 3) = (x, y, score) in heatmap pixels for drawing heatmaps on the
    accelerator (absent persons have score -1), None leaves the pose stream out.
    ``rgb_dtype``: 'float32' gives normalised frames, 'uint8' the frames as decoded (a
    quarter of the bytes), normalised on the accelerator. ``device_inputs()`` is the
    setting training uses (keypoints and uint8 frames: 2.4 MB a clip instead of 19.8 MB);
    ``epam_jax.data.DeviceInputs`` turns either kind of batch into model inputs.
    ``video_root``/``video_ext``: a sample's video is ``video_root / filename`` when its
    annotation has 'filename', else ``video_root / (frame_dir + video_ext)``; a directory
    there is read as a frame folder. ``clamp_frames`` repeats the last frame of a video
    shorter than the annotation's ``total_frames`` instead of failing.
    ``num_clips``/``test_flip`` (evaluation): each video is seen as ``num_views`` views,
    K test-mode clips (PoseC3D's num_clips), each also flipped when ``test_flip``
    (view v = clip v // 2, flipped when v is odd). ``require_prepared``: the loader
    refuses dataset videos that are not person-aligned square frames (see
    ``check_prepared_videos``).
    """

    clip_len: int = 48
    rgb_stride: int = 3
    rgb: bool = True
    rgb_size: tuple[int, int] = (224, 224)
    rgb_dtype: Literal["float32", "uint8"] = "float32"
    pose: Literal["heatmap", "keypoint"] | None = "heatmap"
    heatmap_size: tuple[int, int] = (56, 56)
    sigma: float = 0.6
    use_score: bool = True
    with_kp: bool = True
    with_limb: bool = False
    num_persons: int = 2
    flip_prob: float = 0.5
    compact_padding: float = 0.25
    compact_threshold: float = 10.0
    compact_hw_ratio: float | None = 1.0
    compact_clip: bool = True
    video_root: str | None = None
    video_ext: str = ".mp4"
    clamp_frames: bool = True
    num_clips: int = 1
    test_flip: bool = False
    require_prepared: bool = True

    def __post_init__(self) -> None:
        if self.pose not in ("heatmap", "keypoint", None):
            raise ValueError(f"expected pose in ('heatmap', 'keypoint', None), got {self.pose!r}")
        if self.rgb_dtype not in ("float32", "uint8"):
            raise ValueError(f"expected rgb_dtype in ('float32', 'uint8'), got {self.rgb_dtype!r}")
        if not self.rgb and self.pose is None:
            raise ValueError("expected at least one stream: rgb=True or pose set")
        if self.clip_len <= 0 or self.rgb_stride <= 0 or self.num_persons <= 0:
            raise ValueError("expected clip_len, rgb_stride and num_persons > 0")
        if self.num_clips <= 0:
            raise ValueError(f"expected num_clips > 0, got {self.num_clips}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"expected 0 <= flip_prob <= 1, got {self.flip_prob}")
        if self.rgb and self.video_root is None:
            raise ValueError("rgb=True needs video_root (the folder holding the videos)")

    def device_inputs(self) -> ClipConfig:
        """This config with keypoints and uint8 frames, finished on the accelerator."""
        return dataclasses.replace(self, rgb_dtype="uint8",
                                   pose=None if self.pose is None else "keypoint")

    @property
    def num_channels(self) -> int:
        """Heatmap channels: 17 keypoints and/or 17 limbs."""
        return 17 * (int(self.with_kp) + int(self.with_limb))

    @property
    def num_views(self) -> int:
        """Views of one video in evaluation: clips, times two with ``test_flip``."""
        return self.num_clips * (2 if self.test_flip else 1)

    def view(self, index: int) -> tuple[int, bool]:
        """(clip, flipped) of evaluation view ``index``."""
        if not 0 <= index < self.num_views:
            raise ValueError(f"expected 0 <= view < {self.num_views}, got {index}")
        return divmod(index, 2) if self.test_flip else (index, False)


def video_path(ann: dict[str, Any], config: ClipConfig) -> Path:
    """Where a sample's video file or frame folder lives."""
    if config.video_root is None:
        raise ValueError("config.video_root is not set")
    name = ann.get("filename") or f"{ann['frame_dir']}{config.video_ext}"
    return Path(config.video_root) / os.fspath(name)


PREPARE_HINT = (
    "EPAM-Net reads person-aligned square videos, cut once around all persons and resized "
    "(as the paper's were): make them with python -m epam_jax.prepare --annotations ANN.pkl "
    "--video-root RAW_VIDEOS --out-dir PREPARED, then read PREPARED"
)


def check_videos_exist(annotations: Sequence[dict[str, Any]], config: ClipConfig) -> None:
    """Raise FileNotFoundError, naming a few, unless every sample's video exists."""
    missing = [os.fspath(video_path(a, config)) for a in annotations
               if not video_path(a, config).exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(annotations)} videos not found under {config.video_root}, "
            f"e.g. {missing[:3]} (check --video-root and --video-ext; prepared videos are "
            "named <frame_dir>.mp4)")


def check_prepared_videos(
    annotations: Sequence[dict[str, Any]], config: ClipConfig, limit: int = 32
) -> None:
    """Stop early, before anything compiles, when dataset videos are missing, unreadable
    or not what the model expects.

    Every video must exist; up to ``limit`` spread over ``annotations`` are opened (headers
    only: a truncated mp4 has lost its index and fails here, named); each must have square
    frames (``epam_jax.prepare`` writes SIZE x SIZE videos; a raw 1920x1080 NTU video
    squeezed to 224x224 shows small, distorted people the converted weights never saw).
    ``ClipConfig.require_prepared=False`` (``data.require_prepared``,
    ``--allow-unprepared``) switches the square check off for videos known to be right.
    """
    if not config.rgb or not annotations:
        return
    check_videos_exist(annotations, config)  # every one: a stat each
    picks = np.unique(np.linspace(0, len(annotations) - 1, min(limit, len(annotations))
                                  ).astype(int))
    for ann in [annotations[i] for i in picks.tolist()]:
        path = video_path(ann, config)
        h, w = frame_size(path)  # an unreadable file stops here, named
        if config.require_prepared and h != w:
            raise ValueError(
                f"{os.fspath(path)!r} has {w}x{h} frames, not a prepared video "
                f"({config.rgb_size[1]}x{config.rgb_size[0]} expected). {PREPARE_HINT}; "
                "or set data.require_prepared=False (--allow-unprepared) if these frames "
                "are already what the model should see"
            )


def make_sample(
    ann: dict[str, Any],
    config: ClipConfig,
    train: bool,
    rng: np.random.Generator | np.random.RandomState | None = None,
    view: int = 0,
) -> dict[str, np.ndarray]:
    """Model inputs for one validated annotation: 'rgb' (16, 224, 224, 3) float32
    normalised (or uint8 as decoded), 'heatmap' (48, 56, 56, C) or 'keypoint'
    (P, 48, 17, 3), 'label' int32.

    Train mode samples frames at random and flips with ``flip_prob``; test mode is
    deterministic (rng unused) and gives evaluation view ``view`` (``ClipConfig.view``:
    which of the K test clips, flipped or not)."""
    if train:
        if rng is None:
            rng = np.random.default_rng()
        inds = uniform_sample_indices(ann["total_frames"], config.clip_len, False, rng)
        flip = bool(_uniform(rng) < config.flip_prob)
    else:
        clip, flip = config.view(view)
        inds = eval_clip_indices(ann["total_frames"], config.clip_len, config.num_clips)[clip]
    out: dict[str, np.ndarray] = {"label": np.int32(ann["label"])}
    if config.rgb:
        frames = load_frames(
            video_path(ann, config),
            rgb_indices(inds, config.rgb_stride),
            config.rgb_size,
            clamp=config.clamp_frames,
        )
        if flip:
            frames = flip_frames(frames)
        out["rgb"] = (np.ascontiguousarray(frames) if config.rgb_dtype == "uint8"
                      else normalize_rgb(frames))
    if config.pose is not None:
        kp = ann["keypoint"][:, inds]
        score = ann["keypoint_score"][:, inds]
        kp, shape = compact_keypoints(
            kp,
            ann["img_shape"],
            padding=config.compact_padding,
            threshold=config.compact_threshold,
            hw_ratio=config.compact_hw_ratio,
            clip_to_image=config.compact_clip,
        )
        kp = resize_keypoints(kp, shape, config.heatmap_size)
        if flip:
            kp, score = flip_keypoints(kp, score, config.heatmap_size[1])
        if config.pose == "heatmap":
            out["heatmap"] = generate_heatmaps(
                kp,
                score,
                config.heatmap_size,
                sigma=config.sigma,
                use_score=config.use_score,
                with_kp=config.with_kp,
                with_limb=config.with_limb,
            )
        else:
            out["keypoint"] = pack_keypoints(kp, score, config.num_persons)
    return out


def _uniform(rng: np.random.Generator | np.random.RandomState | None) -> float:
    if rng is None:
        raise ValueError("train mode needs an rng")
    return float(rng.random() if isinstance(rng, np.random.Generator) else rng.random_sample())
