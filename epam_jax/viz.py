"""Attention pictures: EPAM-Net's spatial x temporal attention drawn over the RGB frames.

The model's attention map is (N, T_rgb, h, w, 1) (16 x 7 x 7 at full size), one value in
[0, 1] per cell of the RGB feature grid and per sampled frame. ``save_attention_pictures``
upsamples it smoothly to each frame, colour-maps it, blends it over the frame and writes a
PNG grid with the temporal attention curve (mean attention per frame) below it, and
optionally an animated GIF. Only Pillow is needed (no matplotlib).

Colours use one scale for the whole clip (its minimum to maximum attention), so frames
with more attention look hotter than frames with less; the scale is printed on the picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from epam_jax.cli import atomic_output, ensure_writable_dir
from epam_jax.data.transforms import RGB_MEAN, RGB_STD

# "jet": dark blue -> blue -> cyan -> yellow -> red -> dark red (position, r, g, b).
_JET_ANCHORS = np.array(
    [
        (0.000, 0.0, 0.0, 0.5),
        (0.125, 0.0, 0.0, 1.0),
        (0.375, 0.0, 1.0, 1.0),
        (0.625, 1.0, 1.0, 0.0),
        (0.875, 1.0, 0.0, 0.0),
        (1.000, 0.5, 0.0, 0.0),
    ]
)
_LEVELS = np.linspace(0.0, 1.0, 256)
COLORMAP = np.stack(
    [np.interp(_LEVELS, _JET_ANCHORS[:, 0], _JET_ANCHORS[:, c]) for c in (1, 2, 3)], axis=-1
)
COLORMAP = np.round(COLORMAP * 255).astype(np.uint8)  # (256, 3) lookup table

ALPHA = 0.45  # weight of the colour map in the blend
MAX_TILE = 160  # longer side of a frame in the PNG grid, pixels
MAX_COLUMNS = 8
_BG = (255, 255, 255)
_INK = (20, 20, 20)
_GRID = (200, 200, 200)
_CURVE = (200, 40, 30)


# --------------------------------------------------------------------------- checks, I/O


def check_frames_attention(frames: np.ndarray, attention: np.ndarray) -> tuple[np.ndarray, ...]:
    """Validate a (T, H, W, 3) uint8 clip and a (T, h, w) or (T, h, w, 1) attention map;
    return them as uint8 and float32 (T, h, w)."""
    frames = np.asarray(frames)
    attention = np.asarray(attention)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 frames (un-normalised RGB in 0..255), got {frames.dtype}; "
            "model inputs can be turned back with epam_jax.viz.denormalize_rgb"
        )
    if attention.ndim == 4 and attention.shape[-1] == 1:
        attention = attention[..., 0]
    if attention.ndim != 3:
        raise ValueError(
            f"expected attention of shape (T, h, w) or (T, h, w, 1), got {attention.shape}"
        )
    if frames.shape[0] != attention.shape[0]:
        raise ValueError(
            f"frames and attention must have the same number of frames T, got "
            f"{frames.shape[0]} frames and {attention.shape[0]} attention maps"
        )
    if frames.shape[0] == 0 or min(attention.shape[1:]) == 0 or min(frames.shape[1:3]) == 0:
        raise ValueError(f"empty frames {frames.shape} or attention {attention.shape}")
    attention = attention.astype(np.float32)
    if not np.all(np.isfinite(attention)):
        raise ValueError("attention holds NaN or inf values")
    return frames, attention


def denormalize_rgb(rgb: np.ndarray) -> np.ndarray:
    """Normalised model input (..., 3) back to uint8 RGB: ``rgb * std + mean``, rounded."""
    rgb = np.asarray(rgb, np.float32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected RGB with 3 channels last, got {rgb.shape}")
    out = rgb * np.asarray(RGB_STD, np.float32) + np.asarray(RGB_MEAN, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- drawing


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def _scale_range(attention: np.ndarray) -> tuple[float, float]:
    lo, hi = float(attention.min()), float(attention.max())
    return lo, hi


def _normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi - lo < 1e-12:
        return np.full_like(values, 0.5, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def upsample(attention_frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (h, w) map to ``size`` = (H, W) with bicubic interpolation (float32)."""
    img = Image.fromarray(np.ascontiguousarray(attention_frame, np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BICUBIC), np.float32)


def overlay(frames: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Colour-mapped attention blended over each frame: uint8 (T, H, W, 3).

    The colour scale runs from the clip's lowest to its highest attention value.
    """
    frames, attention = check_frames_attention(frames, attention)
    lo, hi = _scale_range(attention)
    return np.stack([blend_attention(f, a, lo, hi) for f, a in zip(frames, attention,
                                                                    strict=True)])


def blend_attention(frame: np.ndarray, attention_frame: np.ndarray, lo: float,
                    hi: float) -> np.ndarray:
    """One (h, w) attention map, colour-mapped on the scale ``lo``..``hi``, upsampled and
    blended over one uint8 (H, W, 3) frame."""
    level = _normalise(upsample(attention_frame, frame.shape[:2]), lo, hi)
    colour = COLORMAP[np.round(level * 255).astype(np.int64)].astype(np.float32)
    blend = (1.0 - ALPHA) * frame.astype(np.float32) + ALPHA * colour
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def _resize_frames(frames: np.ndarray, max_side: int) -> np.ndarray:
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack(
        [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames]
    )


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
          fill=_INK, anchor: str = "la") -> None:
    draw.text(xy, text, fill=fill, font=_font(size), anchor=anchor)


def _colorbar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, height: int,
              lo: float, hi: float) -> None:
    for i in range(width):
        colour = tuple(int(c) for c in COLORMAP[round(i / max(1, width - 1) * 255)])
        draw.line([(x + i, y), (x + i, y + height - 1)], fill=colour)
    draw.rectangle([x, y, x + width - 1, y + height - 1], outline=_INK)
    _text(draw, (x, y + height + 2), f"{lo:.3f}", 11)
    _text(draw, (x + width, y + height + 2), f"{hi:.3f}", 11, anchor="ra")


def _draw_curve(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int],
                curve: np.ndarray, highlight: int | None = None, labels: bool = True) -> None:
    """Temporal attention curve (mean attention per frame) inside ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    lo, hi = float(curve.min()), float(curve.max())
    pad = max(1e-6, 0.1 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3))
    lo, hi = lo - pad, hi + pad
    count = len(curve)

    def at(i: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (i / (count - 1) if count > 1 else 0.5)
        return x, y1 - (y1 - y0) * (v - lo) / (hi - lo)

    draw.rectangle(box, outline=_GRID)
    if labels:
        for v in (lo + pad, hi - pad):
            _, y = at(0, v)
            draw.line([(x0, y), (x1, y)], fill=_GRID)
            _text(draw, (x0 - 4, y), f"{v:.3f}", 11, anchor="rm")
        step = max(1, math.ceil(count / 16))
        for i in range(0, count, step):
            x, _ = at(i, lo)
            draw.line([(x, y1), (x, y1 + 3)], fill=_INK)
            _text(draw, (x, y1 + 5), str(i), 11, anchor="ma")
    points = [at(i, float(v)) for i, v in enumerate(curve)]
    if count > 1:
        draw.line(points, fill=_CURVE, width=2)
    for i, (x, y) in enumerate(points):
        r = 5 if i == highlight else 3
        fill = (30, 30, 200) if i == highlight else _CURVE
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def attention_grid(
    frames: np.ndarray,
    attention: np.ndarray,
    title: str | None = None,
    max_tile: int = MAX_TILE,
    max_columns: int = MAX_COLUMNS,
) -> Image.Image:
    """The PNG picture: a title line with the colour scale, the overlaid frames in a grid
    (each labelled with its index and mean attention), and the temporal attention curve."""
    frames, attention = check_frames_attention(frames, attention)
    lo, hi = _scale_range(attention)
    curve = attention.mean(axis=(1, 2))
    tiles = _resize_frames(overlay(frames, attention), max_tile)
    count, tile_h, tile_w = tiles.shape[:3]
    columns = min(count, max_columns)
    rows = math.ceil(count / columns)
    gap, margin, header, curve_h = 4, 12, 44, 150
    grid_w = columns * tile_w + (columns - 1) * gap
    width = max(grid_w + 2 * margin, 480)
    height = header + rows * (tile_h + gap) + curve_h + 40
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    _text(draw, (margin, 8), title or "EPAM-Net attention", 15)
    _text(draw, (margin, 27), f"attention over {count} frames, colour scale = clip min..max", 11)
    _colorbar(draw, width - margin - 160, 8, 160, 12, lo, hi)
    for t in range(count):
        r, c = divmod(t, columns)
        x = margin + c * (tile_w + gap)
        y = header + r * (tile_h + gap)
        img.paste(Image.fromarray(tiles[t]), (x, y))
        label = f"{t}  {curve[t]:.3f}"
        box = draw.textbbox((x + 3, y + 2), label, font=_font(11))
        draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
        _text(draw, (x + 3, y + 2), label, 11, fill=(255, 255, 255))
    top = header + rows * (tile_h + gap) + 14
    _text(draw, (margin, top - 4), "temporal attention (mean per frame)", 11)
    _draw_curve(draw, (margin + 48, top + 14, width - margin - 8, top + curve_h - 16), curve)
    return img


def attention_animation(
    frames: np.ndarray, attention: np.ndarray, max_side: int = 320
) -> list[Image.Image]:
    """GIF frames: each overlaid frame with the temporal curve below, its point marked."""
    frames, attention = check_frames_attention(frames, attention)
    curve = attention.mean(axis=(1, 2))
    tiles = _resize_frames(overlay(frames, attention), max_side)
    tile_h, tile_w = tiles.shape[1:3]
    strip = 56
    out = []
    for t in range(tiles.shape[0]):
        img = Image.new("RGB", (tile_w, tile_h + strip), _BG)
        img.paste(Image.fromarray(tiles[t]), (0, 0))
        draw = ImageDraw.Draw(img)
        label = f"frame {t}  mean {curve[t]:.3f}"
        box = draw.textbbox((4, 3), label, font=_font(12))
        draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
        _text(draw, (4, 3), label, 12, fill=(255, 255, 255))
        _draw_curve(draw, (8, tile_h + 8, tile_w - 8, tile_h + strip - 8), curve, t, False)
        out.append(img)
    return out


# --------------------------------------------------------------------------- public API


def save_attention_pictures(
    frames: np.ndarray,
    attention: np.ndarray,
    png_path: str | os.PathLike[str],
    gif_path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write the attention picture of one clip: a PNG grid and optionally an animated GIF.

    ``frames``: uint8 (T, H, W, 3) un-normalised RGB, the frames the model saw (any size;
    ``denormalize_rgb`` turns model inputs back). ``attention``: float (T, h, w) or
    (T, h, w, 1), e.g. one clip of the model's (N, 16, 7, 7, 1) map. Returns the paths
    written; files are written atomically (complete or absent).
    """
    frames, attention = check_frames_attention(frames, attention)
    png_path = Path(png_path)
    gif_path = None if gif_path is None else Path(gif_path)
    for path in (png_path, gif_path):
        if path is not None:
            ensure_writable_dir(path.parent, "picture")
    written = []
    with atomic_output(png_path) as tmp:
        attention_grid(frames, attention, title).save(tmp, format="PNG", optimize=True)
    written.append(png_path)
    if gif_path is not None:
        written.append(save_attention_gif(frames, attention, gif_path))
    return written


def save_attention_gif(
    frames: np.ndarray, attention: np.ndarray, gif_path: str | os.PathLike[str]
) -> Path:
    """Write the animated GIF alone (4 frames/s, looping), atomically; returns its path."""
    gif_path = Path(gif_path)
    images = attention_animation(frames, attention)
    with atomic_output(gif_path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=250, loop=0
        )
    return gif_path


def clip_attention(attention: np.ndarray, index: int = 0) -> np.ndarray:
    """Clip ``index`` of a batched (N, T, h, w, 1) attention map as (T, h, w) float32."""
    attention = np.asarray(attention)
    if attention.ndim != 5 or attention.shape[-1] != 1:
        raise ValueError(f"expected a batched attention map (N, T, h, w, 1), got {attention.shape}")
    return attention[index, ..., 0].astype(np.float32)


__all__: Sequence[str] = (
    "COLORMAP",
    "attention_animation",
    "attention_grid",
    "check_frames_attention",
    "clip_attention",
    "denormalize_rgb",
    "overlay",
    "save_attention_gif",
    "save_attention_pictures",
    "upsample",
)


# --------------------------------------------------------------------------- confusion matrix


def confusion_picture(confusion: np.ndarray, names: Sequence[str], title: str | None = None,
                      cell: int | None = None) -> Image.Image:
    """The confusion matrix (rows: true class, columns: prediction) as a picture.

    Each row is normalised by its class count and colour-mapped (0 -> 1 of the row);
    class names label the rows (with the row's accuracy) and the columns (rotated);
    cells large enough show their count.
    """
    confusion = np.asarray(confusion)
    c = confusion.shape[0]
    if confusion.ndim != 2 or confusion.shape[1] != c or len(names) != c:
        raise ValueError(f"expected a square (C, C) matrix and C names, got "
                         f"{confusion.shape} and {len(names)} names")
    cell = cell or max(8, min(28, 900 // max(c, 1)))
    size = max(9, min(13, cell - 2))
    counts = confusion.sum(1, keepdims=True)
    rates = np.where(counts > 0, confusion / np.maximum(counts, 1), 0.0)
    labels = [n if len(n) <= 40 else n[:39] + "…" for n in names]
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_w = max(int(probe.textlength(s, font=font)) for s in labels) + 10
    row_w = name_w + int(probe.textlength(" 100.0%", font=font)) + 4
    top = name_w + (30 if title else 10) + 16
    left = row_w + 16
    width, height = left + c * cell + 16, top + c * cell + 16
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    if title:
        _text(draw, (8, 6), title, 14)
    colours = COLORMAP[np.round(rates * 255).astype(np.int64)]
    grid = np.repeat(np.repeat(colours, cell, 0), cell, 1)
    img.paste(Image.fromarray(grid), (left, top))
    for i, name in enumerate(labels):
        acc = 100.0 * rates[i, i] if counts[i, 0] else float("nan")
        _text(draw, (left - 6, top + i * cell + cell / 2), f"{name} {acc:5.1f}%", size,
              anchor="rm")
        strip = Image.new("RGB", (name_w, cell), _BG)
        _text(ImageDraw.Draw(strip), (name_w - 4, cell / 2), name, size, anchor="rm")
        img.paste(strip.rotate(90, expand=True), (left + i * cell, top - name_w))
    if cell >= 18:
        for i, j in zip(*np.nonzero(confusion), strict=True):
            ink = (255, 255, 255) if rates[i, j] < 0.35 or rates[i, j] > 0.8 else _INK
            _text(draw, (left + j * cell + cell / 2, top + i * cell + cell / 2),
                  str(int(confusion[i, j])), size - 2, fill=ink, anchor="mm")
    for k in range(c + 1):
        draw.line([(left + k * cell, top), (left + k * cell, top + c * cell)], fill=_GRID)
        draw.line([(left, top + k * cell), (left + c * cell, top + k * cell)], fill=_GRID)
    _text(draw, (left + c * cell / 2, top - name_w - 4), "predicted class", 12, anchor="md")
    strip = Image.new("RGB", (c * cell, 16), _BG)
    _text(ImageDraw.Draw(strip), (c * cell / 2, 8), "true class", 12, anchor="mm")
    img.paste(strip.rotate(90, expand=True), (0, top))
    return img


def save_confusion_matrix(confusion: np.ndarray, names: Sequence[str],
                          path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write ``confusion_picture`` as a PNG, atomically."""
    img = confusion_picture(confusion, names, title)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
