"""Loader batches -> model inputs on the accelerator, inside the jitted steps.

A loader made with ``ClipConfig.device_inputs()`` ships uint8 frames (16x224x224x3,
2.4 MB) and keypoints (2x48x17x3 float32, 20 KB) instead of normalised float32 frames
(9.6 MB) and host heatmaps (48x56x56x17 float32, 10.2 MB). ``DeviceInputs`` finishes
them on the device: RGB normalisation with the host's float32 operations (bit-identical)
and heatmaps from ``heatmaps_from_keypoints`` (equal to the host's to float32 rounding of
``exp``). Batches already in the host format pass through unchanged, so one compiled
step serves either loader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.data.heatmaps_jax import heatmaps_from_keypoints
from epam_jax.data.pipeline import ClipConfig
from epam_jax.data.transforms import rgb_normalization


def normalize_rgb_on_device(frames: jax.Array) -> jax.Array:
    """(frames - mean) / std per channel in float32: ``normalize_rgb``'s numbers."""
    if frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames with 3 channels last, got {frames.shape}")
    mean, inv_std = rgb_normalization()
    return (frames.astype(jnp.float32) - mean) * inv_std


@dataclasses.dataclass(frozen=True)
class DeviceInputs:
    """How 'keypoint' and uint8 'rgb' entries of a batch become the model's inputs.

    The heatmap settings must be the loader's (``DeviceInputs.of(clip_config)``); the
    defaults are the paper's. Hashable, so it can be a static argument of a jitted step.
    """

    heatmap_size: tuple[int, int] = (56, 56)
    sigma: float = 0.6
    use_score: bool = True
    with_kp: bool = True
    with_limb: bool = False

    @classmethod
    def of(cls, config: ClipConfig) -> DeviceInputs:
        """The settings matching a loader's ClipConfig."""
        return cls(heatmap_size=tuple(config.heatmap_size), sigma=config.sigma,
                   use_score=config.use_score, with_kp=config.with_kp,
                   with_limb=config.with_limb)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with 'heatmap' drawn from 'keypoint' (B, P, T, 17, 3) and uint8 'rgb'
        normalised; other entries, and batches in the host format, unchanged."""
        out = dict(batch)
        if "keypoint" in out:
            kp = out.pop("keypoint")
            if kp.ndim != 5 or kp.shape[-1] != 3:
                raise ValueError(
                    f"expected a batch of keypoints (B, P, T, V, 3), got {kp.shape}")
            out["heatmap"] = heatmaps_from_keypoints(
                kp, self.heatmap_size, self.sigma, self.use_score, self.with_kp,
                self.with_limb)
        if "rgb" in out and out["rgb"].dtype == jnp.uint8:
            out["rgb"] = normalize_rgb_on_device(out["rgb"])
        return out


def batch_bytes(batch: Mapping[str, Any]) -> int:
    """Bytes of the arrays in a batch: what goes from the host to the device."""
    return int(sum(np.asarray(v).nbytes for v in batch.values()))
