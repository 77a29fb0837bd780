"""Pose-guided attention: pose features (aligned to RGB time) -> (N, T, H, W, 1) map."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from epam_jax.layers import BatchNorm, Conv, ConvBN, kaiming_fan_out, stats_dtype
from epam_jax.tuning import Tuning

Array = jax.Array
Dtype = Any

ATTENTION_TYPES = ("CBAM_spatial_efficient_temporal", "spatial_temporal")


def channel_max(x: Array) -> Array:
    """Max over the last axis, its gradient routed to the (first) arg-max.

    ``jnp.max``'s gradient compares the input with the maximum; under ``jit``
    XLA may recompute the input in another fusion with different rounding,
    find no equal element and divide by zero. Gathering at the arg-max cannot
    fail that way, and matches ``torch.max(x, dim)``'s backward.
    """
    index = jnp.argmax(x, axis=-1, keepdims=True)
    return jnp.take_along_axis(x, index, axis=-1)


def temporal_conv1d(x: Array, kernel: Array) -> Array:
    """1-channel Conv1d over time, zero padding k // 2: (N, T) x (k, 1, 1) -> (N, T)."""
    k = kernel.shape[0]
    y = lax.conv_general_dilated(
        x[:, :, None],
        kernel.astype(x.dtype),
        window_strides=(1,),
        padding=((k // 2, k // 2),),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    return y[:, :, 0]


class CBAMSpatialEfficientTemporal(nn.Module):
    """The paper's attention: CBAM spatial map times an efficient temporal gate.

    Channels are compressed to [max, mean], a (1, 7, 7) conv + BatchNorm gives
    the spatial map; its spatial mean over time goes through a 7-tap Conv1d for
    the temporal gate.
    """

    bn_axis_name: str | None = None
    tuning: Tuning = Tuning()
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        dtype = self.dtype or jnp.float32
        x = x.astype(dtype)
        pooled = jnp.concatenate(
            [channel_max(x), jnp.mean(x, axis=-1, keepdims=True)], axis=-1
        )

        def norm(features, **kw):
            return BatchNorm(
                features,
                use_running_average=not train,
                momentum=0.99,
                axis_name=self.bn_axis_name,
                custom_gradient=self.tuning.custom_gradients,
                **kw,
            )

        spatial = ConvBN(
            1, norm=norm, kind="spatial", kernel_size=7, tuning=self.tuning, dtype=dtype,
            name="spatial",
        )(pooled)
        spatial = nn.sigmoid(spatial.astype(stats_dtype(spatial)))
        kernel = self.param("conv_temporal_attention", kaiming_fan_out, (7, 1, 1), jnp.float32)
        temporal = nn.sigmoid(temporal_conv1d(jnp.mean(spatial[..., 0], axis=(2, 3)), kernel))
        return (spatial * temporal[:, :, None, None, None]).astype(dtype)


class SpatialTemporalAttention(nn.Module):
    """The 'spatial_temporal' variant: conv channel compression and an MLP over time.

    Its two Linear layers fix the number of RGB frames (16 in the original).
    """

    num_frames: int = 16
    tuning: Tuning = Tuning()
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        if x.shape[1] != self.num_frames:
            raise ValueError(
                f"spatial_temporal attention is built for {self.num_frames} RGB frames, "
                f"got {x.shape[1]}"
            )
        dtype = self.dtype or jnp.float32
        conv = partial(Conv, 1, kind="spatial", use_bias=True, tuning=self.tuning, dtype=dtype)
        s = nn.relu(conv(kernel_size=3, name="conv_ch_compress")(x.astype(dtype)))
        s = conv(kernel_size=7, name="conv_sptial_attention")(s)
        spatial = nn.sigmoid(s.astype(stats_dtype(s)))
        dense = dict(use_bias=False, kernel_init=nn.initializers.normal(0.01))
        t = jnp.mean(spatial[..., 0], axis=(2, 3))
        t = nn.relu(nn.Dense(self.num_frames, name="fc1", **dense)(t))
        temporal = nn.sigmoid(nn.Dense(self.num_frames, name="fc2", **dense)(t))
        return (spatial * temporal[:, :, None, None, None]).astype(dtype)
