"""Mixed precision and rematerialisation: options for speed and memory that keep the numbers.

bfloat16 compute is checked against the float32 PyTorch reference at a looser
tolerance; ``remat`` must give the same gradients and, on CPU with
``epam_jax.xla_options.compiler_options()``, less memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ncthw_to_ndhwc, random_clips, relative_error

from epam_jax.models import (
    REMAT_FIRST_STAGES,
    EPAMNet,
    SingleStreamNet,
    parse_remat,
    variable_shapes,
)
from epam_jax.train.state import training_model
from epam_jax.tuning import PLATFORM_TUNINGS, Tuning
from epam_jax.xla_options import KEEP_REMAT_BARRIERS, NO_TRITON_GEMM, compiler_options

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


def test_bfloat16_training_keeps_parameters_and_statistics_in_float32():
    net = SingleStreamNet(stream="pose", num_classes=5, dtype=jnp.bfloat16)
    shapes = variable_shapes(net)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variable_shapes(
        EPAMNet(dtype=jnp.bfloat16))))

    variables = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    _, pose = random_clips(2, 64, t_pose=16, seed=6)

    def loss_fn(params):
        logits, updates = net.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            ncthw_to_ndhwc(pose), train=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([1, 3])).mean(), (
            logits, updates
        )

    (loss, (logits, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"]
    )
    assert logits.dtype == loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    stats = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert all(s.dtype == jnp.float32 for s in stats)
    assert all(np.all(np.isfinite(np.asarray(s))) for s in stats)
    moved = [not np.allclose(s, 0.5) for s in stats]
    assert all(moved)


def test_compiler_options_per_backend():
    assert compiler_options("cpu") == KEEP_REMAT_BARRIERS
    assert compiler_options("gpu") == compiler_options("cuda") == NO_TRITON_GEMM
    assert compiler_options("tpu") is None


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
            jax.value_and_grad(loss_fn, has_aux=True), compiler_options=compiler_options()
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


@pytest.mark.parametrize(
    "shape, kernel, stride",
    [
        ((2, 3, 17, 19, 3), 3, 2),  # odd sizes through space-to-depth
        ((1, 2, 16, 16, 5), 3, 2),
        ((1, 2, 15, 14, 4), 5, 2),
        ((1, 2, 9, 9, 3), 3, 3),
        ((1, 2, 12, 13, 17), 3, 1),  # the pose stem's path
        ((1, 2, 10, 10, 3), 5, 1),
        ((1, 1, 8, 8, 2), 1, 2),
    ],
)
@pytest.mark.parametrize("tuning", [
    Tuning(),
    Tuning(kernel_grad_chunk_bytes=1),  # the depthwise kernel gradient frame by frame
    Tuning(kernel_grad_chunk_bytes=0),  # ... over the whole tensor at once
    Tuning(custom_gradients=False),
    PLATFORM_TUNINGS["gpu"],
], ids=["default", "chunk1", "chunk0", "autodiff", "gpu"])
def test_fast_convolutions_equal_xla_convolution(shape, kernel, stride, tuning):
    """Every formulation of the dense, depthwise and pointwise convolutions and of
    their gradients, on odd shapes, against XLA's convolution at full precision."""
    from jax import lax

    from epam_jax.layers import depthwise_conv, pointwise_conv, spatial_conv

    rng = np.random.default_rng(9)
    n, t, h, w, c = shape
    x = rng.standard_normal(shape).astype(np.float32)
    pad = ((kernel // 2, kernel // 2),) * 2
    dims = ("NHWC", "HWIO", "NHWC")

    def xla_conv(x, k, groups=1):
        y = lax.conv_general_dilated(
            x.reshape(n * t, h, w, c), k[0], (stride, stride), pad, dimension_numbers=dims,
            feature_group_count=groups, precision=lax.Precision.HIGHEST,
        )
        return y.reshape(n, t, *y.shape[1:])

    def check(ours, reference, k):
        y, ours_vjp = jax.vjp(ours, x, k)
        y_ref, ref_vjp = jax.vjp(reference, x, k)
        assert relative_error(y_ref, y) <= 1e-6
        cotangent = rng.standard_normal(y.shape).astype(np.float32)
        for grad, grad_ref in zip(ours_vjp(cotangent), ref_vjp(cotangent), strict=True):
            assert grad.shape == grad_ref.shape
            assert relative_error(grad_ref, grad) <= 1e-5

    dense = rng.standard_normal((1, kernel, kernel, c, 6)).astype(np.float32)
    check(lambda x, k: spatial_conv(x, k, stride, tuning=tuning), xla_conv, dense)
    depthwise = rng.standard_normal((1, kernel, kernel, 1, c)).astype(np.float32)
    check(lambda x, k: depthwise_conv(x, k, stride, tuning=tuning),
          lambda x, k: xla_conv(x, k, c), depthwise)
    if kernel == 1:
        check(lambda x, k: pointwise_conv(x, k, stride, tuning=tuning), xla_conv, dense)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_and_swish_gradients_equal_autodiff(relu, dtype):
    """The hand-written training BatchNorm(+ReLU) and swish backward passes, which
    keep only their inputs, against autodiff of the plain formulas."""
    from epam_jax.layers import batch_norm_train, stats_dtype, swish

    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(0.3, 2.0, (2, 3, 5, 4, 7)), dtype)
    scale = jnp.asarray(rng.uniform(-1.5, 1.5, 7), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 1, 7), jnp.float32)

    def plain(x, scale, bias):
        xf = x.astype(stats_dtype(x))
        axes = (0, 1, 2, 3)
        mean = jnp.mean(xf, axes)
        var = jnp.mean(jnp.square(xf - mean), axes)
        y = (xf - mean) * (scale * jax.lax.rsqrt(var + 1e-5)) + bias
        y = jax.nn.relu(y) if relu else y
        return y.astype(x.dtype), mean, var

    def ours(x, scale, bias):
        return batch_norm_train(x, scale, bias, 1e-5, relu, x.dtype)

    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    (y, mean, var), our_vjp = jax.vjp(ours, x, scale, bias)
    (y_ref, mean_ref, var_ref), ref_vjp = jax.vjp(plain, x, scale, bias)
    assert y.dtype == dtype and mean.dtype == var.dtype == jnp.float32
    for a, b in ((y, y_ref), (mean, mean_ref), (var, var_ref)):
        assert relative_error(b, a) <= 1e-6
    g = jnp.asarray(rng.standard_normal(y.shape), dtype)
    zero = jnp.zeros(7, jnp.float32)
    for grad, grad_ref in zip(our_vjp((g, zero, zero)), ref_vjp((g, zero, zero)), strict=True):
        assert grad.dtype == grad_ref.dtype
        assert relative_error(grad_ref, grad) <= tol

    s, swish_vjp = jax.vjp(swish, x)
    s_ref, silu_vjp = jax.vjp(jax.nn.silu, x)
    # x / (1 + exp(-x)) against x * sigmoid(x): the same value to within rounding
    assert relative_error(s_ref, s) <= (2.5e-7 if dtype == jnp.float32 else 1e-2)
    assert relative_error(silu_vjp(g)[0], swish_vjp(g)[0]) <= tol


@pytest.mark.parametrize(
    "kind, kernel_size, stride, use_bias, fold",
    [
        ("pointwise", 1, 1, False, True),
        ("pointwise", 1, 2, True, False),
        ("depthwise", 3, 1, False, True),
        ("depthwise", 3, 2, True, True),
        ("spatial", 3, 1, True, True),
    ],
)
def test_zero_channel_padding_leaves_the_convolution_unchanged(
    kind, kernel_size, stride, use_bias, fold
):
    """Padded input channels meet zero kernel rows, padded outputs are exactly zero."""
    from epam_jax.layers import Conv

    cin, cout, width = (6, 6, 8) if kind == "depthwise" else (5, 6, 8)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 7, 7, cin)), jnp.float32)
    x_padded = jnp.pad(x, [(0, 0)] * 4 + [(0, width - cin)])
    affine = (jnp.asarray(rng.uniform(0.5, 2, cout)), jnp.asarray(rng.standard_normal(cout)))
    fold_arg = affine if fold else None
    plain = Conv(cout, kind, kernel_size, stride, use_bias=use_bias)
    padded = plain.clone(in_features=cin, out_width=width)
    variables = plain.init(jax.random.key(0), x)
    variables = jax.tree_util.tree_map(
        lambda v: v + jnp.asarray(rng.standard_normal(v.shape), v.dtype), variables
    )
    expected = plain.apply(variables, x, fold_arg)
    out = padded.apply(variables, x_padded, fold_arg)
    assert out.shape == expected.shape[:-1] + (width,)
    np.testing.assert_allclose(out[..., :cout], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[..., cout:], 0.0)
    assert jax.tree_util.tree_map(jnp.shape, padded.init(jax.random.key(0), x_padded)) == (
        jax.tree_util.tree_map(jnp.shape, variables)
    )  # the parameters keep their unpadded shapes
    with pytest.raises(ValueError, match="in_features 9 must be <= the input's 8 channels"):
        plain.clone(in_features=9).init(jax.random.key(0), x_padded)


def test_conv_bn_refuses_channel_padding_in_training():
    from functools import partial

    from epam_jax.layers import BatchNorm, ConvBN

    x = jnp.ones((2, 2, 4, 4, 6))
    norm = partial(BatchNorm, use_running_average=False)
    layer = ConvBN(6, norm=norm, out_width=8)
    with pytest.raises(ValueError, match="padding is for eval"):
        layer.init(jax.random.key(0), x)
