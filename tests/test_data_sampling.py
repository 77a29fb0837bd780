"""Frame sampling against a literal reading of the original rule (spec sec. 6, step 1)."""

# The reference deliberately uses numpy's legacy global generator, as the original did.
# ruff: noqa: NPY002

from __future__ import annotations

import numpy as np
import pytest

from epam_jax.data import eval_clip_indices, rgb_indices, uniform_sample_indices


def reference_indices(total: int, clip_len: int, test_mode: bool) -> list[int]:
    """The rule written out with numpy's legacy global generator, as the original calls
    it (test mode seeds it with 255 first). The caller saves/restores the global state."""
    if test_mode:
        np.random.seed(255)
    if total < clip_len:
        start = 0 if test_mode else np.random.randint(0, total)
        return [(start + i) % total for i in range(clip_len)]
    if total < 2 * clip_len:
        # choice(clip_len + 1, k, replace=False) is the head of a legacy permutation
        skip_before = set(np.random.permutation(clip_len + 1)[: total - clip_len].tolist())
        out, skipped = [], 0
        for i in range(clip_len):
            skipped += i in skip_before
            out.append((i + skipped) % total)
        return out
    out = []
    for i in range(clip_len):
        lo, hi = i * total // clip_len, (i + 1) * total // clip_len
        out.append(lo + np.random.randint(hi - lo))
    return out


@pytest.fixture
def global_rng_guard():
    state = np.random.get_state()
    yield
    np.random.set_state(state)


GRID = [*range(1, 200), 211, 255, 300, 517, 1000, 4099]


@pytest.mark.parametrize("clip_len", [48, 8])
def test_test_mode_equals_original(clip_len: int, global_rng_guard) -> None:
    for total in GRID:
        expected = reference_indices(total, clip_len, test_mode=True)
        np.random.seed(12345)
        before = np.random.get_state()[1].copy()
        got = uniform_sample_indices(total, clip_len, test_mode=True)
        # numpy's global generator is left alone
        assert np.array_equal(np.random.get_state()[1], before)
        assert got.dtype == np.int64 and got.shape == (clip_len,)
        assert got.tolist() == expected, total


def reference_test_clips(total: int, clip_len: int, num_clips: int) -> list[list[int]]:
    """K test clips as PoseC3D draws them: one np.random.seed(255), then clip after clip
    from the same global stream; short videos start clip i at i or i * T // K."""
    np.random.seed(255)
    clips = []
    for i in range(num_clips):
        if total < clip_len:
            start = i if total < num_clips else i * total // num_clips
            clips.append([(start + j) % total for j in range(clip_len)])
        elif total < 2 * clip_len:
            skip_before = set(np.random.permutation(clip_len + 1)[: total - clip_len].tolist())
            out, skipped = [], 0
            for j in range(clip_len):
                skipped += j in skip_before
                out.append((j + skipped) % total)
            clips.append(out)
        else:
            clips.append([j * total // clip_len + np.random.randint(
                (j + 1) * total // clip_len - j * total // clip_len) for j in range(clip_len)])
    return clips


@pytest.mark.parametrize("num_clips", [1, 3, 10])
def test_multi_clip_test_mode_equals_posec3d(num_clips: int, global_rng_guard) -> None:
    for total in [*range(1, 120, 7), 5, 9, 10, 11, 47, 48, 95, 96, 103, 300]:
        got = eval_clip_indices(total, 48, num_clips)
        assert got.shape == (num_clips, 48) and got.dtype == np.int64
        assert got.tolist() == reference_test_clips(total, 48, num_clips), total
        assert got[0].tolist() == uniform_sample_indices(total, 48, True).tolist()
    with pytest.raises(ValueError, match="num_clips"):
        eval_clip_indices(100, 48, 0)


@pytest.mark.parametrize("clip_len", [48, 8])
def test_train_mode_equals_original_with_same_legacy_stream(clip_len: int, global_rng_guard):
    for total in GRID:
        seed = 1000 + total
        np.random.seed(seed)
        expected = reference_indices(total, clip_len, test_mode=False)
        got = uniform_sample_indices(total, clip_len, False, rng=np.random.RandomState(seed))
        assert got.tolist() == expected, total


def test_train_mode_properties_with_generator() -> None:
    rng = np.random.default_rng(0)
    for total in GRID:
        got = uniform_sample_indices(total, 48, False, rng=rng)
        assert got.shape == (48,) and got.min() >= 0 and got.max() < total
        if total >= 48:  # strictly increasing without wrap
            assert np.all(np.diff(got) > 0)
        if total >= 96:  # one frame inside each segment
            bounds = np.arange(49) * total // 48
            assert np.all((got >= bounds[:-1]) & (got < bounds[1:]))
        if 48 <= total < 96:  # exactly total - 48 single skips
            assert got[-1] - got[0] + 1 - 48 <= total - 48
            assert np.all(np.diff(got) <= 2)


def test_train_mode_varies_and_test_mode_does_not() -> None:
    rng = np.random.default_rng(1)
    draws = {tuple(uniform_sample_indices(150, 48, False, rng=rng)) for _ in range(5)}
    assert len(draws) > 1
    tests = {tuple(uniform_sample_indices(150, 48, True)) for _ in range(3)}
    assert len(tests) == 1


def test_short_video_wraps_consecutively() -> None:
    got = uniform_sample_indices(10, 48, True)
    assert got.tolist() == [i % 10 for i in range(48)]
    got = uniform_sample_indices(10, 48, False, rng=np.random.default_rng(3))
    assert np.all((np.diff(got) == 1) | (np.diff(got) == -9))


def test_rgb_indices_every_third() -> None:
    pose = uniform_sample_indices(103, 48, True)
    assert rgb_indices(pose).tolist() == pose[0::3].tolist()
    assert rgb_indices(pose).shape == (16,)


@pytest.mark.parametrize("args", [(0, 48), (-3, 48), (10, 0)])
def test_bad_arguments(args) -> None:
    with pytest.raises(ValueError, match="expected"):
        uniform_sample_indices(*args, test_mode=True)
    with pytest.raises(ValueError, match="rng"):
        uniform_sample_indices(100, 48, False, rng=42)
