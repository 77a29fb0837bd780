"""Pose heatmaps of the original pipeline (sec. 6a of the spec), vectorised with numpy.

Per frame and channel: a Gaussian of ``sigma`` at each person's keypoint, scaled by its
score, drawn only inside the 3-sigma window with int-truncated bounds, skipped below a
score of 1e-4, max over persons. Window bounds are computed in float64 as the original's
numpy 1.x scalar arithmetic did; the Gaussians of keypoints are float32 and those of limbs
are float64 rounded to float32, again as in the original.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-4
COCO_LIMBS = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (5, 7), (7, 9), (0, 6), (6, 8),
    (8, 10), (5, 11), (11, 13), (13, 15), (6, 12), (12, 14), (14, 16), (11, 12),
)  # fmt: skip


def _window(lo: np.ndarray, hi: np.ndarray, sigma: float, size: int) -> tuple[np.ndarray, ...]:
    """int-truncated [start, end) window bounds around [lo, hi], in float64 like the original."""
    c = 3 * sigma
    start = np.maximum(np.trunc(lo.astype(np.float64) - c), 0).astype(np.int64)
    end = np.minimum(np.trunc(hi.astype(np.float64) + c) + 1, size).astype(np.int64)
    return start, end


def _point_maps(
    mu: np.ndarray, value: np.ndarray, img_shape: tuple[int, int], sigma: float
) -> np.ndarray:
    """Keypoint Gaussians: mu (M, T, C, 2), value (M, T, C) -> (T, H, W, C) float32."""
    n_person, n_frame, n_chan = value.shape
    h, w = img_shape
    out = np.zeros(n_frame * h * w * n_chan + 1, np.float32)  # last slot absorbs masked writes
    if n_person == 0:
        return out[:-1].reshape(n_frame, h, w, n_chan)
    mu = mu.astype(np.float32, copy=False)
    value = value.astype(np.float32, copy=False)
    mx, my = mu[..., 0], mu[..., 1]
    sx, ex = _window(mx, mx, sigma, w)
    sy, ey = _window(my, my, sigma, h)
    size = int(2 * 3 * sigma) + 2  # widest possible window
    steps = np.arange(size)
    px = sx[..., None] + steps  # (M, T, C, P)
    py = sy[..., None] + steps
    dx2 = (px.astype(np.float32) - mx[..., None]) ** 2
    dy2 = (py.astype(np.float32) - my[..., None]) ** 2
    d2 = dx2[..., None, :] + dy2[..., :, None]  # (M, T, C, Py, Px)
    patch = np.exp(-d2 / 2 / sigma**2) * value[..., None, None]
    keep = (value.astype(np.float64) >= EPS)[..., None, None]
    keep = keep & (px < ex[..., None])[..., None, :] & (py < ey[..., None])[..., :, None]
    t = np.arange(n_frame)[None, :, None, None, None]
    c = np.arange(n_chan)[None, None, :, None, None]
    flat = ((t * h + py[..., :, None]) * w + px[..., None, :]) * n_chan + c
    flat = np.where(keep, flat, out.size - 1)
    for m in range(n_person):  # within one person every kept pixel is written once
        idx = flat[m].ravel()
        out[idx] = np.maximum(out[idx], patch[m].ravel())
    return out[:-1].reshape(n_frame, h, w, n_chan)


def _limb_maps(
    keypoint: np.ndarray,
    value: np.ndarray,
    img_shape: tuple[int, int],
    sigma: float,
    limbs: tuple[tuple[int, int], ...],
) -> np.ndarray:
    """Limb Gaussians of the distance to each segment -> (T, H, W, L) float32."""
    n_person, n_frame = keypoint.shape[:2]
    h, w = img_shape
    ia = np.array([a for a, _ in limbs])
    ib = np.array([b for _, b in limbs])
    start, end = keypoint[:, :, ia], keypoint[:, :, ib]  # (M, T, L, 2)
    v_start, v_end = value[:, :, ia], value[:, :, ib]
    v = np.minimum(v_start, v_end)
    ax, ay, bx, by = start[..., 0], start[..., 1], end[..., 0], end[..., 1]
    d2_ab = (ax - bx) ** 2 + (ay - by) ** 2
    short = d2_ab < 1
    active = v.astype(np.float64) >= EPS
    sx, ex = _window(np.minimum(ax, bx), np.maximum(ax, bx), sigma, w)
    sy, ey = _window(np.minimum(ay, by), np.maximum(ay, by), sigma, h)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]
    out = np.zeros((n_frame, len(limbs), h, w), np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for m in range(n_person):
            e = (slice(None), slice(None), None, None)
            pax, pay, pbx, pby = ax[m][e], ay[m][e], bx[m][e], by[m][e]
            dab = d2_ab[m][e]
            d2_a = (xs - pax) ** 2 + (ys - pay) ** 2
            d2_b = (xs - pbx) ** 2 + (ys - pby) ** 2
            coeff = (d2_a - d2_b + dab) / 2.0 / dab
            proj_x = pax + coeff * (pbx - pax)
            proj_y = pay + coeff * (pby - pay)
            d2_line = (xs - proj_x) ** 2 + (ys - proj_y) ** 2
            d2 = np.where(coeff <= 0, d2_a, np.where(coeff >= 1, d2_b, d2_line))
            inside = (
                (xs >= sx[m][e]) & (xs < ex[m][e]) & (ys >= sy[m][e]) & (ys < ey[m][e])
            )
            keep = inside & (active[m] & ~short[m])[e]
            vals = np.broadcast_to(v[m][e], keep.shape)[keep].astype(np.float64)
            patch = np.exp(-d2[keep].astype(np.float64) / 2.0 / sigma**2) * vals
            out[keep] = np.maximum(out[keep], patch.astype(np.float32))
    out = out.transpose(0, 2, 3, 1)
    # A limb shorter than one pixel draws its start keypoint's Gaussian instead.
    fallback_value = np.where(active & short, v_start, 0).astype(np.float32)
    if fallback_value.any():
        np.maximum(out, _point_maps(start, fallback_value, img_shape, sigma), out=out)
    return out


def generate_heatmaps(
    keypoint: np.ndarray,
    keypoint_score: np.ndarray | None,
    img_shape: tuple[int, int],
    sigma: float = 0.6,
    use_score: bool = True,
    with_kp: bool = True,
    with_limb: bool = False,
    limbs: tuple[tuple[int, int], ...] = COCO_LIMBS,
) -> np.ndarray:
    """Heatmaps (T, H, W, C) float32 from keypoints (M, T, V, 2) in ``img_shape`` pixels.

    Channels are the V keypoint maps (``with_kp``) followed by one map per limb
    (``with_limb``). Scores (M, T, V) scale the Gaussians when ``use_score``; without
    scores every keypoint has value 1.
    """
    kp = np.asarray(keypoint)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"expected keypoint of shape (M, T, V, 2), got {kp.shape}")
    if not np.isfinite(kp).all():
        raise ValueError("keypoint holds NaN or inf; map missing joints to 0 first")
    if keypoint_score is None:
        score = np.ones(kp.shape[:3], np.float32)
    else:
        score = np.asarray(keypoint_score)
        if score.shape != kp.shape[:3]:
            raise ValueError(f"expected keypoint_score of shape {kp.shape[:3]}, got {score.shape}")
    if len(img_shape) != 2 or min(img_shape) <= 0:
        raise ValueError(f"expected img_shape (H, W) > 0, got {img_shape}")
    if sigma <= 0:
        raise ValueError(f"expected sigma > 0, got {sigma}")
    if not (with_kp or with_limb):
        raise ValueError("expected with_kp or with_limb to be set")
    img_shape = (int(img_shape[0]), int(img_shape[1]))
    kp = kp.astype(np.float32, copy=False)
    value = score.astype(np.float32) if use_score else np.ones(score.shape, np.float32)
    maps = []
    if with_kp:
        maps.append(_point_maps(kp, value, img_shape, sigma))
    if with_limb:
        if max(max(limb) for limb in limbs) >= kp.shape[2]:
            raise ValueError(f"limbs reference joints beyond V={kp.shape[2]}")
        maps.append(_limb_maps(kp, value, img_shape, sigma, limbs))
    return maps[0] if len(maps) == 1 else np.concatenate(maps, axis=-1)


def pack_keypoints(
    keypoint: np.ndarray, keypoint_score: np.ndarray | None, num_persons: int | None = None
) -> np.ndarray:
    """Pack (M, T, V, 2) keypoints and (M, T, V) scores into (P, T, V, 3) float32 for
    ``heatmaps_from_keypoints``, padding to ``num_persons`` with absent persons (score -1)
    or keeping the ``num_persons`` persons of highest total score."""
    kp = np.asarray(keypoint, np.float32)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise ValueError(f"expected keypoint of shape (M, T, V, 2), got {kp.shape}")
    score = np.ones(kp.shape[:3], np.float32) if keypoint_score is None else keypoint_score
    score = np.asarray(score, np.float32)
    if score.shape != kp.shape[:3]:
        raise ValueError(f"expected keypoint_score of shape {kp.shape[:3]}, got {score.shape}")
    packed = np.concatenate([kp, score[..., None]], axis=-1)
    if num_persons is None:
        return packed
    if num_persons <= 0:
        raise ValueError(f"expected num_persons > 0, got {num_persons}")
    m = packed.shape[0]
    if m > num_persons:
        order = np.argsort(-score.reshape(m, -1).sum(axis=1), kind="stable")[:num_persons]
        return packed[np.sort(order)]
    pad = np.zeros((num_persons - m, *packed.shape[1:]), np.float32)
    pad[..., 2] = -1.0
    return np.concatenate([packed, pad], axis=0)
