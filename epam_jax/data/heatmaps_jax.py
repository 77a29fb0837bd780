"""Pose heatmaps on the accelerator: the numpy generator's numbers from (x, y, score).

A host ships keypoints (M, T, V, 3) (about 10 KB a clip) instead of (T, 56, 56, 17)
float32 heatmaps (10 MB); this jit-compatible function draws them on the device. It can
run inside a jitted train step.

The original decides each 3-sigma window with int truncation of float64 sums. In float32
that rounding would differ near integer bounds, so the window test for every pixel is made
exact instead: pixel p lies in a keypoint's window iff ``lo[p] <= mu <= hi[p]`` for float32
thresholds precomputed in float64 on the host. Score thresholds are exact the same way.
A negative score marks an absent (padding) person or joint: never drawn, even with
``use_score=False``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.data.heatmaps import COCO_LIMBS, EPS, pack_keypoints

__all__ = ["heatmaps_from_keypoints", "pack_keypoints", "window_thresholds"]


def _f32_below(t: np.ndarray) -> np.ndarray:
    """Largest float32 strictly below each float64 value."""
    f = t.astype(np.float32)
    too_big = f.astype(np.float64) >= t
    return np.where(too_big, np.nextafter(f, np.float32(-np.inf)), f)


def _f32_at_or_above(t: np.ndarray) -> np.ndarray:
    """Smallest float32 at or above each float64 value."""
    f = t.astype(np.float32)
    too_small = f.astype(np.float64) < t
    return np.where(too_small, np.nextafter(f, np.float32(np.inf)), f)


def _f32_above(t: np.ndarray) -> np.ndarray:
    """Smallest float32 strictly above each float64 value."""
    f = t.astype(np.float32)
    too_small = f.astype(np.float64) <= t
    return np.where(too_small, np.nextafter(f, np.float32(np.inf)), f)


def window_thresholds(size: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel float32 bounds (lo, hi): pixel p is inside the window of a segment
    [a, b] (a point when a == b) iff ``b >= lo[p]`` and ``a <= hi[p]``.

    The window is [max(int(a - 3s), 0), min(int(b + 3s) + 1, size)) with int truncating
    toward zero. For p >= 0: p >= int(a - 3s) iff a < p + 1 + 3s, and p <= int(b + 3s) iff
    b >= p - 3s, except p = 0, which truncation also admits for b + 3s in (-1, 0).
    """
    c = 3 * sigma
    p = np.arange(size, dtype=np.float64)
    hi = _f32_below(p + 1 + c)
    lo = _f32_at_or_above(p - c)
    lo[0] = _f32_above(np.array(-1 - c))
    return lo, hi


def _score_floor() -> np.float32:
    # value >= EPS in float64 iff value >= this float32
    return _f32_at_or_above(np.array(EPS, np.float64)).astype(np.float32)[()]


def _rounded(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """The values unchanged (NaN aside), but behind a select so that XLA cannot fuse a
    product into a following sum as a fused multiply-add, which would round differently
    from numpy."""
    return tuple(jnp.where(x == x, x, 0.0) for x in xs)


def _sum_of_squares(dx: jax.Array, dy: jax.Array) -> jax.Array:
    """dx**2 + dy**2 rounded like numpy: each square rounded before the sum."""
    sx, sy = _rounded(dx * dx, dy * dy)
    return sx + sy


def _window_mask(a: jax.Array, b: jax.Array, lo: np.ndarray, hi: np.ndarray) -> jax.Array:
    return (b[..., None] >= lo) & (a[..., None] <= hi)


def _point_maps(x, y, v, present, h, w, sigma, lo_x, hi_x, lo_y, hi_y):
    """Keypoint Gaussians of one person: x, y, v (..., T, C) -> (..., T, H, W, C).

    The Gaussian is separable, exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) *
    exp(-dy^2 / 2s^2), and so is the window, so only H + W exponentials are taken per map;
    the product differs from the single exponential by a few float32 ulps (< 3e-7).
    """
    xs = jnp.arange(w, dtype=jnp.float32)
    ys = jnp.arange(h, dtype=jnp.float32)
    gx = jnp.exp(-((xs - x[..., None]) ** 2) / 2 / sigma**2)  # (..., T, C, W)
    gy = jnp.exp(-((ys - y[..., None]) ** 2) / 2 / sigma**2) * v[..., None]  # (..., T, C, H)
    gx = jnp.where(_window_mask(x, x, lo_x, hi_x), gx, 0.0)
    gy = jnp.where(_window_mask(y, y, lo_y, hi_y) & present[..., None], gy, 0.0)
    gx = jnp.moveaxis(gx, -2, -1)  # (..., T, W, C)
    gy = jnp.moveaxis(gy, -2, -1)  # (..., T, H, C)
    return gy[..., :, None, :] * gx[..., None, :, :]


def _limb_maps(kp, v, present, h, w, sigma, limbs, lo_x, hi_x, lo_y, hi_y):
    """Limb Gaussians of one person: kp (..., T, V, 2), v (..., T, V) -> (..., T, H, W, L)."""
    ia = np.array([a for a, _ in limbs])
    ib = np.array([b for _, b in limbs])
    ax, ay = kp[..., ia, 0], kp[..., ia, 1]  # (..., T, L)
    bx, by = kp[..., ib, 0], kp[..., ib, 1]
    value = jnp.minimum(v[..., ia], v[..., ib])
    on = present[..., ia] & present[..., ib] & (value >= _score_floor())
    d2_ab = _sum_of_squares(ax - bx, ay - by)
    short = d2_ab < 1
    xs = jnp.arange(w, dtype=jnp.float32)[:, None]  # (W, 1) against (..., T, 1, 1, L)
    ys = jnp.arange(h, dtype=jnp.float32)[:, None, None]  # (H, 1, 1)
    e = (..., None, None, slice(None))
    pax, pay, pbx, pby, dab = ax[e], ay[e], bx[e], by[e], d2_ab[e]
    d2_a = _sum_of_squares(xs - pax, ys - pay)
    d2_b = _sum_of_squares(xs - pbx, ys - pby)
    # A full-shape divisor keeps XLA from turning the division into a reciprocal product.
    safe_ab = _rounded(jnp.broadcast_to(jnp.where(dab < 1, 1.0, dab), d2_a.shape))[0]
    coeff = (d2_a - d2_b + dab) / 2.0 / safe_ab
    step_x, step_y = _rounded(coeff * (pbx - pax), coeff * (pby - pay))
    d2_line = _sum_of_squares(xs - (pax + step_x), ys - (pay + step_y))
    d2 = jnp.where(coeff <= 0, d2_a, jnp.where(coeff >= 1, d2_b, d2_line))
    seg = jnp.exp(-d2 / 2.0 / sigma**2) * value[e]
    mx = _window_mask(jnp.minimum(ax, bx), jnp.maximum(ax, bx), lo_x, hi_x)  # (..., T, L, W)
    my = _window_mask(jnp.minimum(ay, by), jnp.maximum(ay, by), lo_y, hi_y)  # (..., T, L, H)
    inside = jnp.moveaxis(mx, -2, -1)[..., None, :, :] & jnp.moveaxis(my, -2, -1)[..., :, None, :]
    seg = jnp.where(inside & (on & ~short)[e], seg, 0.0)
    # A limb shorter than one pixel draws its start keypoint's Gaussian instead.
    fallback = _point_maps(
        ax, ay, v[..., ia], on & short, h, w, sigma, lo_x, hi_x, lo_y, hi_y
    )
    return jnp.maximum(seg, fallback)


@functools.partial(
    jax.jit,
    static_argnames=("img_shape", "sigma", "use_score", "with_kp", "with_limb", "limbs"),
)
def heatmaps_from_keypoints(
    keypoints: jax.Array,
    img_shape: tuple[int, int] = (56, 56),
    sigma: float = 0.6,
    use_score: bool = True,
    with_kp: bool = True,
    with_limb: bool = False,
    limbs: tuple[tuple[int, int], ...] = COCO_LIMBS,
) -> jax.Array:
    """Heatmaps (..., T, H, W, C) float32 from keypoints (..., M, T, V, 3) = (x, y, score).

    Leading batch dimensions are kept, e.g. (N, M, T, 17, 3) -> (N, T, 56, 56, 17). The
    numbers equal ``generate_heatmaps`` (numpy) to float32 rounding of ``exp``; the
    channel order is the same (keypoints, then limbs).
    """
    if keypoints.ndim < 4 or keypoints.shape[-1] != 3:
        raise ValueError(f"expected keypoints of shape (..., M, T, V, 3), got {keypoints.shape}")
    if not (with_kp or with_limb):
        raise ValueError("expected with_kp or with_limb to be set")
    h, w = img_shape
    lo_x, hi_x = window_thresholds(w, sigma)
    lo_y, hi_y = window_thresholds(h, sigma)
    kp = keypoints.astype(jnp.float32)
    out = None
    for m in range(kp.shape[-4]):  # persons: a running max keeps memory at one person
        person = kp[..., m, :, :, :]
        score = person[..., 2]
        present = score >= 0
        v = score if use_score else jnp.ones_like(score)
        maps = []
        if with_kp:
            keep = present & (v >= _score_floor())
            maps.append(
                _point_maps(
                    person[..., 0], person[..., 1], v, keep, h, w, sigma, lo_x, hi_x, lo_y, hi_y
                )
            )
        if with_limb:
            maps.append(
                _limb_maps(
                    person[..., :2], v, present, h, w, sigma, limbs, lo_x, hi_x, lo_y, hi_y
                )
            )
        cur = maps[0] if len(maps) == 1 else jnp.concatenate(maps, axis=-1)
        out = cur if out is None else jnp.maximum(out, cur)
    if out is None:
        raise ValueError("expected at least one person (M >= 1)")
    return out

