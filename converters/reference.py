"""Pure-PyTorch reference of the original EPAM-Net (no mmcv, no mmaction).

Structurally the official network (mmaction 0.24 + mmcv 1.5 build) in PyTorch layout
NCTHW: module and parameter names reproduce the original state-dict keys exactly
(see ``shared/EPAM_NET.md`` sec. 5), so official checkpoints load with
``load_state_dict(strict=True)`` after stripping their container prefixes. The Flax
model is checked against this module by the parity tests and the checkpoint
converters read its key layout.

Public API: :func:`temporal_shift`, :class:`ConvModule`, :class:`SEModule`,
:class:`BlockX3D`, :class:`X3DTemporalShift`, :class:`X3DTemporalShiftPose`,
:class:`CBAMSpatialEfficientTemporal`, :class:`SpatialTemporalAttention`,
:class:`I3DHead`, :class:`EPAMBackbone`, :class:`RGBPoseAttentionActionRecognizer`,
:class:`SingleStreamRecognizer`, :func:`build_reference`, :func:`init_weights_`,
:func:`randomize_`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTENTION_TYPES",
    "BN_EPS",
    "BN_MOMENTUM",
    "ATTENTION_BN_MOMENTUM",
    "temporal_shift",
    "round_width",
    "ConvModule",
    "SEModule",
    "BlockX3D",
    "X3DTemporalShift",
    "X3DTemporalShiftPose",
    "CBAMSpatialEfficientTemporal",
    "SpatialTemporalAttention",
    "build_attention",
    "I3DHead",
    "EPAMBackbone",
    "RGBPoseAttentionActionRecognizer",
    "SingleStreamRecognizer",
    "build_reference",
    "init_weights_",
    "randomize_",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch
ATTENTION_BN_MOMENTUM = 0.01  # only the CBAM spatial BatchNorm
ATTENTION_TYPES = ("CBAM_spatial_efficient_temporal", "spatial_temporal")

_Triple = int | tuple[int, int, int]
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# --------------------------------------------------------------------------- helpers


def temporal_shift(x: Tensor, fold_div: int) -> Tensor:
    """Zero-filled temporal shift of a (N, C, T, H, W) tensor.

    With ``fold = C // fold_div``: channels ``[0, fold)`` take frame ``t + 1`` (the last
    frame becomes 0), channels ``[fold, 2 * fold)`` take frame ``t - 1`` (the first frame
    becomes 0), the remaining channels are unchanged. This is the only temporal mixing
    inside the 1xkxk convolutional blocks.
    """
    if x.dim() != 5:
        raise ValueError(f"temporal_shift expects (N, C, T, H, W), got shape {tuple(x.shape)}")
    n, c, t, h, w = x.shape
    fold = c // fold_div
    if fold == 0:
        return x
    zeros = x.new_zeros(n, fold, 1, h, w)
    future = torch.cat([x[:, :fold, 1:], zeros], dim=2)  # value of frame t+1
    past = torch.cat([zeros, x[:, fold : 2 * fold, : t - 1]], dim=2)  # value of frame t-1
    return torch.cat([future, past, x[:, 2 * fold :]], dim=1)


def round_width(width: float, multiplier: float = 1.0, min_width: int = 8, divisor: int = 8) -> int:
    """X3D channel rounding: nearest multiple of ``divisor`` (at least ``min_width``),
    bumped by one ``divisor`` when rounding lost more than 10 %."""
    width *= multiplier
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def _triple(v: _Triple) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


# --------------------------------------------------------------------------- layers


class ConvModule(nn.Module):
    """mmcv ``ConvModule`` equivalent: ``conv`` (Conv3d) -> ``bn`` (BatchNorm3d) -> ReLU?

    Keeps the child names ``conv`` and ``bn`` so keys read e.g. ``conv1.conv.weight``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _Triple,
        stride: _Triple = 1,
        padding: _Triple = 0,
        groups: int = 1,
        bias: bool = False,
        act: bool = True,
        bn_momentum: float = BN_MOMENTUM,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=_triple(kernel_size),
            stride=_triple(stride),
            padding=_triple(padding),
            groups=groups,
            bias=bias,
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=bn_momentum)
        self.act = nn.ReLU(inplace=False) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class SEModule(nn.Module):
    """Squeeze-and-excitation over (T, H, W): mean -> fc1 -> ReLU -> fc2 -> sigmoid -> scale.

    ``fc1``/``fc2`` are 1x1x1 Conv3d with bias (the original's layout), bottleneck width
    ``round_width(channels * reduction)`` (54->8, 108->8, 216->16, 432->32).
    """

    def __init__(self, channels: int, reduction: float = 1.0 / 16) -> None:
        super().__init__()
        self.bottleneck = round_width(channels, reduction)
        self.fc1 = nn.Conv3d(channels, self.bottleneck, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.fc2 = nn.Conv3d(self.bottleneck, channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        s = torch.sigmoid(self.fc2(self.relu(self.fc1(s))))
        return x * s


class BlockX3D(nn.Module):
    """X3D bottleneck block with a temporal shift on its input.

    ``x -> shift -> conv1 (1x1x1, BN, ReLU) -> conv2 (depthwise 1x3x3, BN) -> [SE] -> swish
    -> conv3 (1x1x1, BN)``; the residual path uses the *unshifted* input, through
    ``downsample`` when present; output ``ReLU(out + identity)``.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        outplanes: int,
        spatial_stride: int = 1,
        downsample: nn.Module | None = None,
        se_ratio: float | None = None,
        fold_div: int = 8,
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.planes = planes
        self.outplanes = outplanes
        self.spatial_stride = spatial_stride
        self.fold_div = fold_div
        self.conv1 = ConvModule(inplanes, planes, kernel_size=1, act=True)
        self.conv2 = ConvModule(
            planes,
            planes,
            kernel_size=(1, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            padding=(0, 1, 1),
            groups=planes,
            act=False,
        )
        self.se_module = SEModule(planes, se_ratio) if se_ratio is not None else None
        self.conv3 = ConvModule(planes, outplanes, kernel_size=1, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(temporal_shift(x, self.fold_div))
        out = self.conv2(out)
        if self.se_module is not None:
            out = self.se_module(out)
        out = out * torch.sigmoid(out)  # swish
        out = self.conv3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class _X3DShiftStream(nn.Module):
    """Shared body of both streams: ``conv1_s`` stem, ``layer1..layerK``, ``conv5``."""

    def __init__(
        self,
        in_channels: int,
        stem_stride: int,
        stage_blocks: Sequence[int],
        stage_widths: Sequence[int],
        out_channels: int,
        fold_div: int,
        gamma_b: float = 2.25,
        se_ratio: float = 1.0 / 16,
        se_style: str = "half",
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(stage_blocks) != len(stage_widths):
            raise ValueError("stage_blocks and stage_widths must have the same length")
        self.in_channels = in_channels
        self.stage_blocks = tuple(int(b) for b in stage_blocks)
        self.stage_widths = tuple(int(w) for w in stage_widths)
        self.fold_div = fold_div
        self.out_channels = out_channels
        self.zero_init_residual = zero_init_residual
        base = self.stage_widths[0]
        self.conv1_s = ConvModule(
            in_channels,
            base,
            kernel_size=(1, 3, 3),
            stride=(1, stem_stride, stem_stride),
            padding=(0, 1, 1),
            act=True,
        )
        self.res_layers: list[str] = []
        inplanes = base
        for i, (nblocks, width) in enumerate(
            zip(self.stage_blocks, self.stage_widths, strict=True)
        ):
            planes = int(width * gamma_b)
            blocks: list[nn.Module] = []
            for j in range(nblocks):
                stride = 2 if j == 0 else 1
                cin = inplanes if j == 0 else width
                downsample = None
                if j == 0 and (stride != 1 or cin != width):
                    downsample = ConvModule(
                        cin, width, kernel_size=1, stride=(1, stride, stride), act=False
                    )
                use_se = se_style == "all" or (se_style == "half" and j % 2 == 0)
                blocks.append(
                    BlockX3D(
                        cin,
                        planes,
                        width,
                        spatial_stride=stride,
                        downsample=downsample,
                        se_ratio=se_ratio if use_se else None,
                        fold_div=fold_div,
                    )
                )
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.res_layers.append(name)
            inplanes = width
        self.conv5 = ConvModule(inplanes, out_channels, kernel_size=1, act=True)
        init_weights_(self, zero_init_residual=zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1_s(x)
        for name in self.res_layers:
            x = getattr(self, name)(x)
        return self.conv5(x)


class X3DTemporalShift(_X3DShiftStream):
    """RGB stream: 3 -> (N, 432, T, H/32, W/32); stem stride (1, 2, 2), four stages with
    blocks (3, 5, 11, 7) and widths (24, 48, 96, 192), ``conv5`` 192 -> 432, fold_div 8."""

    def __init__(
        self,
        in_channels: int = 3,
        stage_blocks: Sequence[int] = (3, 5, 11, 7),
        stage_widths: Sequence[int] = (24, 48, 96, 192),
        out_channels: int = 432,
        fold_div: int = 8,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            stem_stride=2,
            stage_blocks=stage_blocks,
            stage_widths=stage_widths,
            out_channels=out_channels,
            fold_div=fold_div,
            zero_init_residual=zero_init_residual,
        )


class X3DTemporalShiftPose(_X3DShiftStream):
    """Pose stream: 17 heatmap channels -> (N, 216, T, H/8, W/8); stem stride 1, three
    stages with blocks (5, 11, 7) and widths (24, 48, 96), ``conv5`` 96 -> 216, fold_div 4."""

    def __init__(
        self,
        in_channels: int = 17,
        stage_blocks: Sequence[int] = (5, 11, 7),
        stage_widths: Sequence[int] = (24, 48, 96),
        out_channels: int = 216,
        fold_div: int = 4,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            stem_stride=1,
            stage_blocks=stage_blocks,
            stage_widths=stage_widths,
            out_channels=out_channels,
            fold_div=fold_div,
            zero_init_residual=zero_init_residual,
        )


# --------------------------------------------------------------------------- attention


class CBAMSpatialEfficientTemporal(nn.Module):
    """The paper's attention ('nested'): CBAM spatial map times an ECA-style temporal map.

    Input: pose features already aligned to RGB time, (N, C, T, H, W). Output: the
    attention map (N, 1, T, H, W) = sigmoid(BN(conv7x7([max_c, mean_c]))) times
    sigmoid(conv1d_k7(mean_hw(spatial))).
    """

    def __init__(self, kernel_size: int = 7, temporal_kernel_size: int = 7) -> None:
        super().__init__()
        self.spatial = ConvModule(
            2,
            1,
            kernel_size=(1, kernel_size, kernel_size),
            padding=(0, kernel_size // 2, kernel_size // 2),
            act=False,
            bn_momentum=ATTENTION_BN_MOMENTUM,
        )
        self.conv_temporal_attention = nn.Conv1d(
            1, 1, kernel_size=temporal_kernel_size, padding=temporal_kernel_size // 2, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, _, _ = x.shape
        compressed = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        spatial = torch.sigmoid(self.spatial(compressed))  # (N, 1, T, H, W)
        pooled = spatial.mean(dim=(3, 4))  # (N, 1, T)
        temporal = torch.sigmoid(self.conv_temporal_attention(pooled)).view(n, 1, t, 1, 1)
        return spatial * temporal


class SpatialTemporalAttention(nn.Module):
    """The 'spatial_temporal' attention: channel-compressing conv + 7x7 conv for space,
    two bias-free Linear(T, T) layers for time (so it fixes T_rgb, 16 by default).

    Input (N, C, T, H, W) aligned pose features; output (N, 1, T, H, W).
    """

    def __init__(self, in_channels: int = 216, num_frames: int = 16) -> None:
        super().__init__()
        self.num_frames = num_frames
        # ``sptial`` (sic) reproduces the original parameter names.
        self.conv_ch_compress = nn.Conv3d(
            in_channels, 1, kernel_size=(1, 3, 3), padding=(0, 1, 1), bias=True
        )
        self.relu = nn.ReLU(inplace=False)
        self.conv_sptial_attention = nn.Conv3d(
            1, 1, kernel_size=(1, 7, 7), padding=(0, 3, 3), bias=True
        )
        self.fc1 = nn.Linear(num_frames, num_frames, bias=False)
        self.fc2 = nn.Linear(num_frames, num_frames, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, _, t, _, _ = x.shape
        if t != self.num_frames:
            raise ValueError(
                f"spatial_temporal attention is built for T={self.num_frames}, got {t}"
            )
        spatial = self.relu(self.conv_ch_compress(x))
        spatial = torch.sigmoid(self.conv_sptial_attention(spatial))  # (N, 1, T, H, W)
        pooled = spatial.mean(dim=(3, 4)).view(n, t)
        temporal = torch.sigmoid(self.fc2(self.relu(self.fc1(pooled)))).view(n, 1, t, 1, 1)
        return spatial * temporal


def build_attention(
    attention_type: str, pose_channels: int = 216, num_frames: int = 16
) -> nn.Module:
    """Attention module by its original name (``ATTENTION_TYPES``), initialised per spec."""
    if attention_type == "CBAM_spatial_efficient_temporal":
        module: nn.Module = CBAMSpatialEfficientTemporal()
    elif attention_type == "spatial_temporal":
        module = SpatialTemporalAttention(pose_channels, num_frames)
    else:
        raise ValueError(
            f"unknown attention_type {attention_type!r}; expected one of {ATTENTION_TYPES}"
        )
    return init_weights_(module, zero_init_residual=False)


# --------------------------------------------------------------------------- heads / models


class I3DHead(nn.Module):
    """mmaction ``I3DHead``: global average pool over (T, H, W) -> dropout -> ``fc_cls``."""

    def __init__(self, num_classes: int, in_channels: int, dropout_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.dropout = nn.Dropout(p=dropout_ratio) if dropout_ratio > 0 else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        init_weights_(self, zero_init_residual=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool3d(x, 1).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc_cls(x)


def _align_pose(rgb_feats: Tensor, pose_feats: Tensor) -> Tensor:
    """Select the pose frames matching RGB time: every ``T_pose // T_rgb``-th frame,
    truncated to ``T_rgb`` frames (``0:48:3`` for the default clip)."""
    t_rgb, t_pose = rgb_feats.shape[2], pose_feats.shape[2]
    stride = t_pose // t_rgb
    if stride < 1:
        raise ValueError(f"pose clip ({t_pose} frames) is shorter than the RGB clip ({t_rgb})")
    aligned = pose_feats[:, :, ::stride][:, :, :t_rgb]
    if aligned.shape[3:] != rgb_feats.shape[3:]:
        raise ValueError(
            "RGB and pose feature maps differ spatially "
            f"({tuple(rgb_feats.shape[3:])} vs {tuple(aligned.shape[3:])}); RGB H/32 must "
            "equal pose H/8"
        )
    return aligned


class EPAMBackbone(nn.Module):
    """The standalone two-stream backbone (the seed's ``EPAMBackbone``).

    ``forward(rgb, pose, return_attention=False)`` returns ``(fused_rgb, pose_feats)``
    (or only ``fused_rgb`` when ``return_both_streams=False``), plus the attention map as
    the last element when ``return_attention``. ``fusion='multiply'`` gives ``rgb * att``
    (the seed), ``'residual'`` gives ``rgb + rgb * att`` (what the full network's RGB head
    sees). ``num_classes`` is accepted for signature compatibility; it changes nothing.
    """

    def __init__(
        self,
        num_classes: int = 60,
        attention_type: str = "CBAM_spatial_efficient_temporal",
        fusion: str = "multiply",
        return_both_streams: bool = True,
    ) -> None:
        super().__init__()
        if fusion not in ("multiply", "residual"):
            raise ValueError(f"fusion must be 'multiply' or 'residual', got {fusion!r}")
        self.num_classes = num_classes
        self.attention_type = attention_type
        self.fusion = fusion
        self.return_both_streams = return_both_streams
        self.rgb_backbone = X3DTemporalShift()
        self.pose_backbone = X3DTemporalShiftPose()
        self.attention_module = build_attention(attention_type, self.pose_backbone.out_channels)

    def forward(
        self, rgb: Tensor, pose: Tensor, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, ...]:
        rgb_feats = self.rgb_backbone(rgb)
        pose_feats = self.pose_backbone(pose)
        att = self.attention_module(_align_pose(rgb_feats, pose_feats))
        weighted = rgb_feats * att
        fused = weighted if self.fusion == "multiply" else rgb_feats + weighted
        outs: tuple[Tensor, ...] = (fused, pose_feats) if self.return_both_streams else (fused,)
        if return_attention:
            outs = outs + (att,)
        return outs if len(outs) > 1 else outs[0]


class RGBPoseAttentionActionRecognizer(nn.Module):
    """The full official network: two streams, pose-guided attention, two I3D heads.

    ``forward(rgb, pose) -> (rgb_logits, pose_logits)``; the RGB head sees
    ``rgb + rgb * att``. The prediction is ``rgb_logits + pose_logits``.
    """

    def __init__(
        self,
        num_classes: int = 60,
        attention_type: str = "CBAM_spatial_efficient_temporal",
        dropout_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.attention_type = attention_type
        self.rgb_backbone = X3DTemporalShift()
        self.pose_backbone = X3DTemporalShiftPose()
        self.attention_module = build_attention(attention_type, self.pose_backbone.out_channels)
        self.rgb_cls_head = I3DHead(num_classes, self.rgb_backbone.out_channels, dropout_ratio)
        self.pose_cls_head = I3DHead(num_classes, self.pose_backbone.out_channels, dropout_ratio)

    def extract_feats(self, rgb: Tensor, pose: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(rgb_feats, pose_feats, attention)`` before fusion."""
        rgb_feats = self.rgb_backbone(rgb)
        pose_feats = self.pose_backbone(pose)
        att = self.attention_module(_align_pose(rgb_feats, pose_feats))
        return rgb_feats, pose_feats, att

    def forward(self, rgb: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        rgb_feats, pose_feats, att = self.extract_feats(rgb, pose)
        rgb_logits = self.rgb_cls_head(rgb_feats + rgb_feats * att)
        pose_logits = self.pose_cls_head(pose_feats)
        return rgb_logits, pose_logits


class SingleStreamRecognizer(nn.Module):
    """mmaction ``Recognizer3D``-style single stream (the pretrained-checkpoint format):
    children ``backbone`` and ``cls_head`` so keys read ``backbone.*``, ``cls_head.fc_cls.*``."""

    def __init__(
        self, stream: str = "rgb", num_classes: int = 60, dropout_ratio: float = 0.5
    ) -> None:
        super().__init__()
        if stream == "rgb":
            self.backbone: _X3DShiftStream = X3DTemporalShift()
        elif stream == "pose":
            self.backbone = X3DTemporalShiftPose()
        else:
            raise ValueError(f"stream must be 'rgb' or 'pose', got {stream!r}")
        self.stream = stream
        self.num_classes = num_classes
        self.cls_head = I3DHead(num_classes, self.backbone.out_channels, dropout_ratio)

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_head(self.backbone(x))


def build_reference(
    model: str = "epam",
    num_classes: int = 60,
    attention_type: str = "CBAM_spatial_efficient_temporal",
    **kw: Any,
) -> nn.Module:
    """Build a reference module: ``'epam'`` (full recognizer), ``'backbone'``
    (:class:`EPAMBackbone`), ``'rgb'`` / ``'pose'`` (:class:`SingleStreamRecognizer`).

    Extra keywords go to the chosen constructor (``dropout_ratio``, ``fusion``,
    ``return_both_streams``); ``attention_type`` is ignored for single streams.
    """
    if model == "epam":
        return RGBPoseAttentionActionRecognizer(num_classes, attention_type, **kw)
    if model == "backbone":
        return EPAMBackbone(num_classes, attention_type, **kw)
    if model in ("rgb", "pose"):
        return SingleStreamRecognizer(model, num_classes, **kw)
    raise ValueError(f"unknown model {model!r}; expected 'epam', 'backbone', 'rgb' or 'pose'")


# --------------------------------------------------------------------------- init


def init_weights_(module: nn.Module, zero_init_residual: bool = True) -> nn.Module:
    """Original initialisation, in place: Conv3d/Conv1d kaiming normal (fan_out, ReLU),
    bias 0; BatchNorm weight 1, bias 0; Linear normal(0, 0.01), bias 0; then (when
    ``zero_init_residual``) every ``BlockX3D``'s ``conv3.bn.weight`` = 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv3d, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _BN_TYPES):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in module.modules():
                if isinstance(m, BlockX3D):
                    nn.init.zeros_(m.conv3.bn.weight)
    return module


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BN buffer with seeded random values (for parity tests).

    Convs/Linears get fan-in scaled normal weights (unit-gain, so activations stay O(1)
    through all residual blocks), biases small normals; BatchNorms get weight ~ 1 + N(0,
    0.1^2), bias ~ N(0, 0.1^2), running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 1.5);
    residual gammas (``conv3.bn.weight``) are non-zero, ~ +-U(0.1, 0.4) so the residual
    branches are exercised without blowing up. Deterministic in ``seed``; modules are
    visited in ``named_modules`` order and the global RNG is left untouched.
    """
    g = torch.Generator().manual_seed(int(seed))

    def normal(t: Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).mul_(std).add_(mean))

    def uniform(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64).mul_(hi - lo).add_(lo))

    residual_bns = {id(m.conv3.bn) for m in module.modules() if isinstance(m, BlockX3D)}
    with torch.no_grad():
        for _, m in module.named_modules():
            if isinstance(m, (nn.Conv3d, nn.Conv1d, nn.Linear)):
                fan_in = m.weight[0].numel()
                normal(m.weight, 1.0 / math.sqrt(fan_in))
                if m.bias is not None:
                    normal(m.bias, 0.1)
            elif isinstance(m, _BN_TYPES):
                if id(m) in residual_bns:
                    uniform(m.weight, 0.1, 0.4)
                    sign = torch.randint(0, 2, m.weight.shape, generator=g) * 2 - 1
                    m.weight.mul_(sign.to(m.weight.dtype))
                else:
                    normal(m.weight, 0.1, mean=1.0)
                normal(m.bias, 0.1)
                if m.running_mean is not None and m.running_var is not None:
                    normal(m.running_mean, 0.1)
                    uniform(m.running_var, 0.5, 1.5)
    return module
