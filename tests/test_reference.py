"""Tests of the pure-PyTorch EPAM-Net reference (``converters.reference``).

They pin what converters and parity tests rely on: the original state-dict key names and
shapes (spec sec. 5), parameter counts, output shapes, temporal shift semantics, the
original initialisation and the determinism of ``randomize_``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from converters import reference as ref  # noqa: E402

RGB_BLOCKS = (3, 5, 11, 7)
POSE_BLOCKS = (5, 11, 7)
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Run single-threaded: on small shared CPUs torch's intra-op pool is ~10x slower
    than one thread for these many small depthwise convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def epam() -> torch.nn.Module:
    torch.manual_seed(0)
    return ref.build_reference("epam").eval()


@pytest.fixture(scope="module")
def epam_sd(epam: torch.nn.Module) -> dict[str, torch.Tensor]:
    return epam.state_dict()


# --------------------------------------------------------------------------- temporal shift


def test_temporal_shift_hand_example() -> None:
    # C=4, T=3, fold_div=4 -> fold=1: ch0 takes t+1, ch1 takes t-1, ch2/3 unchanged.
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]).view(
        1, 4, 3, 1, 1
    )
    expected = torch.tensor(
        [[2.0, 3.0, 0.0], [0.0, 4.0, 5.0], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]
    ).view(1, 4, 3, 1, 1)
    assert torch.equal(ref.temporal_shift(x, 4), expected)


def test_temporal_shift_fold_blocks() -> None:
    # C=8, fold_div=4 -> fold=2: channels 0-1 shift left, 2-3 shift right, 4-7 unchanged.
    x = torch.arange(1, 8 * 4 * 2 * 2 + 1, dtype=torch.float32).view(1, 8, 4, 2, 2)
    y = ref.temporal_shift(x, 4)
    assert y.shape == x.shape
    assert torch.equal(y[:, 0:2, 0:3], x[:, 0:2, 1:4])
    assert torch.equal(y[:, 0:2, 3], torch.zeros_like(y[:, 0:2, 3]))
    assert torch.equal(y[:, 2:4, 1:4], x[:, 2:4, 0:3])
    assert torch.equal(y[:, 2:4, 0], torch.zeros_like(y[:, 2:4, 0]))
    assert torch.equal(y[:, 4:], x[:, 4:])
    # fold = C // fold_div rounds down: C=17, fold_div=8 -> fold=2.
    z = torch.randn(2, 17, 5, 3, 3)
    w = ref.temporal_shift(z, 8)
    assert torch.equal(w[:, 4:], z[:, 4:])
    assert torch.equal(w[:, 0:2, :4], z[:, 0:2, 1:])
    assert torch.equal(w[:, 2:4, 1:], z[:, 2:4, :4])


def test_temporal_shift_single_frame_zeroes_shifted_channels() -> None:
    x = torch.ones(1, 8, 1, 2, 2)
    y = ref.temporal_shift(x, 8)
    assert torch.equal(y[:, :2], torch.zeros(1, 2, 1, 2, 2))
    assert torch.equal(y[:, 2:], x[:, 2:])


def test_round_width_se_bottlenecks() -> None:
    assert [ref.round_width(p, 1 / 16) for p in (54, 108, 216, 432)] == [8, 8, 16, 32]


# --------------------------------------------------------------------------- state dict


def test_state_dict_entry_count(epam_sd: dict[str, torch.Tensor]) -> None:
    assert len(epam_sd) == 1071
    prefixes = {k.split(".", 1)[0] for k in epam_sd}
    assert prefixes == {
        "rgb_backbone",
        "pose_backbone",
        "attention_module",
        "rgb_cls_head",
        "pose_cls_head",
    }
    backbone = ref.build_reference("backbone")
    assert len(backbone.state_dict()) == 1071 - 4
    assert set(backbone.state_dict()) == {k for k in epam_sd if "cls_head" not in k}


def test_state_dict_key_shapes(epam_sd: dict[str, torch.Tensor]) -> None:
    expected: dict[str, tuple[int, ...]] = {
        # RGB stem and a few blocks
        "rgb_backbone.conv1_s.conv.weight": (24, 3, 1, 3, 3),
        "rgb_backbone.conv1_s.bn.weight": (24,),
        "rgb_backbone.conv1_s.bn.running_var": (24,),
        "rgb_backbone.conv1_s.bn.num_batches_tracked": (),
        "rgb_backbone.layer1.0.conv1.conv.weight": (54, 24, 1, 1, 1),
        "rgb_backbone.layer1.0.conv2.conv.weight": (54, 1, 1, 3, 3),
        "rgb_backbone.layer1.0.conv2.bn.running_mean": (54,),
        "rgb_backbone.layer1.0.se_module.fc1.weight": (8, 54, 1, 1, 1),
        "rgb_backbone.layer1.0.se_module.fc1.bias": (8,),
        "rgb_backbone.layer1.0.se_module.fc2.weight": (54, 8, 1, 1, 1),
        "rgb_backbone.layer1.0.se_module.fc2.bias": (54,),
        "rgb_backbone.layer1.0.conv3.conv.weight": (24, 54, 1, 1, 1),
        "rgb_backbone.layer1.0.downsample.conv.weight": (24, 24, 1, 1, 1),
        "rgb_backbone.layer1.0.downsample.bn.bias": (24,),
        "rgb_backbone.layer1.2.conv1.conv.weight": (54, 24, 1, 1, 1),
        "rgb_backbone.layer2.0.conv1.conv.weight": (108, 24, 1, 1, 1),
        "rgb_backbone.layer2.0.downsample.conv.weight": (48, 24, 1, 1, 1),
        "rgb_backbone.layer2.4.se_module.fc1.weight": (8, 108, 1, 1, 1),
        "rgb_backbone.layer2.4.conv3.conv.weight": (48, 108, 1, 1, 1),
        "rgb_backbone.layer3.0.conv1.conv.weight": (216, 48, 1, 1, 1),
        "rgb_backbone.layer3.0.downsample.conv.weight": (96, 48, 1, 1, 1),
        "rgb_backbone.layer3.10.conv2.conv.weight": (216, 1, 1, 3, 3),
        "rgb_backbone.layer3.10.se_module.fc1.weight": (16, 216, 1, 1, 1),
        "rgb_backbone.layer3.10.se_module.fc2.weight": (216, 16, 1, 1, 1),
        "rgb_backbone.layer4.0.conv1.conv.weight": (432, 96, 1, 1, 1),
        "rgb_backbone.layer4.0.downsample.conv.weight": (192, 96, 1, 1, 1),
        "rgb_backbone.layer4.6.se_module.fc1.weight": (32, 432, 1, 1, 1),
        "rgb_backbone.layer4.6.se_module.fc2.bias": (432,),
        "rgb_backbone.layer4.6.conv3.conv.weight": (192, 432, 1, 1, 1),
        "rgb_backbone.layer4.6.conv3.bn.weight": (192,),
        "rgb_backbone.conv5.conv.weight": (432, 192, 1, 1, 1),
        "rgb_backbone.conv5.bn.running_var": (432,),
        # pose stream
        "pose_backbone.conv1_s.conv.weight": (24, 17, 1, 3, 3),
        "pose_backbone.layer1.0.conv1.conv.weight": (54, 24, 1, 1, 1),
        "pose_backbone.layer1.0.downsample.conv.weight": (24, 24, 1, 1, 1),
        "pose_backbone.layer1.4.se_module.fc1.weight": (8, 54, 1, 1, 1),
        "pose_backbone.layer2.0.downsample.conv.weight": (48, 24, 1, 1, 1),
        "pose_backbone.layer2.10.conv2.conv.weight": (108, 1, 1, 3, 3),
        "pose_backbone.layer2.10.se_module.fc1.weight": (8, 108, 1, 1, 1),
        "pose_backbone.layer3.0.downsample.conv.weight": (96, 48, 1, 1, 1),
        "pose_backbone.layer3.6.se_module.fc1.weight": (16, 216, 1, 1, 1),
        "pose_backbone.layer3.6.conv3.conv.weight": (96, 216, 1, 1, 1),
        "pose_backbone.conv5.conv.weight": (216, 96, 1, 1, 1),
        "pose_backbone.conv5.bn.num_batches_tracked": (),
        # attention and heads
        "attention_module.spatial.conv.weight": (1, 2, 1, 7, 7),
        "attention_module.spatial.bn.weight": (1,),
        "attention_module.spatial.bn.bias": (1,),
        "attention_module.spatial.bn.running_mean": (1,),
        "attention_module.spatial.bn.running_var": (1,),
        "attention_module.spatial.bn.num_batches_tracked": (),
        "attention_module.conv_temporal_attention.weight": (1, 1, 7),
        "rgb_cls_head.fc_cls.weight": (60, 432),
        "rgb_cls_head.fc_cls.bias": (60,),
        "pose_cls_head.fc_cls.weight": (60, 216),
        "pose_cls_head.fc_cls.bias": (60,),
    }
    for key, shape in expected.items():
        assert key in epam_sd, key
        assert tuple(epam_sd[key].shape) == shape, (key, tuple(epam_sd[key].shape), shape)
    attention_keys = {k for k in epam_sd if k.startswith("attention_module.")}
    assert attention_keys == {k for k in expected if k.startswith("attention_module.")}
    assert not any(k.endswith("conv.bias") for k in epam_sd)  # convs in the streams: no bias
    assert "rgb_backbone.layer5.0.conv1.conv.weight" not in epam_sd
    assert "pose_backbone.layer4.0.conv1.conv.weight" not in epam_sd


@pytest.mark.parametrize(
    ("stream", "blocks", "widths"),
    [("rgb_backbone", RGB_BLOCKS, (24, 48, 96, 192)), ("pose_backbone", POSE_BLOCKS, (24, 48, 96))],
)
def test_block_structure(
    epam_sd: dict[str, torch.Tensor],
    stream: str,
    blocks: tuple[int, ...],
    widths: tuple[int, ...],
) -> None:
    for i, (nblocks, width) in enumerate(zip(blocks, widths, strict=True), start=1):
        planes = int(width * 2.25)
        assert f"{stream}.layer{i}.{nblocks}.conv1.conv.weight" not in epam_sd
        for j in range(nblocks):
            p = f"{stream}.layer{i}.{j}"
            for conv in ("conv1", "conv2", "conv3"):
                assert f"{p}.{conv}.conv.weight" in epam_sd
                for s in BN_SUFFIXES:
                    assert f"{p}.{conv}.bn.{s}" in epam_sd
            assert tuple(epam_sd[f"{p}.conv2.conv.weight"].shape) == (planes, 1, 1, 3, 3)
            assert tuple(epam_sd[f"{p}.conv3.conv.weight"].shape) == (width, planes, 1, 1, 1)
            has_se = any(k.startswith(f"{p}.se_module.") for k in epam_sd)
            assert has_se == (j % 2 == 0), p
            if has_se:
                b = ref.round_width(planes, 1 / 16)
                assert tuple(epam_sd[f"{p}.se_module.fc1.weight"].shape) == (b, planes, 1, 1, 1)
            has_ds = any(k.startswith(f"{p}.downsample.") for k in epam_sd)
            assert has_ds == (j == 0), p
            if has_ds:
                assert {k[len(p) + 1 :] for k in epam_sd if k.startswith(f"{p}.downsample.")} == {
                    "downsample.conv.weight",
                    *(f"downsample.bn.{s}" for s in BN_SUFFIXES),
                }


def test_strides_and_bn_settings(epam: torch.nn.Module) -> None:
    rgb, pose = epam.rgb_backbone, epam.pose_backbone
    assert rgb.conv1_s.conv.stride == (1, 2, 2)
    assert pose.conv1_s.conv.stride == (1, 1, 1)
    assert rgb.fold_div == 8 and pose.fold_div == 4
    for stream in (rgb, pose):
        for name in stream.res_layers:
            layer = getattr(stream, name)
            assert layer[0].conv2.conv.stride == (1, 2, 2)
            assert layer[0].downsample.conv.stride == (1, 2, 2)
            assert layer[0].conv2.conv.groups == layer[0].planes
            assert all(b.conv2.conv.stride == (1, 1, 1) for b in list(layer)[1:])
    for name, m in epam.named_modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            assert m.eps == 1e-5
            assert m.momentum == (0.01 if name == "attention_module.spatial.bn" else 0.1), name


def test_single_stream_checkpoint_format(epam_sd: dict[str, torch.Tensor]) -> None:
    for stream, cin in (("rgb", 432), ("pose", 216)):
        model = ref.build_reference(stream)
        sd = model.state_dict()
        assert {k.split(".", 1)[0] for k in sd} == {"backbone", "cls_head"}
        assert tuple(sd["cls_head.fc_cls.weight"].shape) == (60, cin)
        assert tuple(sd["cls_head.fc_cls.bias"].shape) == (60,)
        # The full model's stream loads strictly into the single-stream backbone.
        prefix = f"{stream}_backbone."
        stream_sd = {k[len(prefix) :]: v for k, v in epam_sd.items() if k.startswith(prefix)}
        model.backbone.load_state_dict(stream_sd, strict=True)
        assert set(stream_sd) == {k[len("backbone.") :] for k in sd if k.startswith("backbone.")}


# --------------------------------------------------------------------------- parameter counts


def test_parameter_counts(epam: torch.nn.Module) -> None:
    assert _count(epam.rgb_backbone) == 1_980_030
    assert _count(epam.pose_backbone) == 519_580
    assert _count(epam.attention_module) == 107
    assert _count(epam.rgb_cls_head) + _count(epam.pose_cls_head) == 39_000
    assert _count(epam) == 2_538_717
    assert _count(ref.build_reference("backbone")) == 2_538_717 - 39_000
    assert _count(ref.build_reference("rgb")) == 1_980_030 + 432 * 60 + 60
    assert _count(ref.build_reference("pose")) == 519_580 + 216 * 60 + 60


def test_spatial_temporal_attention() -> None:
    model = ref.build_reference("epam", attention_type="spatial_temporal")
    sd = model.state_dict()
    att = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("attention_module.")}
    assert att == {
        "attention_module.conv_ch_compress.weight": (1, 216, 1, 3, 3),
        "attention_module.conv_ch_compress.bias": (1,),
        "attention_module.conv_sptial_attention.weight": (1, 1, 1, 7, 7),
        "attention_module.conv_sptial_attention.bias": (1,),
        "attention_module.fc1.weight": (16, 16),
        "attention_module.fc2.weight": (16, 16),
    }
    assert _count(model.attention_module) == 1945 + 50 + 256 + 256
    module = model.attention_module
    with torch.no_grad():
        out = module(torch.randn(2, 216, 16, 7, 7))
        assert out.shape == (2, 1, 16, 7, 7)
        assert bool(((out > 0) & (out < 1)).all())
        with pytest.raises(ValueError):
            module(torch.randn(1, 216, 8, 7, 7))


# --------------------------------------------------------------------------- forward shapes


def test_full_size_forward_shapes(epam: torch.nn.Module) -> None:
    backbone = ref.build_reference("backbone").eval()
    backbone.load_state_dict(
        {k: v for k, v in epam.state_dict().items() if "cls_head" not in k}, strict=True
    )
    rgb = torch.randn(1, 3, 16, 224, 224)
    pose = torch.rand(1, 17, 48, 56, 56)
    with torch.no_grad():
        fused, pose_feats, att = backbone(rgb, pose, return_attention=True)
        assert fused.shape == (1, 432, 16, 7, 7)
        assert pose_feats.shape == (1, 216, 48, 7, 7)
        assert att.shape == (1, 1, 16, 7, 7)
        rgb_logits, pose_logits = epam(rgb, pose)
    assert rgb_logits.shape == (1, 60) and pose_logits.shape == (1, 60)
    assert torch.isfinite(fused).all() and torch.isfinite(rgb_logits).all()


def test_small_forward_fusions_and_heads() -> None:
    """112x112 RGB with 28x28 pose: both streams end at 4x4 (RGB /32, pose /8)."""
    torch.manual_seed(1)
    model = ref.randomize_(ref.build_reference("epam"), seed=3).eval()
    backbone = ref.build_reference("backbone", fusion="multiply")
    backbone.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "cls_head" not in k}, strict=True
    )
    backbone.eval()
    rgb = torch.randn(2, 3, 8, 112, 112)
    pose = torch.rand(2, 17, 24, 28, 28)
    with torch.no_grad():
        rgb_feats = model.rgb_backbone(rgb)
        pose_feats = model.pose_backbone(pose)
        assert rgb_feats.shape == (2, 432, 8, 4, 4)
        assert pose_feats.shape == (2, 216, 24, 4, 4)
        att = model.attention_module(pose_feats[:, :, 0:24:3])
        assert att.shape == (2, 1, 8, 4, 4)

        fused, pose_out, att_out = backbone(rgb, pose, return_attention=True)
        torch.testing.assert_close(att_out, att)
        torch.testing.assert_close(fused, rgb_feats * att)
        torch.testing.assert_close(pose_out, pose_feats)

        backbone.fusion = "residual"
        fused_res, _ = backbone(rgb, pose)
        torch.testing.assert_close(fused_res, rgb_feats + rgb_feats * att)

        backbone.return_both_streams = False
        only = backbone(rgb, pose)
        assert isinstance(only, torch.Tensor) and only.shape == (2, 432, 8, 4, 4)
        only, att_only = backbone(rgb, pose, return_attention=True)
        torch.testing.assert_close(att_only, att)

        rgb_logits, pose_logits = model(rgb, pose)
        pooled = (rgb_feats + rgb_feats * att).mean(dim=(2, 3, 4))
        torch.testing.assert_close(rgb_logits, model.rgb_cls_head.fc_cls(pooled))
        torch.testing.assert_close(
            pose_logits, model.pose_cls_head.fc_cls(pose_feats.mean(dim=(2, 3, 4)))
        )

        single = ref.build_reference("rgb", num_classes=10).eval()
        assert single(rgb).shape == (2, 10)


def test_pose_alignment_stride() -> None:
    rgb = torch.zeros(1, 4, 16, 2, 2)
    for t_pose, expected in ((48, list(range(0, 48, 3))), (50, list(range(0, 48, 3)))):
        pose = (
            torch.arange(t_pose, dtype=torch.float32)
            .view(1, 1, t_pose, 1, 1)
            .expand(1, 3, t_pose, 2, 2)
        )
        aligned = ref._align_pose(rgb, pose)
        assert aligned[0, 0, :, 0, 0].tolist() == expected
    with pytest.raises(ValueError):
        ref._align_pose(rgb, torch.zeros(1, 3, 8, 2, 2))
    with pytest.raises(ValueError):
        ref._align_pose(rgb, torch.zeros(1, 3, 48, 3, 3))


def test_train_step_backward() -> None:
    model = ref.build_reference("epam")
    model.train()
    rgb = torch.randn(2, 3, 4, 64, 64)
    pose = torch.rand(2, 17, 12, 16, 16)
    rgb_logits, pose_logits = model(rgb, pose)
    loss = rgb_logits.logsumexp(1).mean() + pose_logits.logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert int(model.rgb_backbone.conv1_s.bn.num_batches_tracked) == 1


def test_build_reference_dispatch() -> None:
    assert isinstance(ref.build_reference("epam"), ref.RGBPoseAttentionActionRecognizer)
    assert isinstance(ref.build_reference("backbone"), ref.EPAMBackbone)
    assert ref.build_reference("pose").stream == "pose"
    assert isinstance(
        ref.build_reference("epam", attention_type="spatial_temporal").attention_module,
        ref.SpatialTemporalAttention,
    )
    assert ref.build_reference("epam", dropout_ratio=0.0).rgb_cls_head.dropout is None
    with pytest.raises(ValueError):
        ref.build_reference("x3d")
    with pytest.raises(ValueError):
        ref.build_reference("epam", attention_type="nope")
    with pytest.raises(ValueError):
        ref.build_reference("backbone", fusion="add")


# --------------------------------------------------------------------------- init / randomize


def _residual_gammas(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.conv3.bn.weight for m in model.modules() if isinstance(m, ref.BlockX3D)]


def test_original_init(epam: torch.nn.Module) -> None:
    gammas = _residual_gammas(epam)
    assert len(gammas) == sum(RGB_BLOCKS) + sum(POSE_BLOCKS)
    assert all(bool((g == 0).all()) for g in gammas)
    residual = {id(g) for g in gammas}
    for m in epam.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            if id(m.weight) not in residual:
                assert bool((m.weight == 1).all())
            assert bool((m.bias == 0).all())
            assert bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())
        elif isinstance(m, (torch.nn.Conv3d, torch.nn.Conv1d)) and m.bias is not None:
            assert bool((m.bias == 0).all())
    # kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * kernel volume)).
    w = epam.rgb_backbone.layer4[0].conv1.conv.weight
    assert abs(w.std().item() - (2 / 432) ** 0.5) < 0.1 * (2 / 432) ** 0.5
    w = epam.rgb_backbone.layer3[1].conv2.conv.weight
    assert abs(w.std().item() - (2 / (216 * 9)) ** 0.5) < 0.15 * (2 / (216 * 9)) ** 0.5
    fc = epam.rgb_cls_head.fc_cls
    assert abs(fc.weight.std().item() - 0.01) < 0.001
    assert bool((fc.bias == 0).all())


def test_randomize_is_deterministic_and_nonzero() -> None:
    a = ref.randomize_(ref.build_reference("epam"), seed=7)
    b = ref.randomize_(ref.build_reference("epam"), seed=7)
    c = ref.randomize_(ref.build_reference("epam"), seed=8)
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(
        sd_a["rgb_backbone.conv5.conv.weight"], sd_c["rgb_backbone.conv5.conv.weight"]
    )
    assert all(bool((g != 0).all()) for g in _residual_gammas(a))
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            assert bool((m.running_var > 0).all())
            assert bool((m.running_mean != 0).any()) and bool((m.bias != 0).any())
    # Activations stay O(1) through all residual blocks in eval mode.
    a.eval()
    with torch.no_grad():
        rgb_feats, pose_feats, att = a.extract_feats(
            torch.randn(1, 3, 8, 64, 64), torch.rand(1, 17, 24, 16, 16)
        )
    for t in (rgb_feats, pose_feats):
        assert torch.isfinite(t).all()
        assert 1e-2 < t.std().item() < 10.0
    assert bool(((att > 0) & (att < 1)).all())
