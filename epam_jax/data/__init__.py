"""Data pipeline: PoseC3D annotations and videos to EPAM-Net inputs.

Importing this package needs only numpy, PyAV and Pillow; the grain loader, the JAX
heatmap generator and ``DeviceInputs``, the synthetic dataset writer and the pose
extractor load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from epam_jax.data.annotations import (
    UnsafePickleError,
    load_annotations,
    parse_annotations,
    safe_loads,
    save_annotations,
    validate_annotation,
)
from epam_jax.data.heatmaps import COCO_LIMBS, generate_heatmaps, pack_keypoints
from epam_jax.data.pipeline import ClipConfig, make_sample, video_path
from epam_jax.data.sampling import eval_clip_indices, rgb_indices, uniform_sample_indices
from epam_jax.data.transforms import (
    COCO_LEFT,
    COCO_RIGHT,
    RGB_MEAN,
    RGB_STD,
    compact_box,
    compact_keypoints,
    flip_frames,
    flip_keypoints,
    nan_to_zero,
    normalize_rgb,
    resize_keypoints,
    shift_keypoints,
)
from epam_jax.data.video import (
    decode_video_frames,
    load_frames,
    read_frame_folder,
    resize_frame,
    video_frame_count,
)

_LAZY = {
    "ClipLoader": "epam_jax.data.loader",
    "heatmaps_from_keypoints": "epam_jax.data.heatmaps_jax",
    "DeviceInputs": "epam_jax.data.device_inputs",
    "make_synthetic_dataset": "epam_jax.data.synthetic",
    "ACTIONS": "epam_jax.data.synthetic",
    "video_to_annotation": "epam_jax.data.pose",
}

__all__ = [
    "COCO_LEFT",
    "COCO_LIMBS",
    "COCO_RIGHT",
    "RGB_MEAN",
    "RGB_STD",
    "ClipConfig",
    "UnsafePickleError",
    "compact_box",
    "compact_keypoints",
    "decode_video_frames",
    "eval_clip_indices",
    "flip_frames",
    "flip_keypoints",
    "generate_heatmaps",
    "load_annotations",
    "load_frames",
    "make_sample",
    "nan_to_zero",
    "normalize_rgb",
    "pack_keypoints",
    "parse_annotations",
    "read_frame_folder",
    "resize_frame",
    "resize_keypoints",
    "rgb_indices",
    "safe_loads",
    "save_annotations",
    "shift_keypoints",
    "uniform_sample_indices",
    "validate_annotation",
    "video_frame_count",
    "video_path",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'epam_jax.data' has no attribute {name!r}")
