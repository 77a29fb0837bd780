"""epam_jax.layers: temporal shift, widths, every convolution formulation, the
hand-written BatchNorm and swish gradients, channel padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import relative_error

from epam_jax import Tuning, temporal_shift
from epam_jax.layers import _batch_norm, batch_norm_train, round_width
from epam_jax.tuning import PLATFORM_TUNINGS


def test_temporal_shift_and_round_width():
    x = jnp.arange(2 * 3 * 1 * 1 * 8, dtype=jnp.float32).reshape(2, 3, 1, 1, 8)
    y = np.asarray(temporal_shift(x, 4))  # fold 2
    xn = np.asarray(x)
    np.testing.assert_array_equal(y[:, :-1, ..., :2], xn[:, 1:, ..., :2])
    np.testing.assert_array_equal(y[:, -1, ..., :2], 0)
    np.testing.assert_array_equal(y[:, 1:, ..., 2:4], xn[:, :-1, ..., 2:4])
    np.testing.assert_array_equal(y[:, 0, ..., 2:4], 0)
    np.testing.assert_array_equal(y[..., 4:], xn[..., 4:])
    assert [round_width(c / 16) for c in (54, 108, 216, 432)] == [8, 8, 16, 32]


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


@pytest.mark.parametrize("relu", [False, True])
def test_cross_replica_batch_norm_gradient_equals_autodiff(relu):
    """``batch_norm_train`` over replicas (``axis_name``): the hand-written backward pass
    against autodiff through the replica means, on 3 replicas of unequal data."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(0.2, 1.5, (3, 2, 2, 3, 3, 5)) * np.arange(1, 4)[:, None, None,
                                                                               None, None, None],
                    jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 1, 5), jnp.float32)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def loss(norm):
        def one(x, g):
            y, mean, var = norm(x, scale, bias, 1e-5, relu, jnp.float32, "r")
            return jnp.sum(y * g), (mean, var)
        return jax.vmap(jax.value_and_grad(one, has_aux=True), axis_name="r")

    (value, stats), grad = loss(batch_norm_train)(x, g)
    (value_ref, stats_ref), grad_ref = loss(_batch_norm)(x, g)
    assert relative_error(value_ref, value) <= 1e-6
    for a, b in zip(stats, stats_ref, strict=True):
        assert relative_error(b, a) <= 1e-6
        np.testing.assert_allclose(a[0], a[2], rtol=1e-6)  # every replica sees global statistics
    assert relative_error(grad_ref, grad) <= 1e-5
