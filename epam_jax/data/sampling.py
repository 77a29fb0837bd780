"""Frame sampling of the original pipeline (PoseC3D's UniformSampleFrames)."""

from __future__ import annotations

import numpy as np

TEST_SEED = 255


def _randint(rng: np.random.Generator | np.random.RandomState, low: int, high: int) -> int:
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(low, high))
    return int(rng.integers(low, high))


def _randint_upto(
    rng: np.random.Generator | np.random.RandomState, highs: np.ndarray
) -> np.ndarray:
    if isinstance(rng, np.random.RandomState):
        return rng.randint(highs)
    return rng.integers(highs)


def uniform_sample_indices(
    total_frames: int,
    clip_len: int = 48,
    test_mode: bool = False,
    rng: np.random.Generator | np.random.RandomState | None = None,
    seed: int = TEST_SEED,
) -> np.ndarray:
    """Sample ``clip_len`` frame indices from a video of ``total_frames`` frames.

    Rules (train): T < clip_len: a random start and consecutive indices modulo T;
    clip_len <= T < 2*clip_len: consecutive indices with T - clip_len random single skips;
    otherwise one random frame from each of the clip_len segments split at i*T//clip_len.
    Test mode is deterministic: start 0 in the first case, and the other cases draw from
    ``np.random.RandomState(seed)`` with the same legacy calls the original makes after
    ``np.random.seed(255)``, so the indices equal the original's without touching numpy's
    global state. ``rng`` (train mode only) may be a Generator or a legacy RandomState; a
    RandomState seeded like numpy's global generator reproduces the original's draws.
    """
    total_frames = int(total_frames)
    clip_len = int(clip_len)
    if total_frames <= 0:
        raise ValueError(f"expected total_frames > 0, got {total_frames}")
    if clip_len <= 0:
        raise ValueError(f"expected clip_len > 0, got {clip_len}")
    if test_mode:
        return eval_clip_indices(total_frames, clip_len, 1, seed)[0]
    if rng is None:
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator | np.random.RandomState):
        raise ValueError(f"expected rng to be a numpy Generator or RandomState, got {rng!r}")
    start = _randint(rng, 0, total_frames) if total_frames < clip_len else 0
    return _one_clip(total_frames, clip_len, rng, start)


def eval_clip_indices(
    total_frames: int, clip_len: int = 48, num_clips: int = 1, seed: int = TEST_SEED
) -> np.ndarray:
    """Test-mode indices of ``num_clips`` clips, (num_clips, clip_len), as PoseC3D's
    UniformSampleFrames(num_clips=K, test_mode=True): one legacy RandomState(seed) drawn
    from clip after clip; a video shorter than ``clip_len`` starts clip i at frame i when
    it has fewer than K frames, else at i * T // K. Clip 0 is the one-clip sample."""
    total_frames, clip_len, num_clips = int(total_frames), int(clip_len), int(num_clips)
    if total_frames <= 0 or clip_len <= 0 or num_clips <= 0:
        raise ValueError(
            f"expected total_frames, clip_len and num_clips > 0, got {total_frames}, "
            f"{clip_len}, {num_clips}"
        )
    rng = np.random.RandomState(seed)
    clips = []
    for i in range(num_clips):
        start = i if total_frames < num_clips else i * total_frames // num_clips
        clips.append(_one_clip(total_frames, clip_len, rng, start))
    return np.stack(clips)


def _one_clip(
    total_frames: int,
    clip_len: int,
    rng: np.random.Generator | np.random.RandomState,
    start: int,
) -> np.ndarray:
    """One clip by the three rules; ``start`` is used only when T < clip_len."""
    if total_frames < clip_len:
        inds = np.arange(start, start + clip_len)
    elif total_frames < 2 * clip_len:
        skips = rng.choice(clip_len + 1, total_frames - clip_len, replace=False)
        offset = np.zeros(clip_len + 1, dtype=np.int64)
        offset[skips] = 1
        inds = np.arange(clip_len) + np.cumsum(offset)[:-1]
    else:
        bounds = np.arange(clip_len + 1) * total_frames // clip_len
        inds = bounds[:-1] + _randint_upto(rng, np.diff(bounds))
    return np.mod(inds, total_frames).astype(np.int64)


def rgb_indices(pose_indices: np.ndarray, stride: int = 3) -> np.ndarray:
    """RGB frame indices taken from the pose indices: every ``stride``-th one (48 -> 16)."""
    if stride <= 0:
        raise ValueError(f"expected stride > 0, got {stride}")
    return np.asarray(pose_indices)[::stride]
