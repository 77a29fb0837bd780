"""Top-level models: the two-stream backbone, the full EPAM-Net, single streams."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from epam_jax.attention import (
    ATTENTION_TYPES,
    CBAMSpatialEfficientTemporal,
    SpatialTemporalAttention,
)
from epam_jax.layers import stats_dtype
from epam_jax.streams import X3DTemporalShift, X3DTemporalShiftPose, check_clip
from epam_jax.tuning import Tuning

Array = jax.Array
Dtype = Any

DEFAULT = Tuning()
FUSIONS = ("multiply", "residual", "none")  # see fuse
STREAMS = ("rgb", "pose")


class I3DHead(nn.Module):
    """Global average pool over (T, H, W), dropout, ``fc_cls``; float32 (or wider) logits."""

    num_classes: int
    dropout_ratio: float = 0.5
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = jnp.mean(x.astype(stats_dtype(x)), axis=(1, 2, 3))
        x = nn.Dropout(self.dropout_ratio, deterministic=not train)(x)
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="fc_cls",
        )(x)
        return logits.astype(stats_dtype(logits))


# The stages with the largest activations: recomputing just these two cuts the
# train step's buffers by about a third for a few percent of time (docs/performance.md).
REMAT_FIRST_STAGES = ("rgb_backbone/layer1", "pose_backbone/layer1")
REMAT_SETTINGS = ("none", "first", "all")


def _check_stage_paths(remat: tuple[str, ...]) -> None:
    """Raise a ValueError unless ``remat`` is stage paths like 'rgb_backbone/layer1'."""
    if isinstance(remat, str) or not all(isinstance(p, str) for p in remat):
        raise ValueError(f"remat must be a bool or a tuple of stage paths, got {remat!r}")
    for path in remat:
        if path.count("/") != 1 or path.split("/")[0] not in ("rgb_backbone", "pose_backbone"):
            raise ValueError(
                f"remat stage paths look like 'rgb_backbone/layer1' or 'pose_backbone/layer2', "
                f"got {path!r}"
            )


def parse_remat(value: bool | str | tuple[str, ...]) -> bool | tuple[str, ...]:
    """A model's ``remat`` from a configuration value.

    'none' (or False), 'all' (or True), 'first' (``REMAT_FIRST_STAGES``), or stage paths,
    as a tuple or one comma-separated string: 'rgb_backbone/layer1,pose_backbone/layer2'.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text in REMAT_SETTINGS:
            return {"none": False, "all": True, "first": REMAT_FIRST_STAGES}[text]
        if "/" not in text:
            raise ValueError(
                f"remat must be one of {REMAT_SETTINGS} or comma-separated stage paths like "
                f"'rgb_backbone/layer1,pose_backbone/layer1', got {value!r}"
            )
        value = tuple(p.strip() for p in text.split(","))
    _check_stage_paths(tuple(value))
    return tuple(value)


def stream_remat(remat: bool | tuple[str, ...], stream: str) -> bool | tuple[str, ...]:
    """The ``remat`` of one stream from a model's: a bool, or stage paths like
    'rgb_backbone/layer1' (every stage of every stream for True)."""
    if isinstance(remat, bool):
        return remat
    _check_stage_paths(remat)
    prefix = f"{stream}_backbone/"
    return tuple(p[len(prefix) :] for p in remat if p.startswith(prefix))


def make_stream(
    stream: str,
    *,
    dtype: Dtype,
    remat: bool | tuple[str, ...],
    bn_axis_name: str | None,
    tuning: Tuning = DEFAULT,
    name: str | None = None,
):
    """The RGB or pose X-ShiftNet stream (``name`` only outside ``setup``)."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    cls = X3DTemporalShift if stream == "rgb" else X3DTemporalShiftPose
    remat = stream_remat(remat, stream)
    return cls(dtype=dtype, remat=remat, bn_axis_name=bn_axis_name, tuning=tuning, name=name)


def make_attention(
    attention_type: str, *, dtype: Dtype, bn_axis_name: str | None, tuning: Tuning = DEFAULT
):
    if attention_type == "CBAM_spatial_efficient_temporal":
        return CBAMSpatialEfficientTemporal(bn_axis_name=bn_axis_name, tuning=tuning, dtype=dtype)
    if attention_type == "spatial_temporal":
        return SpatialTemporalAttention(tuning=tuning, dtype=dtype)
    raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")


class Features(NamedTuple):
    """The two streams' features and the attention map of a pair of clips (NDHWC): rgb
    (N, 16, 7, 7, 432), pose (N, 48, 7, 7, 216), attention (N, 16, 7, 7, 1) at full size."""

    rgb: Array
    pose: Array
    attention: Array


def fuse(rgb_feats: Array, attention: Array, fusion: str) -> Array:
    """The RGB features with the attention applied: 'multiply' ``rgb * attention`` (the
    backbone's output), 'residual' ``rgb + rgb * attention`` (what EPAM-Net's RGB head
    sees), 'none' the raw RGB features."""
    if fusion == "multiply":
        return rgb_feats * attention
    if fusion == "residual":
        return rgb_feats + rgb_feats * attention
    if fusion == "none":
        return rgb_feats
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


class _TwoStream(nn.Module):
    """Shared body of EPAMBackbone and EPAMNet: streams, alignment and attention."""

    attention_type: str = "CBAM_spatial_efficient_temporal"
    freeze_rgb: bool = False
    freeze_pose: bool = False
    remat: bool | tuple[str, ...] = False
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    tuning: Tuning = DEFAULT

    def setup(self):
        if not isinstance(self.tuning, Tuning):
            raise TypeError(f"tuning must be an epam_jax.Tuning, got {self.tuning!r}")
        kw = dict(dtype=self.dtype, remat=self.remat, bn_axis_name=self.bn_axis_name,
                  tuning=self.tuning)
        self.rgb_backbone = make_stream("rgb", **kw)
        self.pose_backbone = make_stream("pose", **kw)
        self.attention_module = make_attention(
            self.attention_type, dtype=self.dtype, bn_axis_name=self.bn_axis_name,
            tuning=self.tuning,
        )

    def check_inputs(self, rgb: Array, pose: Array) -> int:
        """Validate the pair of clips; return the pose-to-RGB frame stride."""
        check_clip(rgb, self.rgb_backbone.in_channels, "rgb clip")
        check_clip(pose, self.pose_backbone.in_channels, "pose heatmaps")
        if rgb.shape[0] != pose.shape[0]:
            raise ValueError(
                f"rgb and pose batch sizes differ: {rgb.shape[0]} vs {pose.shape[0]}"
            )
        t_rgb, t_pose = rgb.shape[1], pose.shape[1]
        if t_pose % t_rgb:
            raise ValueError(
                f"pose frames must be an integer multiple of rgb frames, got {t_pose} pose "
                f"frames for {t_rgb} rgb frames (the original uses 48 and 16)"
            )
        rgb_grid = self.rgb_backbone.output_size(*rgb.shape[2:4])
        pose_grid = self.pose_backbone.output_size(*pose.shape[2:4])
        if rgb_grid != pose_grid:
            raise ValueError(
                f"the two streams' feature grids differ: rgb {tuple(rgb.shape[2:4])} gives "
                f"{rgb_grid}, pose {tuple(pose.shape[2:4])} gives {pose_grid}; the rgb "
                f"side must be 4x the pose side (224x224 with 56x56)"
            )
        return t_pose // t_rgb

    def eval_chunk_size(self, batch: int) -> int:
        """Clips per step of the eval loop over the batch: ``tuning.eval_chunk`` (0: all)."""
        chunk = self.tuning.eval_chunk
        return batch if chunk == 0 else min(chunk, batch)

    def features(self, rgb: Array, pose: Array, train: bool) -> Features:
        """``Features(rgb, pose, attention)`` for a pair of clips.

        In eval the batch runs ``eval_chunk_size`` clips at a time.
        """
        stride = self.check_inputs(rgb, pose)
        batch = rgb.shape[0]
        chunk = batch if train or self.is_initializing() else self.eval_chunk_size(batch)

        def both(module, rgb, pose):
            return module._features(rgb, pose, stride, train)

        return self._over_clips(both, (rgb, pose), chunk)

    def stream_features(self, x: Array, stream: str) -> Array:
        """Eval features of one stream ('rgb' or 'pose'), ``eval_chunk_size`` clips at a time.

        With ``from_features`` this splits the eval forward so the two streams can
        run at the same time (``epam_jax.concurrent_eval.ConcurrentStreams``).
        """
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")

        def one(module, x):
            backbone = module.rgb_backbone if stream == "rgb" else module.pose_backbone
            return backbone(x, train=False)

        return self._over_clips(one, (x,), self.eval_chunk_size(x.shape[0]))

    def _over_clips(self, fn: Any, inputs: tuple[Array, ...], chunk: int) -> Any:
        """``fn(module, *inputs)`` over the batch, ``chunk`` clips a step (``nn.scan``)."""
        batch = inputs[0].shape[0]
        if chunk == batch:
            return fn(self, *inputs)
        steps, rest = divmod(batch, chunk)

        def body(module, carry, clips):
            return carry, fn(module, *clips)

        def grouped(x):
            return x[: steps * chunk].reshape(steps, chunk, *x.shape[1:])

        loop = nn.scan(body, variable_broadcast=True, split_rngs={}, length=steps)
        _, outs = loop(self, None, tuple(grouped(x) for x in inputs))
        outs = jax.tree_util.tree_map(lambda o: o.reshape(steps * chunk, *o.shape[2:]), outs)
        if rest:
            tail = fn(self, *(x[steps * chunk :] for x in inputs))
            outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), outs, tail)
        return outs

    def _features(self, rgb: Array, pose: Array, stride: int, train: bool) -> Features:
        rgb_feats = self.rgb_backbone(rgb, train=train and not self.freeze_rgb)
        if self.freeze_rgb:
            rgb_feats = jax.lax.stop_gradient(rgb_feats)
        pose_feats = self.pose_backbone(pose, train=train and not self.freeze_pose)
        if self.freeze_pose:
            pose_feats = jax.lax.stop_gradient(pose_feats)
        return Features(rgb_feats, pose_feats, self._attend(rgb_feats, pose_feats, stride, train))

    def _attend(self, rgb_feats: Array, pose_feats: Array, stride: int, train: bool) -> Array:
        """The attention map from the pose frames aligned with the RGB frames."""
        aligned = pose_feats[:, ::stride][:, : rgb_feats.shape[1]]
        return self.attention_module(aligned, train=train)

    def from_features(
        self, rgb_feats: Array, pose_feats: Array, stride: int, *, return_attention: bool = False
    ):
        """Eval outputs from the two streams' features (``stream_features``), as ``__call__``."""
        attention = self._attend(rgb_feats, pose_feats, stride, train=False)
        return self._returns(rgb_feats, pose_feats, attention, train=False,
                             return_attention=return_attention)


class EPAMBackbone(_TwoStream):
    """EPAM-Net as a two-stream feature extractor (the standalone backbone).

    ``apply(variables, rgb, pose, train=False, return_attention=False)`` with
    rgb (N, 16, 224, 224, 3) and pose heatmaps (N, 48, 56, 56, 17) returns
    ``(rgb_features * attention, pose_features)``, shapes (N, 16, 7, 7, 432)
    and (N, 48, 7, 7, 216), plus the (N, 16, 7, 7, 1) attention map when asked.
    ``fusion='residual'`` gives ``rgb + rgb * attention`` (what EPAM-Net's RGB
    head sees). ``num_classes`` does not change the features. ``tuning``: how
    the layers are written for a platform (``epam_jax.Tuning``; the default
    suits a plain ``jax.jit`` on CPU and runs everywhere).
    """

    num_classes: int = 60
    fusion: str = "multiply"
    return_both_streams: bool = True

    def __call__(
        self, rgb: Array, pose: Array, *, train: bool = False, return_attention: bool = False
    ):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        rgb_feats, pose_feats, attention = self.features(rgb, pose, train)
        return self._returns(rgb_feats, pose_feats, attention, train=train,
                             return_attention=return_attention)

    def _returns(
        self, rgb_feats: Array, pose_feats: Array, attention: Array, *, train: bool,
        return_attention: bool
    ):
        """What ``__call__`` returns, the original backbone's tuple: the fused RGB features,
        the pose features unless ``return_both_streams=False`` (then a bare array when
        nothing else is asked), and the attention with ``return_attention``."""
        fused = fuse(rgb_feats, attention, self.fusion)
        out = (fused, pose_feats) if self.return_both_streams else (fused,)
        if return_attention:
            out = out + (attention,)
        return out if len(out) > 1 else out[0]


class EPAMNet(_TwoStream):
    """The full EPAM-Net: ``apply(v, rgb, pose, train=False) -> (rgb_logits, pose_logits)``.

    The fused prediction is ``rgb_logits + pose_logits``. Training needs a
    'dropout' rng and ``mutable=['batch_stats']``.
    """

    num_classes: int = 60
    dropout_ratio: float = 0.5

    def setup(self):
        super().setup()
        self.rgb_cls_head = I3DHead(self.num_classes, self.dropout_ratio, dtype=self.dtype)
        self.pose_cls_head = I3DHead(self.num_classes, self.dropout_ratio, dtype=self.dtype)

    def __call__(
        self, rgb: Array, pose: Array, *, train: bool = False, return_attention: bool = False
    ):
        rgb_feats, pose_feats, attention = self.features(rgb, pose, train)
        return self._returns(rgb_feats, pose_feats, attention, train=train,
                             return_attention=return_attention)

    def _returns(
        self, rgb_feats: Array, pose_feats: Array, attention: Array, *, train: bool,
        return_attention: bool
    ):
        """What ``__call__`` returns: both heads' logits, and the attention with
        ``return_attention``."""
        rgb_logits = self.rgb_cls_head(fuse(rgb_feats, attention, "residual"), train=train)
        pose_logits = self.pose_cls_head(pose_feats, train=train)
        if return_attention:
            return rgb_logits, pose_logits, attention
        return rgb_logits, pose_logits


class SingleStreamNet(nn.Module):
    """One stream with its I3D head: the paper's pre-training step.

    Children are named ``{stream}_backbone`` and ``{stream}_cls_head`` so the
    variables drop into EPAMNet's tree as they are.
    """

    stream: str = "rgb"
    num_classes: int = 60
    dropout_ratio: float = 0.5
    remat: bool | tuple[str, ...] = False
    bn_axis_name: str | None = None
    dtype: Dtype = jnp.float32
    tuning: Tuning = DEFAULT

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        backbone = make_stream(
            self.stream,
            dtype=self.dtype,
            remat=self.remat,
            bn_axis_name=self.bn_axis_name,
            tuning=self.tuning,
            name=f"{self.stream}_backbone",
        )
        head = I3DHead(
            self.num_classes, self.dropout_ratio, dtype=self.dtype, name=f"{self.stream}_cls_head"
        )
        return head(backbone(x, train=train), train=train)


def dummy_inputs(model: nn.Module, batch: int = 1) -> tuple[Array, ...]:
    """The smallest valid inputs for ``model``: enough to build its variables.

    Parameter shapes do not depend on clip size, so ``init`` on these is cheap.
    """
    rgb = jnp.zeros((batch, 16, 32, 32, 3), jnp.float32)
    pose = jnp.zeros((batch, 16, 8, 8, 17), jnp.float32)
    if isinstance(model, SingleStreamNet):
        return (rgb,) if model.stream == "rgb" else (pose,)
    return rgb, pose


def init_variables(model: nn.Module, rng: jax.Array) -> dict:
    """``{'params', 'batch_stats'}`` of ``model``, initialised as the original."""
    return jax.jit(model.init)(rng, *dummy_inputs(model))


def variable_shapes(model: nn.Module) -> dict:
    """``jax.eval_shape`` of ``model.init``: the variable tree without computing it.

    Tracing EPAM-Net takes seconds, and loading, converting and checking a checkpoint each
    need the tree, so it is remembered per model (modules are frozen dataclasses) and
    handed out as a fresh tree each time.
    """
    try:
        hash(model)
    except TypeError:  # a field that cannot be hashed: trace it every time
        return _trace_shapes(model)
    return jax.tree_util.tree_map(lambda s: s, _traced_shapes(model, jax.config.jax_enable_x64))


def _trace_shapes(model: nn.Module) -> dict:
    return jax.eval_shape(model.init, jax.random.key(0), *dummy_inputs(model))


@functools.lru_cache(maxsize=16)
def _traced_shapes(model: nn.Module, x64: bool) -> dict:
    del x64  # part of the key only: it changes the traced dtypes
    return _trace_shapes(model)
