"""Shared test fixtures: the reference model, real data, small inputs."""

from __future__ import annotations

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
