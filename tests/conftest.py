"""Shared test fixtures: the reference model, real data, small inputs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from epam_jax.models import variable_shapes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

try:  # torch is optional; with it, one thread each (pytest runs two workers on 2 cores)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - exercised only without the torch extra
    torch = None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project, or a skip saying it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample clips not found at {SHARED_DATA} (clone with shared/ beside)")
    return SHARED_DATA


def ncthw_to_ndhwc(x) -> np.ndarray:
    """PyTorch layout to this project's, for arrays or tensors."""
    x = x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.transpose(0, 2, 3, 4, 1) if x.ndim == 5 else x


def relative_error(reference, value) -> float:
    """max |reference - value| / max |reference|."""
    reference = np.asarray(reference, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    assert reference.shape == value.shape, (reference.shape, value.shape)
    return float(np.abs(reference - value).max() / max(np.abs(reference).max(), 1e-30))


def random_clips(batch: int, side: int, t_rgb: int = 16, t_pose: int = 48, seed: int = 0):
    """(rgb, pose) in NCTHW float32: normalised-looking RGB, heatmap-like pose in [0, 1]."""
    rng = np.random.default_rng(seed)
    rgb = rng.standard_normal((batch, 3, t_rgb, side, side)).astype(np.float32)
    pose = rng.random((batch, 17, t_pose, side // 4, side // 4)).astype(np.float32)
    return rgb, pose


def random_variables(model, seed: int = 0) -> dict:
    """Random variables of ``model`` without compiling its init: LeCun-normal kernels,
    BatchNorm scales and running variances in [0.5, 1.5], small biases and means."""
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = path[-1].key
        if name in ("kernel", "conv_temporal_attention"):
            fan_in = max(1, int(np.prod(spec.shape[:-1])))
            return (rng.standard_normal(spec.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)

    tree = jax.tree_util.tree_map_with_path(leaf, variable_shapes(model))
    return {col: tree[col] for col in ("params", "batch_stats")}


def pose_python() -> str | None:
    """An interpreter that can run MediaPipe, or None."""
    if os.environ.get("EPAM_POSE_PYTHON"):
        return os.environ["EPAM_POSE_PYTHON"]
    return sys.executable if importlib.util.find_spec("mediapipe") is not None else None


def synthetic_person(total: int, img_shape: tuple[int, int],
                     frame_dir: str = "ntu_S001C001P001R001A001_rgb") -> dict:
    """A standing COCO-17 skeleton in the middle of the frame, swaying slightly."""
    h, w = img_shape
    base = np.array(
        [(0, -0.38), (-0.02, -0.4), (0.02, -0.4), (-0.04, -0.39), (0.04, -0.39),
         (-0.08, -0.28), (0.08, -0.28), (-0.1, -0.15), (0.1, -0.15), (-0.1, -0.03),
         (0.1, -0.03), (-0.05, 0.0), (0.05, 0.0), (-0.05, 0.2), (0.05, 0.2),
         (-0.05, 0.4), (0.05, 0.4)], np.float32,
    )
    t = np.arange(total, dtype=np.float32)[:, None]
    kp = np.empty((1, total, 17, 2), np.float32)
    kp[0, :, :, 0] = w * (0.55 + base[:, 0] * h / w) + 10 * np.sin(t / 8)
    kp[0, :, :, 1] = h * (0.5 + base[:, 1])
    return {
        "frame_dir": frame_dir, "label": 0, "img_shape": img_shape, "original_shape": img_shape,
        "total_frames": total, "keypoint": kp, "keypoint_score": np.ones((1, total, 17),
                                                                            np.float32),
    }
