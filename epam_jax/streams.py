"""The two X-ShiftNet streams: X3D blocks with a temporal shift, NDHWC."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from epam_jax.layers import (
    BatchNorm,
    ConvBN,
    SEModule,
    materialize,
    padded_width,
    swish,
    temporal_shift,
)

Array = jax.Array
Dtype = Any


# In eval on CPU the bottleneck channels are zero-padded to a multiple of this (X3DStage).
EVAL_CHANNEL_MULTIPLE = 8


def check_clip(x: Array, channels: int, what: str) -> None:
    """Raise a ValueError unless ``x`` is an (N, T, H, W, channels) clip."""
    shape = tuple(x.shape)
    if len(shape) != 5:
        raise ValueError(
            f"{what} must be a 5-D (N, T, H, W, C={channels}) array, got shape {shape}"
        )
    if shape[-1] != channels:
        hint = ""
        if shape[1] == channels:
            hint = (
                "; it looks channels-first (N, C, T, H, W) as in PyTorch: "
                "pass x.transpose(0, 2, 3, 4, 1)"
            )
        raise ValueError(
            f"{what} must have {channels} channels last (N, T, H, W, {channels}), "
            f"got shape {shape}{hint}"
        )
    if min(shape) < 1:
        raise ValueError(f"{what} has an empty dimension: shape {shape}")


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a kernel-3, padding-1 convolution."""
    return (size - 1) // stride + 1


class BlockX3D(nn.Module):
    """X3D bottleneck with a temporal shift on its input (the residual is unshifted).

    ``width`` (eval only, default ``planes``) runs the bottleneck on that many
    channels, the ones beyond ``planes`` zero: see ``X3DStage``.
    """

    planes: int
    out_channels: int
    norm: Any
    stride: int = 1
    use_se: bool = False
    fold_div: int = 8
    width: int | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        convbn = partial(ConvBN, norm=self.norm, dtype=self.dtype)
        planes, width = self.planes, self.width or self.planes
        out = temporal_shift(x, self.fold_div)
        out = convbn(planes, relu=True, out_width=width, name="conv1")(out)
        out = convbn(
            planes,
            kind="depthwise",
            kernel_size=3,
            stride=self.stride,
            in_features=planes,
            out_width=width,
            name="conv2",
        )(out)
        if self.use_se:  # read twice (squeeze, excite): one buffer, not two computations
            out = SEModule(planes, dtype=self.dtype, name="se_module")(materialize(out))
        out = swish(out)
        out = convbn(self.out_channels, zero_init_gamma=True, in_features=planes, name="conv3")(
            out
        )
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            identity = convbn(self.out_channels, stride=self.stride, name="downsample")(x)
        else:
            identity = x.astype(out.dtype)
        return materialize(nn.relu(out + identity))


class X3DStage(nn.Module):
    """``num_blocks`` BlockX3D named '0', '1', ...; SE on the even ones.

    ``train`` is positional so the stage can be wrapped by ``nn.remat``. In eval
    on CPU the bottleneck's channels are padded with zeros to a multiple of
    ``EVAL_CHANNEL_MULTIPLE`` (54 -> 56, 108 -> 112): XLA:CPU's fused
    elementwise loops slow down on a channel axis that is not a whole number of
    vectors (eval at batch 1 on a 2-core CPU: 185 -> 170-175 ms). The outputs
    are unchanged; training gained nothing (2.05 vs 2.04 s a step at batch 2)
    and runs unpadded.
    """

    num_blocks: int
    planes: int
    out_channels: int
    stride: int = 2
    fold_div: int = 8
    bn_axis_name: str | None = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        norm = partial(BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name)
        width = self.planes
        if not train and jax.default_backend() == "cpu":
            width = padded_width(self.planes, EVAL_CHANNEL_MULTIPLE)
        for j in range(self.num_blocks):
            x = BlockX3D(
                self.planes,
                self.out_channels,
                norm=norm,
                stride=self.stride if j == 0 else 1,
                use_se=j % 2 == 0,
                fold_div=self.fold_div,
                width=width,
                dtype=self.dtype,
                name=str(j),
            )(x)
        return x


class X3DStream(nn.Module):
    """An X-ShiftNet stream: stem ``conv1_s``, stages ``layer1..``, head ``conv5``.

    Input (N, T, H, W, in_channels); output (N, T, H', W', head_channels) with
    H' the input height after the stem and one stride-2 step per stage.
    ``remat`` recomputes stages in the backward pass to save memory: True for
    every stage, or a tuple of stage names ('layer1', ...); on CPU jit the step
    with ``compiler_options=epam_jax.xla_options.compiler_options()``.
    """

    in_channels: int
    stem_stride: int
    stage_blocks: tuple[int, ...]
    stage_widths: tuple[int, ...]
    head_channels: int
    fold_div: int
    bottleneck_factor: float = 2.25
    remat: bool | tuple[str, ...] = False
    bn_axis_name: str | None = None
    dtype: Dtype | None = None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the features for an input of ``height`` x ``width``."""
        for stride in (self.stem_stride,) + (2,) * len(self.stage_blocks):
            height, width = conv_out_size(height, stride), conv_out_size(width, stride)
        return height, width

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        check_clip(x, self.in_channels, f"{type(self).__name__} input")
        dtype = self.dtype or jnp.float32
        norm = partial(BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name)
        x = ConvBN(
            self.stage_widths[0],
            norm=norm,
            kind="spatial",
            kernel_size=3,
            stride=self.stem_stride,
            relu=True,
            dtype=dtype,
            name="conv1_s",
        )(x.astype(dtype))
        names = [f"layer{i}" for i in range(1, len(self.stage_blocks) + 1)]
        if isinstance(self.remat, bool):
            recompute = set(names) if self.remat else set()
        else:
            recompute = set(self.remat)
            if recompute - set(names):
                raise ValueError(
                    f"{type(self).__name__}: remat names stages {sorted(recompute - set(names))}; "
                    f"it has {names}"
                )
        stages = zip(self.stage_blocks, self.stage_widths, strict=True)
        for i, (blocks, width) in enumerate(stages, start=1):
            remat = f"layer{i}" in recompute
            stage_cls = nn.remat(X3DStage, static_argnums=(2,)) if remat else X3DStage
            x = stage_cls(
                blocks,
                int(width * self.bottleneck_factor),
                width,
                stride=2,
                fold_div=self.fold_div,
                bn_axis_name=self.bn_axis_name,
                dtype=dtype,
                name=f"layer{i}",
            )(x, train)
        return ConvBN(self.head_channels, norm=norm, relu=True, dtype=dtype, name="conv5")(x)


class X3DTemporalShift(X3DStream):
    """RGB stream: (N, T, H, W, 3) -> (N, T, H/32, W/32, 432)."""

    in_channels: int = 3
    stem_stride: int = 2
    stage_blocks: tuple[int, ...] = (3, 5, 11, 7)
    stage_widths: tuple[int, ...] = (24, 48, 96, 192)
    head_channels: int = 432
    fold_div: int = 8


class X3DTemporalShiftPose(X3DStream):
    """Pose stream: (N, T, 56, 56, 17) heatmaps -> (N, T, 7, 7, 216)."""

    in_channels: int = 17
    stem_stride: int = 1
    stage_blocks: tuple[int, ...] = (5, 11, 7)
    stage_widths: tuple[int, ...] = (24, 48, 96)
    head_channels: int = 216
    fold_div: int = 4
