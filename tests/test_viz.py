"""epam_jax.viz: attention pictures (PNG grid and GIF), their errors, and nothing left
half-written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from epam_jax.cli import atomic_output
from epam_jax.data import (
    normalize_rgb,
)
from epam_jax.viz import COLORMAP, denormalize_rgb, overlay, save_attention_pictures


def blob_clip(t: int = 16, h: int = 48, w: int = 80):
    """Grey frames and a 7x7 attention map hot in the left-top cell region, moving."""
    frames = np.full((t, h, w, 3), 128, np.uint8)
    att = np.full((t, 7, 7), 0.1, np.float32)
    for i in range(t):
        att[i, 1, i % 7] = 0.9
    return frames, att


def test_attention_pictures_png_grid_and_gif(tmp_path: Path) -> None:
    frames, att = blob_clip()
    paths = save_attention_pictures(frames, att[..., None], tmp_path / "a" / "att.png",
                                    tmp_path / "att.gif", title="blob")
    assert paths == [tmp_path / "a" / "att.png", tmp_path / "att.gif"]
    with Image.open(paths[0]) as png:
        assert png.format == "PNG" and png.size[0] >= 8 * 80 and png.size[1] > 2 * 48
    with Image.open(paths[1]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 16 and gif.info.get("loop") == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "att.gif", "att.png"]
    # The hot cell gets the top of the colour map, the cold rest the bottom, blended.
    blended = overlay(frames, att)
    hot = blended[0, int(1.5 * 48 / 7), int(0.5 * 80 / 7)].astype(int)
    cold = blended[0, int(5.5 * 48 / 7), int(5.5 * 80 / 7)].astype(int)
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0] + 40
    expect_cold = np.round(0.55 * 128 + 0.45 * COLORMAP[0].astype(float))
    np.testing.assert_allclose(cold, expect_cold, atol=1)
    # the blob moves one cell to the right per frame, and so does the picture's hot spot
    col = [np.argmax(blended[i, int(1.5 * 48 / 7), :, 0]) for i in range(7)]
    assert np.all(np.diff(col) > 0)


def test_attention_pictures_reject_bad_inputs(tmp_path: Path) -> None:
    frames, att = blob_clip()
    with pytest.raises(ValueError, match="same number of frames T.*16 frames and 8"):
        save_attention_pictures(frames, att[:8], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        save_attention_pictures(frames.astype(np.float32), att, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(T, h, w\)"):
        save_attention_pictures(frames, att[None], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        save_attention_pictures(frames[..., :1], att, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_pictures_refuse_unwritable_directory_and_leave_nothing_half_written(
    tmp_path: Path, monkeypatch
) -> None:
    frames, att = blob_clip()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot create the picture directory"):
        save_attention_pictures(frames, att, blocker / "sub" / "x.png")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            save_attention_pictures(frames, att, locked / "x.png")
    # a failure in the middle of a write leaves neither the file nor a temporary one
    target = tmp_path / "out" / "x.png"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"\x89PNG half")
            raise RuntimeError("disk full")
    assert list((tmp_path / "out").iterdir()) == []

    from epam_jax import extract

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(extract.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        extract.write_npz(tmp_path / "out" / "clip.npz", {"a": np.zeros(3)})
    assert list((tmp_path / "out").iterdir()) == []


def test_denormalize_inverts_normalize() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(denormalize_rgb(normalize_rgb(frames)), frames)
