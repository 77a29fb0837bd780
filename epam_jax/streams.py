"""The two X-ShiftNet streams: X3D blocks with a temporal shift, NDHWC."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.layers import (
    BatchNorm,
    ConvBN,
    SEModule,
    materialize,
    padded_width,
    prepare_convbn,
    prepare_se,
    swish,
    temporal_shift,
)
from epam_jax.tuning import Tuning

Array = jax.Array
Dtype = Any
DEFAULT = Tuning()


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
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{what} must be floating point (normalised frames, heatmaps in [0, 1]), got "
            f"{x.dtype}; uint8 frames go through epam_jax.data.normalize_rgb on the host or "
            "epam_jax.data.device_inputs.DeviceInputs on the device"
        )
    check_finite(x, what)


def check_finite(x: Any, what: str) -> None:
    """Raise a ValueError when a concrete (not traced) array holds NaN or infinity.

    Eager calls are checked here; under ``jax.jit`` the values are unknown while tracing
    (``jax.config.update('jax_debug_nans', True)`` or ``jax.experimental.checkify``
    find them there), and the host-side forward of ``epam_jax.forward.make_forward``
    checks its numpy batches itself.
    """
    if isinstance(x, jax.core.Tracer):
        return
    finite = np.isfinite(np.asarray(x))  # numpy: under a trace jnp would be staged
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(
            f"{what} holds {len(bad)} NaN or infinite values (first at index "
            f"{tuple(int(i) for i in bad[0])}); the model needs finite inputs"
        )


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a kernel-3, padding-1 convolution."""
    return (size - 1) // stride + 1


class BlockX3D(nn.Module):
    """X3D bottleneck with a temporal shift on its input (the residual is unshifted).

    ``width`` (eval only, default ``planes``) runs the bottleneck on that many
    channels, the ones beyond ``planes`` zero: see ``X3DStage``. ``prepared``
    (eval only): the variables are ``prepare_block``'s.
    """

    planes: int
    out_channels: int
    norm: Any
    stride: int = 1
    use_se: bool = False
    fold_div: int = 8
    width: int | None = None
    prepared: bool = False
    tuning: Tuning = DEFAULT
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        convbn = partial(ConvBN, norm=self.norm, prepared=self.prepared, tuning=self.tuning,
                         dtype=self.dtype)
        planes, width = self.planes, self.width or self.planes
        barrier = self.tuning.barriers
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
            se = SEModule(planes, prepared=self.prepared, tuning=self.tuning, dtype=self.dtype,
                          name="se_module")
            out = se(materialize(out, barrier))
        out = swish(out, self.tuning.custom_gradients)
        out = convbn(self.out_channels, zero_init_gamma=True, in_features=planes, name="conv3")(
            out
        )
        if self.stride != 1 or x.shape[-1] != self.out_channels:
            identity = convbn(self.out_channels, stride=self.stride, name="downsample")(x)
        else:
            identity = x.astype(out.dtype)
        return materialize(nn.relu(out + identity), barrier)


def prepare_block(variables: dict, *, planes: int, width: int, use_se: bool) -> dict:
    """A stride-1 ``BlockX3D``'s eval variables as ``BlockX3D(prepared=True)`` reads them.

    BatchNorm folded into each convolution, the bottleneck padded from
    ``planes`` to ``width`` channels; returns the params (there are no more
    batch statistics).
    """
    def convbn(name: str, **pad: int) -> dict:
        sub = {c: variables[c][name] for c in ("params", "batch_stats")}
        return prepare_convbn(sub, **pad)["conv"]

    pad = width - planes
    params = {
        "conv1": {"conv": convbn("conv1", pad_out=pad)},
        "conv2": {"conv": convbn("conv2", pad_out=pad)},
        "conv3": {"conv": convbn("conv3", pad_in=pad)},
    }
    if use_se:
        params["se_module"] = prepare_se(variables["params"]["se_module"], pad=pad)
    return params


class X3DStage(nn.Module):
    """``num_blocks`` BlockX3D named '0', '1', ...; SE on the even ones.

    ``remat``: each block (each scanned pair) is recomputed in the backward
    pass, only its input kept. The ``tuning`` decides how the blocks run (the
    variables are the same):

    - ``scan_blocks``: block 0 (strided, with the downsample) runs alone, then
      blocks (1, 2), (3, 4), ... as one ``lax.scan`` over pairs, their
      variables stacked; in eval, over ``prepare_block``'s folded weights,
      prepared for all blocks before the loop. Without it every block is
      unrolled.
    - ``eval_channel_multiple``: in eval the bottleneck's channels are padded
      with zeros to a multiple of it (54 -> 56, 108 -> 112): XLA:CPU's fused
      elementwise loops slow down on a channel axis that is not a whole number
      of vectors (measured faster in eval on CPU, see docs/performance.md). The
      outputs are unchanged; training gained nothing from it and runs unpadded.
    """

    num_blocks: int
    planes: int
    out_channels: int
    stride: int = 2
    fold_div: int = 8
    remat: bool = False
    bn_axis_name: str | None = None
    tuning: Tuning = DEFAULT
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        norm = partial(BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name,
                       custom_gradient=self.tuning.custom_gradients)
        width = self.planes
        if not train:
            width = padded_width(self.planes, self.tuning.eval_channel_multiple)
        block = partial(BlockX3D, self.planes, self.out_channels, norm=norm,
                        fold_div=self.fold_div, width=width, tuning=self.tuning,
                        dtype=self.dtype)
        remat = self.remat and train
        child = partial(nn.remat(BlockX3D), *block.args, **block.keywords) if remat else block
        x = child(stride=self.stride, use_se=True, name="0")(x)
        pairs = (self.num_blocks - 1) // 2
        if self.tuning.scan_blocks and pairs and not self.is_initializing():
            x = self._scan_pairs(x, block, pairs, width, train)
            first = 2 * pairs + 1
        else:
            first = 1
        for j in range(first, self.num_blocks):
            x = child(use_se=j % 2 == 0, name=str(j))(x)
        return x

    def _scan_pairs(self, x: Array, block: Any, pairs: int, width: int, train: bool) -> Array:
        """Blocks 1 .. 2 * pairs as one ``lax.scan`` over (no SE, SE) pairs of blocks."""
        collections = ("params", "batch_stats")
        variables = self.variables

        def stacked(first: int) -> dict:
            trees = [{c: variables[c][str(j)] for c in collections}
                     for j in range(first, 2 * pairs + 1, 2)]
            return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)

        odd, even = stacked(1), stacked(2)  # blocks 1, 3, ... and 2, 4, ...
        if not train:
            prep = partial(prepare_block, planes=self.planes, width=width)
            odd = {"params": jax.vmap(partial(prep, use_se=False))(odd)}
            even = {"params": jax.vmap(partial(prep, use_se=True))(even)}
        plain = block(use_se=False, prepared=not train, parent=None)
        with_se = block(use_se=True, prepared=not train, parent=None)

        def body(carry: tuple[Array, dict, dict], _) -> tuple[Any, Any]:
            # The pair's variables are the first of the stacks, which rotate by one each step:
            # a dynamic index into them would be recomputed inside every element's loop.
            h, odd, even = carry
            v_odd, v_even = (jax.tree_util.tree_map(lambda a: a[0], t) for t in (odd, even))
            odd, even = (jax.tree_util.tree_map(lambda a: jnp.roll(a, -1, axis=0), t)
                         for t in (odd, even))
            if not train:
                return (with_se.apply(v_even, plain.apply(v_odd, h)), odd, even), None
            h, new_odd = plain.apply(v_odd, h, mutable=["batch_stats"])
            h, new_even = with_se.apply(v_even, h, mutable=["batch_stats"])
            return (h, odd, even), (new_odd["batch_stats"], new_even["batch_stats"])

        if self.remat and train:
            body = jax.checkpoint(body, prevent_cse=False)
        (x, _, _), stats = jax.lax.scan(body, (x, odd, even), length=pairs)
        if train:
            for k in range(pairs):
                for parity, first in ((0, 1), (1, 2)):
                    value = jax.tree_util.tree_map(partial(jnp.take, indices=k, axis=0),
                                                   stats[parity])
                    self.put_variable("batch_stats", str(first + 2 * k), value)
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
    tuning: Tuning = DEFAULT
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
        norm = partial(BatchNorm, use_running_average=not train, axis_name=self.bn_axis_name,
                       custom_gradient=self.tuning.custom_gradients)
        convbn = partial(ConvBN, norm=norm, relu=True, tuning=self.tuning, dtype=dtype)
        x = convbn(
            self.stage_widths[0],
            kind="spatial",
            kernel_size=3,
            stride=self.stem_stride,
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
            x = X3DStage(
                blocks,
                int(width * self.bottleneck_factor),
                width,
                stride=2,
                fold_div=self.fold_div,
                remat=f"layer{i}" in recompute,
                bn_axis_name=self.bn_axis_name,
                tuning=self.tuning,
                dtype=dtype,
                name=f"layer{i}",
            )(x, train)
        return convbn(self.head_channels, name="conv5")(x)


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
