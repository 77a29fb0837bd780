"""Building blocks of EPAM-Net in NDHWC, written for speed on XLA.

Every kernel in EPAM-Net has a temporal size of 1, so frames are folded into
the batch wherever only spatial kernels run: 1x1x1 convolutions are matrix
products over the channel axis and the (1, 3, 3) depthwise convolution is nine
shifted multiply-adds (XLA:CPU's grouped convolution is far slower). Kernels
keep the shapes of ``flax.linen.Conv`` so checkpoints read naturally:
``(1, kh, kw, in // groups, out)``.

``BatchNorm`` matches ``torch.nn.BatchNorm3d``: biased variance to normalise,
unbiased variance in the running estimate. In eval it can be folded into the
preceding convolution (``ConvBN``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from epam_jax.tuning import Tuning

Array = jax.Array
Dtype = Any
DEFAULT = Tuning()

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def stats_dtype(x: Array) -> Dtype:
    """float32 for half precision inputs, else the input's own float type."""
    return jnp.promote_types(x.dtype, jnp.float32)


def temporal_shift(x: Array, fold_div: int) -> Array:
    """Temporal Shift Module on (N, T, H, W, C), zero filled.

    Channels ``[0, fold)`` take frame t+1, ``[fold, 2 * fold)`` take frame t-1,
    the rest stay, with ``fold = C // fold_div``. Written as a per-channel
    select between three time-shifted views rather than a channel concatenation:
    XLA fuses the select into one vectorised loop, while a concatenation of
    narrow channel slices runs element by element on CPU.
    """
    c = x.shape[-1]
    fold = c // fold_div
    if fold == 0:
        return x
    no_pad = [(0, 0)] * (x.ndim - 2)
    future = jnp.pad(x[:, 1:], [(0, 0), (0, 1)] + no_pad)
    past = jnp.pad(x[:, :-1], [(0, 0), (1, 0)] + no_pad)
    channel = lax.broadcasted_iota(jnp.int32, (c,), 0)
    return jnp.where(channel < fold, future, jnp.where(channel < 2 * fold, past, x))


def materialize(x: Any, barrier: bool) -> Any:
    """``x``, kept as one buffer by the compiler (an optimisation barrier) when ``barrier``.

    XLA:CPU otherwise fuses a residual block's output (add + ReLU) into every
    consumer, so each later block of a stage recomputes the chain of residual
    sums before it. Effective only when the function is jitted with
    ``epam_jax.xla_options.compiler_options()`` (measured faster in eval on CPU, see
    docs/performance.md); without them XLA removes the barrier (``Tuning.barriers``).
    """
    return lax.optimization_barrier(x) if barrier else x


class BatchNorm(nn.Module):
    """BatchNorm over every axis but the last, with PyTorch's statistics.

    ``momentum`` follows flax: ``running = momentum * running + (1 - momentum) *
    batch``, so PyTorch's 0.1 is 0.9 here. Statistics are computed in float32
    (or wider) whatever the compute ``dtype``. Under ``jit`` with a sharded batch the mean
    is already global; under ``pmap`` pass ``axis_name`` for cross-replica
    statistics (what SyncBatchNorm does).
    """

    features: int
    use_running_average: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Callable[..., Array] = nn.initializers.ones
    axis_name: str | None = None
    custom_gradient: bool = True
    dtype: Dtype | None = None

    def setup(self):
        shape = (self.features,)
        self.scale = self.param("scale", self.scale_init, shape, jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        self.mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        self.var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)

    def affine(self) -> tuple[Array, Array]:
        """Eval-mode ``(multiplier, offset)`` with ``bn(y) = y * multiplier + offset``."""
        variables = {"scale": self.scale, "bias": self.bias, "mean": self.mean.value,
                     "var": self.var.value}
        return fold_batch_norm(variables, self.epsilon)

    def __call__(self, x: Array, *, relu: bool = False) -> Array:
        """Normalised ``x`` (then a ReLU when ``relu``), in ``dtype`` or ``x``'s type."""
        dtype = self.dtype or x.dtype
        if self.use_running_average:
            mult, offset = self.affine()
            y = (x * mult.astype(dtype) + offset.astype(dtype)).astype(dtype)
            return nn.relu(y) if relu else y
        args = (x, self.scale, self.bias, self.epsilon, relu, dtype, self.axis_name)
        norm = batch_norm_train if self.custom_gradient else _batch_norm
        y, mean, var = norm(*args)
        mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
        count = x.size // x.shape[-1]
        if self.axis_name is not None:  # statistics over every replica
            count = count * lax.psum(1, self.axis_name)
        if not self.is_initializing():
            unbiased = var * (count / jnp.maximum(count - 1, 1))
            m = self.momentum
            self.mean.value = m * self.mean.value + (1.0 - m) * mean
            self.var.value = m * self.var.value + (1.0 - m) * unbiased
        return y


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def batch_norm_train(
    x: Array, scale: Array, bias: Array, epsilon: float, relu: bool, dtype: Dtype,
    axis_name: str | None = None,
) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm (then ReLU when ``relu``) over every axis but the last.

    Returns ``(y, mean, biased variance)``; the statistics carry no gradient.
    With ``axis_name`` (under ``pmap``) the statistics, and the sums of the
    input gradient, run over every replica. The backward pass keeps only ``x``
    and recomputes the normalised values and the ReLU mask from it inside its
    two passes (the reductions, then ``dx``),
    where autodiff writes and rereads several full-size intermediates (with
    ``swish`` below, a measurably faster train step on CPU: docs/performance.md).
    """
    return _batch_norm(x, scale, bias, epsilon, relu, dtype, axis_name)


def _batch_norm(x, scale, bias, epsilon, relu, dtype, axis_name=None):
    """``(y, mean, biased variance)`` from batch statistics (over replicas with ``axis_name``)."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(stats_dtype(x))
    mean = jnp.mean(xf, axes)
    if axis_name is not None:
        mean = lax.pmean(mean, axis_name)
    var = jnp.mean(jnp.square(xf - mean), axes)
    if axis_name is not None:
        var = lax.pmean(var, axis_name)
    y = (xf - mean) * (scale * lax.rsqrt(var + epsilon)) + bias
    if relu:  # nn.relu: under autodiff its gradient at 0 is 0, as PyTorch's
        y = nn.relu(y)
    return y.astype(dtype), mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon, relu, dtype, axis_name):
    y, mean, var = _batch_norm(x, scale, bias, epsilon, relu, dtype, axis_name)
    return (y, mean, var), (x, scale, bias, mean, var)


def _batch_norm_train_bwd(epsilon, relu, dtype, axis_name, res, cotangents):
    x, scale, bias, mean, var = res
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(stats_dtype(x))
    g = cotangents[0].astype(xf.dtype)
    rstd = lax.rsqrt(var + epsilon)
    mult = scale * rstd
    if relu:  # the forward pass's own expression, so the mask is the same
        g = jnp.where((xf - mean) * mult + bias > 0, g, 0)
    xhat = (xf - mean) * rstd
    dbias = jnp.sum(g, axes)
    dscale = jnp.sum(g * xhat, axes)
    n = x.size // x.shape[-1]
    gbias, gscale = dbias, dscale
    if axis_name is not None:  # this replica's x moved every replica's statistics
        gbias, gscale = lax.psum(dbias, axis_name), lax.psum(dscale, axis_name)
        n = n * lax.psum(1, axis_name)
    dx = mult * (g - gbias / n - xhat * (gscale / n))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _swish(x: Array) -> Array:
    return x / (1 + jnp.exp(-x))


def swish(x: Array, custom_gradient: bool = True) -> Array:
    """``x * sigmoid(x)``, written ``x / (1 + exp(-x))``.

    One division where ``x * sigmoid(x)`` costs a division and a product (same
    rounding to within an ulp; slightly faster in eval on CPU, see
    docs/performance.md). With ``custom_gradient`` the backward pass keeps only
    ``x`` and recomputes the sigmoid.
    """
    return _swish_custom(x) if custom_gradient else _swish(x)


@jax.custom_vjp
def _swish_custom(x: Array) -> Array:
    return _swish(x)


def _swish_fwd(x: Array) -> tuple[Array, Array]:
    return _swish(x), x


def _swish_bwd(x: Array, g: Array) -> tuple[Array]:
    s = jax.nn.sigmoid(x)
    return (g * (s * (1 + x * (1 - s))),)


_swish_custom.defvjp(_swish_fwd, _swish_bwd)


# Gradients. XLA differentiates the formulations below correctly but slowly on
# CPU: it fuses the upstream BatchNorm backward into a transposed copy for every
# weight gradient, recomputes it once per depthwise tap, and materialises each
# tap for the kernel gradient. The custom VJPs (``Tuning.custom_gradients``)
# keep the same arithmetic and make the incoming gradient one buffer
# (``optimization_barrier``) that a matrix product, a shifted multiply-add and
# cache-sized tap reductions then read.


@jax.custom_vjp
def matmul(x: Array, w: Array) -> Array:
    """``x @ w`` over the last axis of ``x``, with a backward pass that is fast on CPU."""
    return jnp.dot(x, w)


def _matmul_fwd(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.dot(x, w), (x, w)


def _matmul_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, w = res
    g = lax.optimization_barrier(g)
    dw = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
    return jnp.dot(g, w.T), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dot(x: Array, w: Array, tuning: Tuning) -> Array:
    return matmul(x, w) if tuning.custom_gradients else jnp.dot(x, w)


def _xla_conv(x: Array, kernel: Array, stride: int, groups: int = 1) -> Array:
    """(1, kh, kw) convolution, padding k // 2, by ``lax.conv_general_dilated`` over frames."""
    n, t, h, w, c = x.shape
    _, kh, kw, _, cout = kernel.shape
    y = lax.conv_general_dilated(
        x.reshape(n * t, h, w, c),
        kernel[0],
        window_strides=(stride, stride),
        padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )
    return y.reshape(n, t, *y.shape[1:])


def pointwise_conv(x: Array, kernel: Array, stride: int = 1, *, tuning: Tuning = DEFAULT) -> Array:
    """1x1x1 convolution as a matrix product; ``kernel`` is (1, 1, 1, cin, cout).

    Strided, the 'matmul' formulation subsamples the input first; 'xla' hands
    the stride to the compiler's convolution.
    """
    if stride != 1:
        if tuning.convolutions == "xla":
            return _xla_conv(x, kernel, stride)
        x = x[:, :, ::stride, ::stride, :]
    return _dot(x, kernel.reshape(kernel.shape[-2:]), tuning)


def _pad_hw(x: Array, low: tuple[int, int], high: tuple[int, int], interior: int = 0) -> Array:
    """Zero padding of the H and W axes of (N, T, H, W, C), ``interior`` zeros between pixels."""
    config = [(0, 0, 0), (0, 0, 0), (low[0], high[0], interior), (low[1], high[1], interior)]
    return lax.pad(x, jnp.zeros((), x.dtype), config + [(0, 0, 0)])


def _taps(xp: Array, kh: int, kw: int, stride: int, ho: int, wo: int):
    """``(i, j, view)``: the (ho, wo) strided view of the padded input under kernel tap (i, j)."""
    n, t, _, _, c = xp.shape
    for i in range(kh):
        for j in range(kw):
            end = (n, t, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c)
            yield i, j, lax.slice(xp, (0, 0, i, j, 0), end, (1, 1, stride, stride, 1))


def _shifted_mac(xp: Array, k: Array, stride: int, ho: int, wo: int) -> Array:
    """Sum over taps of view * k[i, j]: a depthwise convolution of the padded ``xp``."""
    out = None
    for i, j, tap in _taps(xp, k.shape[0], k.shape[1], stride, ho, wo):
        term = tap * k[i, j]
        out = term if out is None else out + term
    return out


def _conv_out_size(size: int, k: int, stride: int) -> int:
    """Output length of a kernel-``k`` convolution with padding ``k // 2``."""
    return (size + 2 * (k // 2) - k) // stride + 1


def _depthwise_kernel_grad(
    xp: Array, g: Array, kh: int, kw: int, stride: int, chunk_bytes: int
) -> Array:
    """(kh * kw, C) sums of tap view * g over every position, in float32 or wider.

    The sums run over chunks of frames of at most ``chunk_bytes`` (0: all at
    once), so the nine taps of a chunk are read from cache (a faster train step
    on CPU than whole-tensor reductions, see docs/performance.md).
    """
    ho, wo = g.shape[2], g.shape[3]
    acc_dtype = stats_dtype(g)

    def reduce(xc: Array, gc: Array) -> Array:
        views = _taps(xc, kh, kw, stride, ho, wo)
        return jnp.stack([jnp.sum(v * gc, axis=(0, 1, 2, 3), dtype=acc_dtype) for *_, v in views])

    frames = xp.shape[0] * xp.shape[1]
    frame_bytes = xp[0, 0].size * xp.dtype.itemsize
    chunk = frames
    if chunk_bytes:
        fits = (d for d in range(1, frames + 1) if frames % d == 0)
        chunk = max((d for d in fits if d * frame_bytes <= chunk_bytes), default=1)
    if chunk == frames:
        return reduce(xp, g)
    xs = xp.reshape(frames // chunk, 1, chunk, *xp.shape[2:])
    gs = g.reshape(frames // chunk, 1, chunk, *g.shape[2:])

    def body(acc: Array, xg: tuple[Array, Array]) -> tuple[Array, None]:
        return acc + reduce(*xg), None

    acc, _ = lax.scan(body, jnp.zeros((kh * kw, xp.shape[-1]), acc_dtype), (xs, gs))
    return acc


def _depthwise_mac(x: Array, k: Array, stride: int) -> Array:
    kh, kw, _ = k.shape
    ho = _conv_out_size(x.shape[2], kh, stride)
    wo = _conv_out_size(x.shape[3], kw, stride)
    return _shifted_mac(_pad_hw(x, (kh // 2, kw // 2), (kh // 2, kw // 2)), k, stride, ho, wo)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: Array, k: Array, stride: int, chunk_bytes: int) -> Array:
    return _depthwise_mac(x, k, stride)


def _depthwise_fwd(x, k, stride, chunk_bytes):
    return _depthwise_mac(x, k, stride), (x, k)


def _depthwise_bwd(
    stride: int, chunk_bytes: int, res: tuple[Array, Array], g: Array
) -> tuple[Array, Array]:
    x, k = res
    kh, kw, _ = k.shape
    (h, w), (ho, wo) = x.shape[2:4], g.shape[2:4]
    ph, pw = kh // 2, kw // 2
    g = lax.optimization_barrier(g)
    # input gradient: the flipped kernel slid over g, dilated by the stride
    low = (kh - 1 - ph, kw - 1 - pw)
    high = (h + ph - stride * (ho - 1) - 1, w + pw - stride * (wo - 1) - 1)
    dx = _shifted_mac(_pad_hw(g, low, high, stride - 1), k[::-1, ::-1], 1, h, w)
    dk = _depthwise_kernel_grad(_pad_hw(x, (ph, pw), (ph, pw)), g, kh, kw, stride, chunk_bytes)
    return dx, dk.reshape(k.shape).astype(k.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x: Array, kernel: Array, stride: int = 1, *, tuning: Tuning = DEFAULT) -> Array:
    """(1, k, k) depthwise convolution, padding k // 2; ``kernel`` is (1, kh, kw, 1, C).

    'matmul': shifted multiply-adds, each tap a strided view of the padded
    input scaled per channel, fused by XLA into one loop (on XLA:CPU far
    faster than a grouped convolution, see docs/performance.md). 'xla': a
    grouped convolution.
    """
    _, kh, kw, _, c = kernel.shape
    if tuning.convolutions == "xla":
        return _xla_conv(x, kernel, stride, groups=c)
    k = kernel.reshape(kh, kw, c)
    if tuning.custom_gradients:
        return _depthwise(x, k, stride, tuning.kernel_grad_chunk_bytes)
    return _depthwise_mac(x, k, stride)


def _strided_conv(x: Array, kernel: Array, stride: int, tuning: Tuning) -> Array:
    """Strided dense convolution as space-to-depth and one matrix product.

    The padded input is cut into ``stride x stride`` cells stacked on the
    channel axis, which turns the strided (kh, kw) kernel into a stride-1
    (ceil(kh / s), ceil(kw / s)) kernel over ``s * s * cin`` channels (zero taps
    fill the rest); its taps are concatenated into one product. For the RGB
    stem (3 -> 24 channels, 3x3, stride 2) that is K = 48 instead of three
    products with K = 9, which XLA:CPU runs at a fraction of its matmul speed.
    """
    _, kh, kw, cin, cout = kernel.shape
    n, t, h, w, _ = x.shape
    s, ph, pw = stride, kh // 2, kw // 2
    ho, wo = _conv_out_size(h, kh, s), _conv_out_size(w, kw, s)
    ka, kb = -(-kh // s), -(-kw // s)
    hz, wz = ho + ka - 1, wo + kb - 1
    high = (max(0, s * hz - h - ph), max(0, s * wz - w - pw))
    xp = _pad_hw(x, (ph, pw), high)[:, :, : s * hz, : s * wz]
    z = xp.reshape(n, t, hz, s, wz, s, cin).transpose(0, 1, 2, 4, 3, 5, 6)
    z = z.reshape(n, t, hz, wz, s * s * cin)
    k = jnp.pad(kernel[0], ((0, s * ka - kh), (0, s * kb - kw), (0, 0), (0, 0)))
    k = k.reshape(ka, s, kb, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    cols = [z[:, :, a : a + ho, b : b + wo] for a in range(ka) for b in range(kb)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return _dot(patches, k.reshape(ka * kb * s * s * cin, cout), tuning)


def spatial_conv(x: Array, kernel: Array, stride: int = 1, *, tuning: Tuning = DEFAULT) -> Array:
    """Dense (1, kh, kw) convolution with padding k // 2, frames folded into the batch.

    'matmul' writes it as matrix products (the stems have only 3 or 17 input
    channels, where XLA:CPU's convolution is slow). With stride 1
    the ``kw`` taps along the width are concatenated on the channel axis
    (K = kw * cin), one product against all kernel rows at once covers every
    padded row, and the kh row-shifted slices of its output are summed (faster
    than XLA's convolution for the pose stem, see docs/performance.md). Strided
    convolutions go through space-to-depth (``_strided_conv``). 'xla': the
    compiler's convolution.
    """
    if tuning.convolutions == "xla":
        return _xla_conv(x, kernel, stride)
    if stride != 1:
        return _strided_conv(x, kernel, stride, tuning)
    _, kh, kw, cin, cout = kernel.shape
    _, _, h, w, _ = x.shape
    ph, pw = kh // 2, kw // 2
    ho, wo = _conv_out_size(h, kh, 1), _conv_out_size(w, kw, 1)
    xp = _pad_hw(x, (ph, pw), (ph, pw))
    cols = [xp[:, :, :, j : j + wo] for j in range(kw)]
    patches = cols[0] if kw == 1 else jnp.concatenate(cols, axis=-1)
    weights = kernel[0].reshape(kh, kw * cin, cout)
    y = _dot(patches, jnp.concatenate(list(weights), axis=-1), tuning)
    out = y[:, :, 0:ho, :, 0:cout]
    for i in range(1, kh):
        out = out + y[:, :, i : i + ho, :, i * cout : (i + 1) * cout]
    return out


_CONV_FNS = {"pointwise": pointwise_conv, "depthwise": depthwise_conv, "spatial": spatial_conv}


def padded_width(channels: int, multiple: int) -> int:
    """``channels`` rounded up to a multiple of ``multiple``."""
    return -(-channels // multiple) * multiple


def prepare_weights(
    kernel: Array,
    offset: Array | None,
    fold: tuple[Array, Array] | None = None,
    *,
    pad_in: int = 0,
    pad_out: int = 0,
) -> tuple[Array, Array | None]:
    """A convolution's ``(kernel, offset)`` as it runs: BatchNorm folded in, zero padded.

    ``fold = (multiplier, shift)`` scales the kernel per output channel and
    adds ``shift`` to the offset; ``pad_in`` and ``pad_out`` append zero input
    and output channels to the kernel (a depthwise kernel takes ``pad_out``
    only) and zero output channels to the offset.
    """
    if fold is not None:
        mult, shift = fold
        kernel = kernel * mult
        offset = shift if offset is None else offset * mult + shift
    if pad_in or pad_out:
        kernel = jnp.pad(kernel, [(0, 0)] * 3 + [(0, pad_in), (0, pad_out)])
        offset = None if offset is None else jnp.pad(offset, (0, pad_out))
    return kernel, offset


class Conv(nn.Module):
    """A bias-optional convolution with temporal kernel 1 on (N, T, H, W, C).

    ``kind`` picks the kernel: 'pointwise' (1x1x1), 'depthwise' (1 x k x k, one
    filter per channel) or 'spatial' (dense 1 x k x k). ``bias`` adds a bias
    parameter; ``fold`` multiplies the kernel per output channel and adds an
    offset (BatchNorm folded in eval). ``tuning`` picks the formulation.

    Zero channel padding: ``in_features`` is the kernel's input channel count
    when ``x`` carries zero channels after them (default: all of ``x``'s), and
    ``out_width`` appends zero output channels up to that width. The padding
    meets zero kernel entries and zero offsets, so the real channels are the
    unpadded convolution's and the padding stays zero.
    """

    features: int
    kind: str = "pointwise"
    kernel_size: int = 1
    stride: int = 1
    use_bias: bool = False
    in_features: int | None = None
    out_width: int | None = None
    tuning: Tuning = DEFAULT
    dtype: Dtype | None = None
    kernel_init: Callable[..., Array] = kaiming_fan_out

    @nn.compact
    def __call__(self, x: Array, fold: tuple[Array, Array] | None = None) -> Array:
        width, out_width = x.shape[-1], self.out_width or self.features
        cin = self.in_features or width
        if cin > width or out_width < self.features:
            raise ValueError(
                f"{self.kind} conv: in_features {cin} must be <= the input's {width} channels "
                f"and out_width {out_width} >= features {self.features}"
            )
        k = self.kernel_size
        if self.kind == "pointwise":
            shape = (1, 1, 1, cin, self.features)
        elif self.kind == "depthwise":
            if cin != self.features or width != out_width:
                raise ValueError(
                    f"depthwise conv needs {self.features} input channels (padded to "
                    f"out_width {out_width}), got {cin} of {width}"
                )
            shape = (1, k, k, 1, self.features)
        else:
            shape = (1, k, k, cin, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        offset = None
        if self.use_bias:
            offset = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        pad_in = 0 if self.kind == "depthwise" else width - cin
        kernel, offset = prepare_weights(
            kernel, offset, fold, pad_in=pad_in, pad_out=out_width - self.features
        )
        if fold is not None:  # one small buffer each, not recomputed in every element's loop
            kernel, offset = materialize((kernel, offset), self.tuning.barriers)
        dtype = self.dtype or x.dtype
        conv = _CONV_FNS[self.kind]
        y = conv(x.astype(dtype), kernel.astype(dtype), self.stride, tuning=self.tuning)
        if offset is not None:
            y = y + offset.astype(dtype)
        return y


class ConvBN(nn.Module):
    """``conv`` then ``bn`` then an optional ReLU: mmcv's ConvModule, names kept.

    In eval the BatchNorm is folded into the convolution's kernel and bias, and
    the zero channel padding of ``Conv`` (``in_features``, ``out_width``) is
    available; in training the padding is an error. ``prepared``: the
    variables are ``prepare_convbn``'s, ``conv`` with kernel and bias folded
    and padded already (eval only; see ``X3DStage``).
    """

    features: int
    norm: Callable[..., BatchNorm]
    kind: str = "pointwise"
    kernel_size: int = 1
    stride: int = 1
    relu: bool = False
    zero_init_gamma: bool = False
    in_features: int | None = None
    out_width: int | None = None
    prepared: bool = False
    tuning: Tuning = DEFAULT
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = partial(Conv, kind=self.kind, kernel_size=self.kernel_size, stride=self.stride,
                       tuning=self.tuning, dtype=self.dtype, name="conv")
        if self.prepared:
            y = conv(self.out_width or self.features, use_bias=True)(x)
            return nn.relu(y) if self.relu else y
        conv = conv(self.features, in_features=self.in_features, out_width=self.out_width)
        scale_init = nn.initializers.zeros if self.zero_init_gamma else nn.initializers.ones
        bn = self.norm(self.features, scale_init=scale_init, name="bn")
        if bn.use_running_average:
            y = conv(x, fold=bn.affine())
            return nn.relu(y) if self.relu else y
        padded_in = (self.in_features or x.shape[-1]) != x.shape[-1]
        if padded_in or (self.out_width or self.features) != self.features:
            raise ValueError("ConvBN: zero channel padding is for eval (folded BatchNorm) only")
        return bn(conv(x), relu=self.relu)


def fold_batch_norm(bn: dict, epsilon: float = 1e-5) -> tuple[Array, Array]:
    """``BatchNorm.affine`` from a BatchNorm's variables ``{'scale', 'bias', 'mean', 'var'}``."""
    mult = bn["scale"] * lax.rsqrt(bn["var"] + epsilon)
    return mult, bn["bias"] - bn["mean"] * mult


def prepare_convbn(variables: dict, *, pad_in: int = 0, pad_out: int = 0) -> dict:
    """A ``ConvBN``'s eval variables as ``ConvBN(prepared=True)`` reads them.

    ``variables``: ``{'params': {'conv': {'kernel'}, 'bn': {'scale', 'bias'}},
    'batch_stats': {'bn': {'mean', 'var'}}}``; returns ``{'conv': {'kernel',
    'bias'}}`` params, the BatchNorm folded in and ``pad_in``/``pad_out`` zero
    channels added.
    """
    bn = {**variables["params"]["bn"], **variables["batch_stats"]["bn"]}
    kernel = variables["params"]["conv"]["kernel"]
    kernel, bias = prepare_weights(kernel, None, fold_batch_norm(bn), pad_in=pad_in,
                                   pad_out=pad_out)
    return {"conv": {"kernel": kernel, "bias": bias}}


def round_width(width: float, divisor: int = 8, min_width: int = 8) -> int:
    """X3D's channel rounding: the nearest multiple of ``divisor`` (at least 90%)."""
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


class SEModule(nn.Module):
    """Squeeze-excitation over (T, H, W) with 1x1x1 convs ``fc1`` and ``fc2``.

    ``prepared``: the kernels are zero padded to ``x``'s channels already
    (``prepare_se``).
    """

    channels: int
    reduction: float = 1.0 / 16
    prepared: bool = False
    tuning: Tuning = DEFAULT
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Reweighted ``x``; zero channels after the first ``channels`` stay zero."""
        hidden = round_width(self.channels * self.reduction)
        conv = partial(Conv, kind="pointwise", use_bias=True, tuning=self.tuning, dtype=self.dtype)
        s = jnp.mean(x.astype(stats_dtype(x)), axis=(1, 2, 3), keepdims=True).astype(x.dtype)
        if self.prepared:
            fc1, fc2 = conv(hidden, name="fc1"), conv(x.shape[-1], name="fc2")
        else:
            fc1 = conv(hidden, in_features=self.channels, name="fc1")
            fc2 = conv(self.channels, out_width=x.shape[-1], name="fc2")
        return x * nn.sigmoid(fc2(nn.relu(fc1(s))))


def prepare_se(params: dict, *, pad: int = 0) -> dict:
    """An ``SEModule``'s params as ``SEModule(prepared=True)`` reads them: ``pad`` zero channels."""
    fc1, fc2 = params["fc1"], params["fc2"]
    k1, b1 = prepare_weights(fc1["kernel"], fc1["bias"], pad_in=pad)
    k2, b2 = prepare_weights(fc2["kernel"], fc2["bias"], pad_out=pad)
    return {"fc1": {"kernel": k1, "bias": b1}, "fc2": {"kernel": k2, "bias": b2}}
