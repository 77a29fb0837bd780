"""Heatmaps against a straightforward implementation of spec sec. 6a, and JAX vs numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epam_jax.data import COCO_LIMBS, generate_heatmaps, pack_keypoints
from epam_jax.data.heatmaps_jax import heatmaps_from_keypoints

SIGMA = 0.6


def ref_gaussian(hm: np.ndarray, mu_x, mu_y, value, sigma: float = SIGMA) -> None:
    """Draw one keypoint, pixel by pixel (sec. 6a); all arithmetic float32 except the
    window bounds, which the original computed with float64 scalars."""
    h, w = hm.shape
    if float(value) < 1e-4:
        return
    st_x, ed_x = max(int(float(mu_x) - 3 * sigma), 0), min(int(float(mu_x) + 3 * sigma) + 1, w)
    st_y, ed_y = max(int(float(mu_y) - 3 * sigma), 0), min(int(float(mu_y) + 3 * sigma) + 1, h)
    two, s2 = np.float32(2), np.float32(sigma**2)
    for y in range(st_y, ed_y):
        for x in range(st_x, ed_x):
            dx, dy = np.float32(x) - mu_x, np.float32(y) - mu_y
            patch = np.exp(-(dx * dx + dy * dy) / two / s2) * value
            hm[y, x] = max(hm[y, x], patch)


def ref_limb(hm: np.ndarray, a, b, va, vb, sigma: float = SIGMA) -> None:
    """Draw one limb (sec. 6a): squared distance to the segment in float32, Gaussian in
    float64 rounded to float32, as the original's array code promoted it."""
    h, w = hm.shape
    value = min(va, vb)
    if float(value) < 1e-4:
        return
    st_x = max(int(float(min(a[0], b[0])) - 3 * sigma), 0)
    ed_x = min(int(float(max(a[0], b[0])) + 3 * sigma) + 1, w)
    st_y = max(int(float(min(a[1], b[1])) - 3 * sigma), 0)
    ed_y = min(int(float(max(a[1], b[1])) + 3 * sigma) + 1, h)
    if st_x >= ed_x or st_y >= ed_y:
        return
    d2_ab = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    if d2_ab < 1:
        ref_gaussian(hm, a[0], a[1], va, sigma)
        return
    for y in range(st_y, ed_y):
        for x in range(st_x, ed_x):
            px, py = np.float32(x), np.float32(y)
            d2_a = (px - a[0]) ** 2 + (py - a[1]) ** 2
            d2_b = (px - b[0]) ** 2 + (py - b[1]) ** 2
            t = (d2_a - d2_b + d2_ab) / np.float32(2) / d2_ab
            if t <= 0:
                d2 = d2_a
            elif t >= 1:
                d2 = d2_b
            else:
                qx, qy = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
                d2 = (px - qx) ** 2 + (py - qy) ** 2
            patch = np.float32(np.exp(-float(d2) / 2 / sigma**2) * float(value))
            hm[y, x] = max(hm[y, x], patch)


def ref_heatmaps(kp, score, shape, use_score=True, with_kp=True, with_limb=False, frames=None):
    n_person, n_frame = kp.shape[:2]
    frames = range(n_frame) if frames is None else frames
    value = score if use_score else np.ones_like(score)
    out = []
    for t in frames:
        chans = []
        if with_kp:
            for k in range(kp.shape[2]):
                hm = np.zeros(shape, np.float32)
                for m in range(n_person):
                    ref_gaussian(hm, kp[m, t, k, 0], kp[m, t, k, 1], value[m, t, k])
                chans.append(hm)
        if with_limb:
            for i, j in COCO_LIMBS:
                hm = np.zeros(shape, np.float32)
                for m in range(n_person):
                    ref_limb(hm, kp[m, t, i], kp[m, t, j], value[m, t, i], value[m, t, j])
                chans.append(hm)
        out.append(np.stack(chans, -1))
    return np.stack(out)


def random_pose(seed: int, persons: int = 2, frames: int = 6, size: int = 56):
    """Keypoints spread over and beyond the frame, with zero, tiny and boundary scores."""
    rng = np.random.default_rng(seed)
    kp = rng.uniform(-4, size + 4, (persons, frames, 17, 2)).astype(np.float32)
    score = rng.uniform(0, 1, (persons, frames, 17)).astype(np.float32)
    score[rng.random(score.shape) < 0.15] = 0
    flat = score.reshape(-1)
    flat[:4] = [1e-4, np.nextafter(np.float32(1e-4), np.float32(1)), 9e-5, 1.0]
    return kp, score


def edge_pose() -> tuple[np.ndarray, np.ndarray]:
    """Centres right at the int-truncation boundaries of the 3-sigma window."""
    c = 3 * SIGMA
    vals = []
    for p in (0, 1, 2, 5, 30, 54, 55):
        for base in (p - 1 + c, p - c, p + c, -1 - c, -c):
            f = np.float32(base)
            vals += [f, np.nextafter(f, np.float32(-99)), np.nextafter(f, np.float32(99))]
    vals += [0.0, -0.5, -2.5, -2.81, 55.5, 56.0, 56.9, 57.9]
    vals = np.array(vals, np.float32)
    n = len(vals)
    kp = np.zeros((1, n, 17, 2), np.float32)
    kp[0, :, :, 0] = vals[:, None]
    kp[0, :, :, 1] = np.roll(vals, 7)[:, None]
    kp[0, :, 1::2, 1] = 28.0  # odd joints: vary x only
    score = np.full((1, n, 17), 0.9, np.float32)
    return kp, score


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("use_score", [True, False])
def test_keypoint_heatmaps_equal_reference(seed: int, use_score: bool) -> None:
    kp, score = random_pose(seed)
    got = generate_heatmaps(kp, score, (56, 56), use_score=use_score)
    assert got.shape == (6, 56, 56, 17) and got.dtype == np.float32
    want = ref_heatmaps(kp, score, (56, 56), use_score=use_score)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    assert got.max() > 0.5


def test_keypoint_heatmaps_at_window_boundaries() -> None:
    kp, score = edge_pose()
    got = generate_heatmaps(kp, score, (56, 56))
    np.testing.assert_allclose(got, ref_heatmaps(kp, score, (56, 56)), rtol=0, atol=1e-7)


def test_heatmaps_non_square_and_tail_cut() -> None:
    kp = np.array([[[[10.3, 4.6]] * 17]], np.float32)
    score = np.ones((1, 1, 17), np.float32)
    got = generate_heatmaps(kp, score, (20, 40))
    assert got.shape == (1, 20, 40, 17)
    np.testing.assert_allclose(got, ref_heatmaps(kp, score, (20, 40)), rtol=0, atol=1e-7)
    # outside the 3-sigma window the Gaussian tail (here ~4e-3) is cut to exactly 0
    assert got[0, 4, 13, 0] == 0 and got[0, 4, 12, 0] > 1e-3


def test_limb_heatmaps_equal_reference() -> None:
    kp, score = random_pose(3, persons=2, frames=2, size=40)
    kp[0, 0, 5] = kp[0, 0, 7] + 0.3  # a limb shorter than a pixel: start Gaussian
    score[0, 0, 5], score[0, 0, 7] = 0.8, 0.3
    got = generate_heatmaps(kp, score, (40, 40), with_limb=True)
    assert got.shape == (2, 40, 40, 34)
    want = ref_heatmaps(kp, score, (40, 40), with_limb=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    limbs_only = generate_heatmaps(kp, score, (40, 40), with_kp=False, with_limb=True)
    np.testing.assert_array_equal(limbs_only, got[..., 17:])


def test_bad_inputs() -> None:
    kp, score = random_pose(0, frames=1)
    with pytest.raises(ValueError, match=r"\(M, T, V, 2\)"):
        generate_heatmaps(kp[..., :1], score, (56, 56))
    with pytest.raises(ValueError, match="keypoint_score of shape"):
        generate_heatmaps(kp, score[:1], (56, 56))
    kp[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        generate_heatmaps(kp, score, (56, 56))


def test_pack_keypoints_pads_and_truncates() -> None:
    kp, score = random_pose(0, persons=3, frames=2)
    packed = pack_keypoints(kp, score, 5)
    assert packed.shape == (5, 2, 17, 3)
    assert np.all(packed[3:, ..., 2] == -1)
    score[1] = 0  # the weakest person is dropped
    kept = pack_keypoints(kp, score, 2)
    np.testing.assert_array_equal(kept[:, ..., :2], kp[[0, 2]])


@pytest.mark.parametrize("with_limb", [False, True])
@pytest.mark.parametrize("use_score", [True, False])
def test_jax_equals_numpy_batched(with_limb: bool, use_score: bool) -> None:
    batch, packed = [], []
    for seed in range(3):
        kp, score = random_pose(10 + seed, persons=1 + seed % 2, frames=4)
        batch.append(generate_heatmaps(kp, score, (56, 56), use_score=use_score,
                                       with_limb=with_limb))
        packed.append(pack_keypoints(kp, score, 3))
    kp, score = edge_pose()
    batch.append(generate_heatmaps(kp[:, :4], score[:, :4], (56, 56), use_score=use_score,
                                   with_limb=with_limb))
    packed.append(pack_keypoints(kp[:, :4], score[:, :4], 3))
    got = heatmaps_from_keypoints(
        jnp.asarray(np.stack(packed)), use_score=use_score, with_limb=with_limb
    )
    assert got.shape == (4, 4, 56, 56, 34 if with_limb else 17)
    assert np.abs(np.asarray(got) - np.stack(batch)).max() <= 1e-6


def test_jax_boundaries_and_unbatched() -> None:
    kp, score = edge_pose()
    want = generate_heatmaps(kp, score, (56, 56))
    got = heatmaps_from_keypoints(pack_keypoints(kp, score))
    assert got.shape == want.shape
    assert np.abs(np.asarray(got) - want).max() <= 1e-6


def test_jax_heatmaps_inside_a_jitted_train_step() -> None:
    kp, score = random_pose(5, persons=2, frames=4)
    keypoints = jnp.asarray(pack_keypoints(kp, score, 2)[None])
    expected = generate_heatmaps(kp, score, (56, 56))[None]

    @jax.jit
    def step(w: jax.Array, keypoints: jax.Array) -> tuple[jax.Array, jax.Array]:
        def loss(w):
            hm = heatmaps_from_keypoints(keypoints)
            return jnp.mean((hm * w - 1.0) ** 2)

        value, grad = jax.value_and_grad(loss)(w)
        return value, w - 0.1 * grad

    w = jnp.ones((17,), jnp.float32)
    value, new_w = step(w, keypoints)
    want = np.mean((expected.astype(np.float64) - 1.0) ** 2)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    assert new_w.shape == (17,) and bool(jnp.all(jnp.isfinite(new_w)))


def test_jax_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., M, T, V, 3\)"):
        heatmaps_from_keypoints(jnp.zeros((2, 4, 17, 2)))
