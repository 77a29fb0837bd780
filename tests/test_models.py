"""epam_jax.models: shapes, parameter counts, initialisation, errors, freezing, the
outputs, bfloat16 and rematerialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    LLVM_O1,
    POSE_SHAPE,
    RGB_SHAPE,
    ncthw_to_ndhwc,
    random_clips,
    relative_error,
)

from epam_jax.models import (
    REMAT_FIRST_STAGES,
    EPAMBackbone,
    EPAMNet,
    SingleStreamNet,
    init_variables,
    parse_remat,
    variable_shapes,
)
from epam_jax.train.state import training_model
from epam_jax.tuning import Tuning
from epam_jax.xla_options import compiler_options

RGB = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 32, 32, 3)), jnp.float32)
POSE = jnp.asarray(np.random.default_rng(1).random((2, 48, 8, 8, 17)), jnp.float32)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_parameter_counts_match_the_original():
    params = variable_shapes(EPAMNet(num_classes=60))["params"]
    counts = {k: count(v) for k, v in params.items()}
    assert counts["rgb_backbone"] == 1_980_030
    assert counts["pose_backbone"] == 519_580
    assert counts["attention_module"] == 107
    assert counts["rgb_cls_head"] + counts["pose_cls_head"] == 39_000
    assert sum(counts.values()) == 2_538_717


def test_full_size_shapes_without_computing():
    model = EPAMBackbone()
    rgb = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
    pose = jax.ShapeDtypeStruct((2, 48, 56, 56, 17), jnp.float32)
    shapes = variable_shapes(model)
    out = jax.eval_shape(
        lambda v, a, b: model.apply(v, a, b, return_attention=True), shapes, rgb, pose
    )
    assert [o.shape for o in out] == [
        (2, 16, 7, 7, 432), (2, 48, 7, 7, 216), (2, 16, 7, 7, 1)
    ]
    single = jax.eval_shape(
        lambda v, a, b: EPAMBackbone(return_both_streams=False).apply(v, a, b), shapes, rgb, pose
    )
    assert single.shape == (2, 16, 7, 7, 432)


@pytest.fixture(scope="module")
def epam_init():
    model = EPAMNet(num_classes=5)
    return model, jax.device_get(init_variables(model, jax.random.key(0)))


def test_initialisation_follows_the_original(epam_init):
    _, variables = epam_init
    params, stats = variables["params"], variables["batch_stats"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, value in flat:
        keys = [p.key for p in path]
        value = np.asarray(value)
        if keys[-2:] == ["bn", "scale"]:
            expected = 0.0 if keys[-3] == "conv3" else 1.0
            np.testing.assert_array_equal(value, expected, err_msg=str(keys))
        elif keys[-1] == "bias":
            np.testing.assert_array_equal(value, 0.0, err_msg=str(keys))
    for leaf_path, value in jax.tree_util.tree_flatten_with_path(stats)[0]:
        expected = 0.0 if leaf_path[-1].key == "mean" else 1.0
        np.testing.assert_array_equal(np.asarray(value), expected)
    # kaiming normal, fan_out, relu gain: std = sqrt(2 / (cout * kh * kw))
    kernel = np.asarray(params["rgb_backbone"]["layer4"]["0"]["conv1"]["conv"]["kernel"])
    assert kernel.shape == (1, 1, 1, 96, 432)
    assert abs(kernel.std() / np.sqrt(2 / 432) - 1) < 0.05
    dw = np.asarray(params["rgb_backbone"]["layer3"]["4"]["conv2"]["conv"]["kernel"])
    assert abs(dw.std() / np.sqrt(2 / (216 * 9)) - 1) < 0.05
    fc = np.asarray(params["rgb_cls_head"]["fc_cls"]["kernel"])
    assert abs(fc.std() / 0.01 - 1) < 0.1


def test_streams_run_alone_through_the_attribute(epam_init):
    model, variables = epam_init
    feats = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.rgb_backbone(x)))(
        variables, RGB
    )
    assert feats.shape == (2, 16, 1, 1, 432)
    pose = jax.eval_shape(
        lambda v, x: model.apply(v, x, method=lambda m, x: m.pose_backbone(x, train=False)),
        variables, POSE,
    )
    assert pose.shape == (2, 48, 1, 1, 216)
    logits = jax.jit(model.apply)(variables, RGB, POSE)
    assert [x.shape for x in logits] == [(2, 5), (2, 5)]
    assert all(x.dtype == jnp.float32 for x in logits)


@pytest.mark.parametrize(
    "rgb_shape,pose_shape,match",
    [
        ((16, 32, 32, 3), (48, 8, 8, 17), "5-D"),
        ((2, 3, 16, 32, 32), (2, 48, 8, 8, 17),
         r"channels-first.*pass x.transpose\(0, 2, 3, 4, 1\)"),
        ((2, 16, 32, 32, 4), (2, 48, 8, 8, 17), "3 channels"),
        ((2, 16, 32, 32, 3), (2, 17, 48, 8, 8), "channels-first"),
        ((2, 16, 32, 32, 3), (2, 40, 8, 8, 17), "integer multiple"),
        ((2, 16, 64, 64, 3), (2, 48, 8, 8, 17), "feature grids differ"),
        ((2, 16, 32, 32, 3), (3, 48, 8, 8, 17), "batch sizes differ"),
    ],
)
def test_bad_inputs_get_clear_errors(rgb_shape, pose_shape, match):
    model = EPAMBackbone()
    shapes = variable_shapes(model)
    rgb = jax.ShapeDtypeStruct(rgb_shape, jnp.float32)
    pose = jax.ShapeDtypeStruct(pose_shape, jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.apply, shapes, rgb, pose)


def test_bad_configuration_names_the_choices():
    with pytest.raises(ValueError, match="attention_type must be one of"):
        variable_shapes(EPAMBackbone(attention_type="cbam"))
    with pytest.raises(ValueError, match="fusion must be one of"):
        jax.eval_shape(
            EPAMBackbone(fusion="add").apply, variable_shapes(EPAMBackbone()), RGB, POSE
        )
    with pytest.raises(ValueError, match="stream must be one of"):
        variable_shapes(SingleStreamNet(stream="depth"))


def test_fusions_and_attention_output(epam_init):
    _, variables = epam_init
    bvars = {c: {k: v for k, v in t.items() if not k.endswith("_cls_head")}
             for c, t in variables.items()}
    @jax.jit
    def run(v, a, b):
        mult, _, att = EPAMBackbone().apply(v, a, b, return_attention=True)
        residual, _ = EPAMBackbone(fusion="residual").apply(v, a, b)
        rgb = EPAMBackbone().apply(v, a, method=lambda m, x: m.rgb_backbone(x))
        return mult, att, residual, rgb

    mult, att, residual, rgb = run(bvars, RGB, POSE)
    np.testing.assert_allclose(mult, rgb * att, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(residual, rgb + rgb * att, rtol=1e-6, atol=1e-6)
    assert float(att.min()) >= 0 and float(att.max()) <= 1


@pytest.mark.parametrize("frozen", ["rgb", "pose"])
def test_frozen_stream_gets_no_gradient_and_keeps_statistics(epam_init, frozen):
    _, variables = epam_init
    model = EPAMNet(num_classes=5, freeze_rgb=frozen == "rgb", freeze_pose=frozen == "pose")
    labels = jnp.array([1, 3])

    def loss_fn(params):
        (rl, pl), updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, RGB, POSE,
            train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)},
        )
        ce = optax.softmax_cross_entropy_with_integer_labels
        return (ce(rl, labels) + ce(pl, labels)).mean(), updates

    grads, updates = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
    other = "pose" if frozen == "rgb" else "rgb"
    frozen_grads = jax.tree_util.tree_leaves(grads[f"{frozen}_backbone"])
    assert all(float(jnp.abs(g).max()) == 0.0 for g in frozen_grads)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(
        grads[f"{other}_backbone"]))
    new, old = updates["batch_stats"], variables["batch_stats"]
    for a, b in zip(jax.tree_util.tree_leaves(new[f"{frozen}_backbone"]),
                    jax.tree_util.tree_leaves(old[f"{frozen}_backbone"]), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(new[f"{other}_backbone"]),
        jax.tree_util.tree_leaves(old[f"{other}_backbone"]), strict=True)]
    assert all(moved)


def test_eval_in_chunks_of_clips_gives_the_same_outputs(epam_init):
    """Eval may loop over the batch a few clips at a time (a scan; a shorter tail
    runs on its own): statistics are per clip, so outputs must not change."""
    model, variables = epam_init
    rng = np.random.default_rng(2)
    rgb = jnp.asarray(rng.standard_normal((3, 16, 32, 32, 3)), jnp.float32)
    pose = jnp.asarray(rng.random((3, 48, 8, 8, 17)), jnp.float32)

    def run(chunk):  # the outputs, and each top-level loop's length and inner loops
        net = model.clone(tuning=Tuning(eval_chunk=chunk))
        fn = lambda v, a, b: net.apply(v, a, b, return_attention=True)  # noqa: E731
        loops = [(e.params["length"], str(e.params["jaxpr"]).count(" scan["))
                 for e in jax.make_jaxpr(fn)(variables, rgb, pose).jaxpr.eqns
                 if e.primitive.name == "scan"]
        return jax.jit(fn)(variables, rgb, pose), loops

    whole, loops = run(0)
    stages = len(loops)  # each stage's blocks run as a loop, none inside another
    assert stages > 0 and all(inner == 0 for _, inner in loops)
    outs, loops = run(2)
    # one step of 2 clips around the whole network (its stage loops inside); the third
    # clip runs on its own
    assert [loop for loop in loops if loop[1]] == [(1, stages)]
    for a, b in zip(outs, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert Tuning().eval_chunk == 1
    with pytest.raises(ValueError, match="Tuning.eval_chunk must be an int >= 0"):
        Tuning(eval_chunk=-1)


def test_eval_channel_padding_gives_the_same_outputs(epam_init):
    """In eval on CPU the bottleneck runs 54 -> 56 and 108 -> 112 channels wide, the
    extra ones zero; with random weights and statistics the outputs must not change."""
    import re

    model, variables = epam_init
    rng = np.random.default_rng(3)

    def randomize(path, v):  # random BatchNorm statistics and affines, non-zero residual gammas
        name = path[-1].key
        if name in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype)
        if name in ("mean", "bias"):
            return jnp.asarray(0.1 * rng.standard_normal(v.shape), v.dtype)
        return v

    variables = jax.tree_util.tree_map_with_path(randomize, variables)
    rgb = jnp.asarray(rng.standard_normal((2, 16, 32, 32, 3)), jnp.float32)
    pose = jnp.asarray(rng.random((2, 48, 8, 8, 17)), jnp.float32)

    def run(multiple):
        net = model.clone(tuning=Tuning(eval_channel_multiple=multiple))
        fn = lambda v, a, b: net.apply(v, a, b, return_attention=True)  # noqa: E731
        jaxpr = str(jax.make_jaxpr(fn)(variables, rgb, pose))
        widths = set(re.findall(r"f32\[[\d,]*,(\d+)\]", jaxpr))
        return jax.jit(fn)(variables, rgb, pose), widths

    plain, widths = run(1)
    assert {"54", "108"} <= widths and not {"56", "112"} & widths
    padded, widths = run(8)
    assert {"56", "112"} <= widths
    for a, b in zip(padded, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, bool])
def test_apply_refuses_integer_frames(small_backbone, dtype):
    model, variables = small_backbone
    with pytest.raises(ValueError, match=f"rgb clip must be floating point.*got {np.dtype(dtype)}"):
        model.apply(variables, np.zeros(RGB_SHAPE, dtype), np.zeros(POSE_SHAPE, np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["rgb", "pose"])
def test_eager_apply_refuses_non_finite(small_backbone, value, which):
    model, variables = small_backbone
    rgb, pose = np.zeros(RGB_SHAPE, np.float32), np.zeros(POSE_SHAPE, np.float32)
    bad = rgb if which == "rgb" else pose
    bad[0, 1, 2, 3, 0] = value
    what = "rgb clip" if which == "rgb" else "pose heatmaps"
    with pytest.raises(ValueError, match=rf"{what} holds 1 NaN or infinite values \(first at "
                                         r"index \(0, 1, 2, 3, 0\)\)"):
        model.apply(variables, jnp.asarray(rgb), pose)


# bfloat16 keeps 8 bits of mantissa: one rounding is 2**-9 ~ 2e-3 relative, and
# about 60 layers of it add up. Measured on these inputs: 3.2e-3 (rgb logits),
# 6.1e-3 (pose logits), 3.5e-3 (attention).
BF16_TOL = 2e-2


def test_bfloat16_eval_against_the_float32_reference():
    torch = pytest.importorskip("torch")
    from converters import torch_to_flax
    from converters.reference import build_reference, randomize_

    ref = randomize_(build_reference("epam", num_classes=10), seed=5).eval()
    variables = torch_to_flax(ref.state_dict(), "epam")
    rgb, pose = random_clips(2, 64, seed=5)
    with torch.no_grad():
        expected = ref(torch.from_numpy(rgb), torch.from_numpy(pose))
        _, _, expected_attention = ref.extract_feats(torch.from_numpy(rgb), torch.from_numpy(pose))

    net = EPAMNet(num_classes=10, dtype=jnp.bfloat16)
    apply = jax.jit(lambda v, a, b: net.apply(v, a, b, return_attention=True))
    rgb_logits, pose_logits, attention = apply(
        variables, ncthw_to_ndhwc(rgb), ncthw_to_ndhwc(pose)
    )
    assert rgb_logits.dtype == pose_logits.dtype == jnp.float32  # logits leave in float32
    assert attention.dtype == jnp.bfloat16  # the computation really ran in bfloat16
    errors = {
        "rgb": relative_error(expected[0], rgb_logits),
        "pose": relative_error(expected[1], pose_logits),
        "attention": relative_error(ncthw_to_ndhwc(expected_attention), attention),
    }
    assert max(errors.values()) <= BF16_TOL, errors
    # and it is not float32 in disguise
    assert max(errors.values()) > 1e-4, errors


@pytest.mark.slow(seconds=60)
def test_remat_keeps_names_and_gradients_and_saves_memory_on_cpu():
    """Same variable tree, same gradients; compiled buffers shrink by more than a third,
    and less when only the first stage is recomputed."""
    x = np.random.default_rng(7).random((2, 16, 32, 32, 17), dtype=np.float32)
    labels = jnp.array([2, 4])
    results = {}
    first = ("pose_backbone/layer1",)
    for remat in (False, True, first):
        net = SingleStreamNet(stream="pose", num_classes=6, dropout_ratio=0.0, remat=remat)
        shapes = variable_shapes(net)
        rng = np.random.default_rng(8)
        variables = jax.tree_util.tree_map(
            lambda s, rng=rng: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), shapes
        )

        def loss_fn(params, net=net, variables=variables):
            logits, updates = net.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x, train=True, mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates

        step = jax.jit(
            jax.value_and_grad(loss_fn, has_aux=True),
            compiler_options={**compiler_options(), **LLVM_O1},
        )
        compiled = step.lower(variables["params"]).compile()
        (loss, updates), grads = compiled(variables["params"])
        results[remat] = {
            "shapes": jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes),
            "loss": float(loss),
            "grads": grads,
            "stats": updates["batch_stats"],
            "temp": compiled.memory_analysis().temp_size_in_bytes,
        }
    plain = results[False]
    for remat in (results[True], results[first]):
        assert plain["shapes"] == remat["shapes"]
        assert remat["loss"] == pytest.approx(plain["loss"], rel=1e-6)
        for a, b in zip(
            jax.tree_util.tree_leaves(plain["grads"]), jax.tree_util.tree_leaves(remat["grads"]),
            strict=True,
        ):
            assert relative_error(a, b) <= 1e-5
        for a, b in zip(
            jax.tree_util.tree_leaves(plain["stats"]), jax.tree_util.tree_leaves(remat["stats"]),
            strict=True,
        ):
            assert relative_error(a, b) <= 1e-6
    if jax.default_backend() == "cpu":
        full, part = results[True]["temp"], results[first]["temp"]
        assert full < 0.65 * plain["temp"], (full, plain["temp"])
        assert full < part < 0.95 * plain["temp"], (full, part, plain["temp"])


@pytest.mark.parametrize(
    "remat, message",
    [
        (("pose_backbone/layer4",), r"remat names stages \['layer4'\]"),
        (("layer1",), "remat stage paths look like 'rgb_backbone/layer1'"),
        ("pose_backbone/layer1", "remat must be a bool or a tuple of stage paths"),
    ],
)
def test_remat_of_named_stages_checks_the_names(remat, message):
    net = SingleStreamNet(stream="pose", num_classes=3, remat=remat)
    x = jnp.zeros((1, 8, 16, 16, 17))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=True))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("none", False),
        (False, False),
        ("all", True),
        (True, True),
        ("first", REMAT_FIRST_STAGES),
        (" rgb_backbone/layer2, pose_backbone/layer1 ",
         ("rgb_backbone/layer2", "pose_backbone/layer1")),
        (("pose_backbone/layer3",), ("pose_backbone/layer3",)),
    ],
)
def test_remat_settings_from_a_configuration(value, expected):
    assert parse_remat(value) == expected
    assert training_model("epam", 4, remat=value).remat == expected
    stream = training_model("pose", 4, remat=value)
    assert stream.remat == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("True", r"remat must be one of \('none', 'first', 'all'\)"),
        ("layer1", "remat must be one of"),
        ("rgb_backbone/layer1,layer2", "remat stage paths look like 'rgb_backbone/layer1'"),
    ],
)
def test_remat_settings_refuse_what_they_do_not_know(value, message):
    with pytest.raises(ValueError, match=message):
        parse_remat(value)
    with pytest.raises(ValueError, match=message):
        training_model("epam", 4, remat=value)
