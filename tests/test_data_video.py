"""RGB decoding of sampled frames, from the real NTU clip and from frame folders."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from epam_jax.data import (
    decode_video_frames,
    load_frames,
    read_frame_folder,
    rgb_indices,
    uniform_sample_indices,
    video_frame_count,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NTU = SHARED / "ntu_S001C001P001R001A001_rgb.avi"


def ntu_clip() -> Path:
    if not NTU.is_file():
        pytest.skip(f"real NTU clip not found at {NTU} (needs ../shared/data beside the project)")
    return NTU


def all_frames(path: Path, size: tuple[int, int]) -> list[np.ndarray]:
    """Every frame converted the same way, by a plain decode loop."""
    with av.open(str(path)) as container:
        return [
            f.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA")
            .to_ndarray()
            for f in container.decode(video=0)
        ]


def test_ntu_clip_sampled_frames_equal_full_decode() -> None:
    path = ntu_clip()
    assert video_frame_count(path) == 103
    inds = rgb_indices(uniform_sample_indices(103, 48, test_mode=True))
    start = time.perf_counter()
    frames = decode_video_frames(path, inds)
    elapsed = time.perf_counter() - start
    assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8
    reference = all_frames(path, (112, 112))
    small = decode_video_frames(path, inds[::-1], size=(112, 112))  # any order
    for k, i in enumerate(inds[::-1]):
        np.testing.assert_array_equal(small[k], reference[i])
    assert frames.std() > 10  # real content, not a blank frame
    print(f"decoded 16 of 103 1080p frames in {elapsed:.3f}s")


def test_repeats_native_size_and_bounds() -> None:
    path = ntu_clip()
    out = decode_video_frames(path, [5, 5, 0], size=None)
    assert out.shape == (3, 1080, 1920, 3)
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(ValueError, match="has 103 frames; frame index 103 requested"):
        decode_video_frames(path, [0, 103], size=(32, 32))
    clamped = decode_video_frames(path, [102, 150], size=(32, 32), clamp=True)
    np.testing.assert_array_equal(clamped[0], clamped[1])


def test_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer frame indices"):
        decode_video_frames(tmp_path / "x.mp4", [])
    with pytest.raises(ValueError, match=">= 0"):
        decode_video_frames(tmp_path / "x.mp4", [-1])
    with pytest.raises(ValueError, match="no video file or frame folder"):
        load_frames(tmp_path / "missing.mp4", [0])
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open video"):
        decode_video_frames(tmp_path / "junk.mp4", [0])
    with pytest.raises(ValueError, match="size"):
        decode_video_frames(tmp_path / "junk.mp4", [0], size=(0, 4))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frame_folder(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    images = [np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
              for _ in range(5)]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"img_{i + 1:05d}.{ext}")
    (tmp_path / "notes.txt").write_text("ignored")
    out = read_frame_folder(tmp_path, [4, 0, 4], size=None)
    assert out.shape == (3, 48, 64, 3)
    for got, want in ((out[0], images[4]), (out[1], images[0])):
        err = np.abs(got.astype(np.int16) - want)
        assert (err.max() == 0) if ext == "png" else (err.mean() < 12)  # jpg is lossy
    resized = load_frames(tmp_path, [1, 2], size=(24, 32))
    assert resized.shape == (2, 24, 32, 3)
    with pytest.raises(ValueError, match="has 5 frames; frame index 5"):
        read_frame_folder(tmp_path, [5])
    assert read_frame_folder(tmp_path, [9], size=(24, 32), clamp=True).shape == (1, 24, 32, 3)


def test_empty_frame_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no"):
        read_frame_folder(tmp_path, [0])
