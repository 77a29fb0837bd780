"""Keypoint and RGB transforms of the original pipeline, as plain numpy functions.

Arithmetic precision follows the original: keypoints stay float32, box extents are taken
in float32 and the box itself is computed in float64, as numpy 1.x scalar arithmetic did.
"""

from __future__ import annotations

import numpy as np

# COCO-17: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left first).
COCO_LEFT = (1, 3, 5, 7, 9, 11, 13, 15)
COCO_RIGHT = (2, 4, 6, 8, 10, 12, 14, 16)
RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)


def _check_keypoint(keypoint: np.ndarray) -> np.ndarray:
    kp = np.asarray(keypoint)
    if kp.ndim < 2 or kp.shape[-1] != 2:
        raise ValueError(f"expected keypoints of shape (..., 2) in pixels, got {kp.shape}")
    return kp


def nan_to_zero(keypoint: np.ndarray) -> np.ndarray:
    """Copy of ``keypoint`` (float32) with NaN coordinates set to 0 (treated as missing)."""
    kp = _check_keypoint(keypoint).astype(np.float32, copy=True)
    kp[np.isnan(kp)] = 0.0
    return kp


def compact_box(
    keypoint: np.ndarray,
    img_shape: tuple[int, int],
    padding: float = 0.25,
    threshold: float = 10.0,
    hw_ratio: float | None = 1.0,
    clip_to_image: bool = True,
) -> tuple[int, int, int, int] | None:
    """The pipeline's box around all non-zero keypoints, as integer (x0, y0, x1, y1).

    The box spans the extent of non-zero x and y coordinates (NaN counts as missing), is
    widened by ``padding`` and made square (``hw_ratio`` = height/width), clipped to the
    image and truncated to ints. None when there is no non-zero keypoint or either
    extent is below ``threshold`` pixels (the caller keeps the whole image).
    This one rule serves the per-clip pose box of the pipeline, the person crop of a raw
    video and the spatial alignment of ``epam_jax.prepare``.
    """
    kp = nan_to_zero(keypoint)
    h, w = (int(v) for v in img_shape)
    xs, ys = kp[..., 0], kp[..., 1]
    nz_x, nz_y = xs[xs != 0], ys[ys != 0]
    if nz_x.size == 0 or nz_y.size == 0:
        return None
    min_x, max_x = np.float32(nz_x.min()), np.float32(nz_x.max())
    min_y, max_y = np.float32(nz_y.min()), np.float32(nz_y.max())
    if max_x - min_x < threshold or max_y - min_y < threshold:
        return None
    cx = float((max_x + min_x) / np.float32(2))
    cy = float((max_y + min_y) / np.float32(2))
    half_w = float((max_x - min_x) / np.float32(2)) * (1 + padding)
    half_h = float((max_y - min_y) / np.float32(2)) * (1 + padding)
    if hw_ratio is not None:
        half_h = max(hw_ratio * half_w, half_h)
        half_w = max(1 / hw_ratio * half_h, half_w)
    x0, x1, y0, y1 = cx - half_w, cx + half_w, cy - half_h, cy + half_h
    if clip_to_image:
        return int(max(0.0, x0)), int(max(0.0, y0)), int(min(w, x1)), int(min(h, y1))
    return int(x0), int(y0), int(x1), int(y1)


def shift_keypoints(keypoint: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Copy of ``keypoint`` (float32, NaN -> 0) with non-zero coordinates moved into
    ``box`` = (x0, y0, x1, y1); zeros stay zero (missing)."""
    kp = nan_to_zero(keypoint)
    xs, ys = kp[..., 0], kp[..., 1]
    xs[xs != 0] -= box[0]
    ys[ys != 0] -= box[1]
    return kp


def compact_keypoints(
    keypoint: np.ndarray,
    img_shape: tuple[int, int],
    padding: float = 0.25,
    threshold: float = 10.0,
    hw_ratio: float | None = 1.0,
    clip_to_image: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop the keypoint frame to ``compact_box`` and shift the keypoints into it.

    When there is no box (too few keypoints) the keypoints (NaN -> 0) and shape are
    returned unchanged. Returns (keypoint float32, new img_shape (h, w)).
    """
    box = compact_box(keypoint, img_shape, padding, threshold, hw_ratio, clip_to_image)
    if box is None:
        return nan_to_zero(keypoint), (int(img_shape[0]), int(img_shape[1]))
    x0, y0, x1, y1 = box
    return shift_keypoints(keypoint, box), (y1 - y0, x1 - x0)


def resize_keypoints(
    keypoint: np.ndarray, img_shape: tuple[int, int], size: tuple[int, int] = (56, 56)
) -> np.ndarray:
    """Scale keypoints from an (h, w) frame to ``size`` = (h, w), ratio not kept."""
    kp = _check_keypoint(keypoint)
    h, w = img_shape
    if h <= 0 or w <= 0:
        raise ValueError(f"expected a positive img_shape, got {img_shape}")
    scale = np.array([size[1] / w, size[0] / h], dtype=np.float32)
    return (kp.astype(np.float32, copy=False) * scale).astype(np.float32, copy=False)


def flip_keypoints(
    keypoint: np.ndarray,
    keypoint_score: np.ndarray | None,
    width: float,
    left: tuple[int, ...] = COCO_LEFT,
    right: tuple[int, ...] = COCO_RIGHT,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror keypoints (M, T, V, 2) horizontally: x -> width - x for non-zero x, and swap
    the left/right joints (and their scores)."""
    kp = _check_keypoint(keypoint)
    if kp.ndim != 4:
        raise ValueError(f"expected keypoints of shape (M, T, V, 2), got {kp.shape}")
    kp = kp.copy()
    xs = kp[..., 0]
    xs[xs != 0] = width - xs[xs != 0]
    order = np.arange(kp.shape[2])
    order[list(left)] = right
    order[list(right)] = left
    kp = kp[:, :, order]
    if keypoint_score is not None:
        keypoint_score = np.asarray(keypoint_score)[:, :, order]
    return kp, keypoint_score


def flip_frames(frames: np.ndarray) -> np.ndarray:
    """Mirror frames (..., H, W, C) horizontally."""
    frames = np.asarray(frames)
    if frames.ndim < 3:
        raise ValueError(f"expected frames of shape (..., H, W, C), got {frames.shape}")
    return frames[..., ::-1, :]


def normalize_rgb(
    frames: np.ndarray,
    mean: tuple[float, float, float] = RGB_MEAN,
    std: tuple[float, float, float] = RGB_STD,
) -> np.ndarray:
    """(frames - mean) / std per RGB channel, as float32; frames are (..., 3) in [0, 255]."""
    frames = np.asarray(frames)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames with 3 channels last, got {frames.shape}")
    mean_a, inv_std = rgb_normalization(mean, std)
    return (frames.astype(np.float32) - mean_a) * inv_std


def rgb_normalization(
    mean: tuple[float, float, float] = RGB_MEAN,
    std: tuple[float, float, float] = RGB_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean, 1 / std) of ``normalize_rgb``, shared with the device path so that
    both make the same numbers."""
    return np.asarray(mean, np.float32), (1.0 / np.asarray(std, np.float64)).astype(np.float32)
