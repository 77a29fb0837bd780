"""Keypoint and RGB transforms of the original pipeline (spec sec. 6, steps 3-5 and 7)."""

from __future__ import annotations

import numpy as np
import pytest

from epam_jax.data import (
    COCO_LEFT,
    COCO_RIGHT,
    RGB_MEAN,
    RGB_STD,
    compact_keypoints,
    flip_frames,
    flip_keypoints,
    nan_to_zero,
    normalize_rgb,
    resize_keypoints,
)


def test_nan_to_zero_copies() -> None:
    kp = np.array([[[[np.nan, 2.0], [3.0, np.nan]]]], np.float64)
    out = nan_to_zero(kp)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[[0, 2], [3, 0]]]])
    assert np.isnan(kp[0, 0, 0, 0])


def box_points(xs, ys) -> np.ndarray:
    kp = np.zeros((1, 2, 17, 2), np.float32)
    kp[0, 0, :2, 0], kp[0, 1, :2, 0] = xs, xs
    kp[0, 0, :2, 1], kp[0, 1, :2, 1] = ys, ys
    return kp


def test_compact_box_is_padded_square_and_shifts_nonzero_points() -> None:
    kp = box_points([100, 300], [200, 260])
    kp[0, 1, 5] = np.nan  # missing joint: becomes 0 and stays 0
    out, shape = compact_keypoints(kp, (1080, 1920))
    # centre (200, 230), half extents 125 x 37.5 -> square 125 -> box x 75..325, y 105..355
    assert shape == (250, 250)
    np.testing.assert_array_equal(out[0, 0, :2], [[25, 95], [225, 155]])
    assert np.all(out[0, :, 2:] == 0)


def test_compact_box_is_clipped_to_the_image() -> None:
    out, shape = compact_keypoints(box_points([5, 105], [10, 30]), (100, 200))
    # x -7.5..117.5 -> 0..117, y -42.5..82.5 -> 0..82
    assert shape == (82, 117)
    np.testing.assert_array_equal(out[0, 0, :2], [[5, 10], [105, 30]])
    _, shape = compact_keypoints(box_points([5, 105], [10, 30]), (100, 200), clip_to_image=False)
    assert shape == (82 - (-42), 117 - (-7))  # int() truncates toward zero


def test_compact_box_skipped_when_extent_below_threshold() -> None:
    kp = box_points([100, 109], [200, 300])
    out, shape = compact_keypoints(kp, (1080, 1920))
    assert shape == (1080, 1920)
    np.testing.assert_array_equal(out, kp)
    empty, shape = compact_keypoints(np.zeros((1, 3, 17, 2)), (50, 60))
    assert shape == (50, 60) and not empty.any()


def test_resize_scales_each_axis() -> None:
    kp = np.array([[[[125.0, 50.0]]]], np.float32)
    out = resize_keypoints(kp, (100, 250), (56, 56))
    np.testing.assert_allclose(out, [[[[28.0, 28.0]]]], rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="img_shape"):
        resize_keypoints(kp, (0, 10))


def test_flip_mirrors_x_and_swaps_sides() -> None:
    rng = np.random.default_rng(0)
    kp = rng.uniform(1, 55, (2, 3, 17, 2)).astype(np.float32)
    kp[0, 0, 3] = 0  # missing joint stays at 0
    score = rng.uniform(0, 1, (2, 3, 17)).astype(np.float32)
    out, out_score = flip_keypoints(kp, score, 56)
    for left, right in zip(COCO_LEFT, COCO_RIGHT, strict=True):
        np.testing.assert_allclose(out[1, :, left, 0], 56 - kp[1, :, right, 0])
        np.testing.assert_array_equal(out[..., right, 1], kp[..., left, 1])
        np.testing.assert_array_equal(out_score[..., left], score[..., right])
    np.testing.assert_allclose(out[1, :, 0, 0], 56 - kp[1, :, 0, 0])  # nose keeps its slot
    assert np.all(out[0, 0, 4] == 0)  # right ear <- the missing left ear
    back, back_score = flip_keypoints(out, out_score, 56)
    np.testing.assert_allclose(back, kp, atol=1e-5)
    np.testing.assert_array_equal(back_score, score)


def test_flip_frames_and_keypoints_agree() -> None:
    frames = np.zeros((1, 8, 10, 3), np.uint8)
    frames[0, 2, 1] = 255  # a bright pixel at x=1, y=2
    flipped = flip_frames(frames)
    assert flipped[0, 2, 8].tolist() == [255, 255, 255]
    # pixel centre x + 0.5 maps to width - (x + 0.5), the keypoint rule x -> width - x
    kp = np.zeros((1, 1, 17, 2), np.float32)
    kp[0, 0, 0] = (1.5, 2.5)
    out, _ = flip_keypoints(kp, None, 10)
    assert out[0, 0, 0].tolist() == [8.5, 2.5]


def test_normalize_rgb_uses_original_statistics() -> None:
    frames = np.stack([np.full((2, 2, 3), RGB_MEAN), np.full((2, 2, 3), RGB_MEAN) + RGB_STD])
    out = normalize_rgb(frames.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0, atol=1e-5)
    np.testing.assert_allclose(out[1], 1, atol=1e-5)
    pixel = np.array([[[0, 128, 255]]], np.uint8)
    expected = (np.array([0, 128, 255]) - np.array(RGB_MEAN)) / np.array(RGB_STD)
    np.testing.assert_allclose(normalize_rgb(pixel)[0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        normalize_rgb(np.zeros((2, 2, 4)))
