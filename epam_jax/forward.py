"""The tools' forward pass: a checkpoint's model on batches of clips, sharded over the
local devices, returning named numpy arrays.

``make_forward`` is what extract, predict and stream run; ``named_outputs`` names what a
pass returns (``attention``, ``rgb_features``/``pose_features``, ``rgb_pooled``/``pose_pooled``,
and with the heads ``rgb_logits``, ``pose_logits``, ``scores``), and export traces it too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.checkpoints import LoadedModel
from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.models import FUSIONS, EPAMNet, fuse
from epam_jax.streams import check_finite
from epam_jax.tuning import Tuning

POOLINGS = ("pooled", "unpooled", "both")


def named_outputs(module: Any, rgb: jax.Array, pose: jax.Array, fusion: str, pooling: str,
                  heads: bool) -> dict[str, jax.Array]:
    """The named outputs of a two-stream model's eval pass (``model.apply(..., method=)``):
    'attention', the features unpooled and/or pooled as ``pooling`` asks (RGB ones fused
    as ``fusion`` says), and with ``heads`` both logits and their sum 'scores'."""
    rgb_feats, pose_feats, attention = module.features(rgb, pose, False)
    fused = fuse(rgb_feats, attention, fusion)
    out = {"attention": attention}
    if pooling in ("unpooled", "both"):
        out["rgb_features"] = fused
        out["pose_features"] = pose_feats
    if pooling in ("pooled", "both"):
        out["rgb_pooled"] = jnp.mean(fused, axis=(1, 2, 3))
        out["pose_pooled"] = jnp.mean(pose_feats, axis=(1, 2, 3))
    if heads:
        rgb_logits = module.rgb_cls_head(fuse(rgb_feats, attention, "residual"),
                                         train=False)
        pose_logits = module.pose_cls_head(pose_feats, train=False)
        out |= {"rgb_logits": rgb_logits, "pose_logits": pose_logits,
                "scores": rgb_logits + pose_logits}
    return out


def _forward_outputs(variables: dict, batch: dict[str, jax.Array], *, model: Any,
                     fusion: str, pooling: str, inputs: DeviceInputs) -> dict[str, jax.Array]:
    heads = isinstance(model, EPAMNet)
    batch = inputs(batch)
    return model.apply(
        variables, batch["rgb"], batch["heatmap"],
        method=lambda m, r, p: named_outputs(m, r, p, fusion, pooling, heads)
    )


@functools.cache
def jitted_forward() -> Callable[..., dict[str, jax.Array]]:
    """``f(variables, batch, *, model, fusion, pooling, inputs) -> {name: array}``, jitted:
    one function keyed on the (hashable) model, so every tool shares its compiles; made
    on first use so that importing this module starts no JAX backend."""
    return jax.jit(_forward_outputs, static_argnames=("model", "fusion", "pooling", "inputs"))


class Forward(NamedTuple):
    """``make_forward``'s result: the pass and the device count batches split over."""

    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    num_devices: int


def make_forward(
    loaded: LoadedModel, fusion: str = "multiply", pooling: str = "pooled",
    inputs: DeviceInputs | None = None,
) -> Forward:
    """``Forward(run, num_devices)``: a jit-compiled ``run(batch) -> {name: numpy array}``
    sharded over all local devices (batch on mesh axis 'data', variables replicated), and
    the device count the batch size must be a multiple of. ``batch`` holds 'rgb' (float32
    normalised or uint8) and 'heatmap' or 'keypoint', finished on the device by ``inputs``
    (the loader's ``DeviceInputs.of(config)``)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    devices = np.array(jax.local_devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    variables = jax.device_put(loaded.variables, replicated)
    model = loaded.model.clone(tuning=Tuning.for_devices(devices))
    inputs = inputs or DeviceInputs()

    def forward(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pose_key = "keypoint" if "keypoint" in batch else "heatmap"
        arrays = {"rgb": np.asarray(batch["rgb"]), pose_key: np.asarray(batch[pose_key])}
        for key, array in arrays.items():
            if array.dtype == np.uint8 and key == "rgb":
                continue
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(
                    f"batch[{key!r}] must be float32 ('rgb' may also be uint8 frames, "
                    f"normalised on the device), got {array.dtype}")
            arrays[key] = array.astype(np.float32, copy=False)
            check_finite(arrays[key], f"batch[{key!r}]")
        if len(arrays["rgb"]) % len(devices):
            raise ValueError(
                f"batch of {len(arrays['rgb'])} clips does not split over {len(devices)} "
                "devices")
        placed = jax.device_put(arrays, batch_sharding)
        out = jitted_forward()(variables, placed, model=model, fusion=fusion,
                                pooling=pooling, inputs=inputs)
        return jax.tree_util.tree_map(np.asarray, out)

    return Forward(forward, len(devices))
