"""RGB frames for sampled indices, from video files (PyAV) or from frame folders.

Videos are decoded sequentially (inter-coded streams need every earlier frame), but only
the requested frames are converted to RGB and resized, in one swscale pass each, and
decoding stops after the last requested frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _check_indices(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    inds = np.asarray(indices)
    if inds.ndim != 1 or inds.size == 0 or not np.issubdtype(inds.dtype, np.integer):
        raise ValueError(f"expected a non-empty 1-D array of integer frame indices, got {inds!r}")
    if inds.min() < 0:
        raise ValueError(f"expected frame indices >= 0, got {inds.min()}")
    return inds.astype(np.int64)


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"expected size (height, width) > 0, got {size}")
    return int(size[0]), int(size[1])


def video_frame_count(path: str | os.PathLike[str]) -> int:
    """Number of frames of a video file, counted by demuxing (no decoding)."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def frame_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of a video file's frames or a frame folder's first image, read
    from the header only; ValueError naming the path when it cannot be read."""
    try:
        if os.path.isdir(path):
            with Image.open(list_frame_files(path)[0]) as img:
                return img.size[1], img.size[0]
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{os.fspath(path)!r} has no video stream")
            ctx = container.streams.video[0].codec_context
            return int(ctx.height), int(ctx.width)
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"cannot read video {os.fspath(path)!r}: {err}") from err


def decode_video_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    size: tuple[int, int] | None = (224, 224),
    clamp: bool = False,
) -> np.ndarray:
    """Frames ``indices`` (0-based, any order, repeats allowed) of a video as uint8
    (len(indices), H, W, 3) RGB, resized to ``size`` = (H, W) by area averaging (None
    keeps the native size). An index past the end raises ValueError, or with ``clamp`` takes
    the last frame."""
    inds = _check_indices(indices)
    size = _check_size(size)
    wanted = np.unique(inds)
    last = int(wanted[-1])
    frames: dict[int, np.ndarray] = {}
    count = 0
    latest: np.ndarray | None = None
    try:
        container = av.open(os.fspath(path))
    except (av.error.FileNotFoundError, av.error.InvalidDataError, OSError) as err:
        raise ValueError(f"cannot open video {os.fspath(path)!r}: {err}") from err
    with container:
        if not container.streams.video:
            raise ValueError(f"{os.fspath(path)!r} has no video stream")
        stream = container.streams.video[0]
        want = set(wanted.tolist())
        for frame in container.decode(stream):
            if count in want or (clamp and count == last):
                kwargs = {"format": "rgb24", "interpolation": "AREA"}
                if size is not None:
                    kwargs.update(height=size[0], width=size[1])
                latest = frame.reformat(**kwargs).to_ndarray()
                frames[count] = latest
            elif clamp:
                latest = None
            count += 1
            if count > last:
                break
        if count <= last:
            if not clamp:
                raise ValueError(
                    f"{os.fspath(path)!r} has {count} frames; frame index {last} requested"
                )
            if count == 0:
                raise ValueError(f"{os.fspath(path)!r} has no decodable frames")
    if clamp:
        top = max(frames)
        return np.stack([frames[min(int(i), top)] for i in inds])
    return np.stack([frames[int(i)] for i in inds])


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) frame to ``size`` = (width, height): area averaging when shrinking
    (as the decoder does), bilinear when enlarging. The person crop of a raw video and
    ``epam_jax.prepare`` both resize with it."""
    if frame.shape[1] == size[0] and frame.shape[0] == size[1]:
        return np.asarray(frame)
    shrink = size[0] <= frame.shape[1] and size[1] <= frame.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(frame).resize(size, method))


def list_frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (jpg/png) of a frame folder in name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"expected a frame folder, {os.fspath(folder)!r} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise ValueError(f"frame folder {os.fspath(folder)!r} holds no {FRAME_EXTENSIONS} files")
    return files


def read_frame_folder(
    folder: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    size: tuple[int, int] | None = (224, 224),
    clamp: bool = False,
) -> np.ndarray:
    """Frames ``indices`` of a folder of images (sorted by name, index 0 = first file)
    as uint8 (len(indices), H, W, 3) RGB resized bilinearly to ``size``."""
    inds = _check_indices(indices)
    size = _check_size(size)
    files = list_frame_files(folder)
    if inds.max() >= len(files) and not clamp:
        raise ValueError(
            f"frame folder {os.fspath(folder)!r} has {len(files)} frames; "
            f"frame index {int(inds.max())} requested"
        )
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in np.minimum(inds, len(files) - 1).tolist():
        if i not in cache:
            with Image.open(files[i]) as img:
                if size is not None and img.format == "JPEG":
                    img.draft("RGB", (size[1], size[0]))  # DCT-domain downscale, much faster
                img = img.convert("RGB")
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                cache[i] = np.asarray(img)
        out.append(cache[i])
    return np.stack(out)


def load_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    size: tuple[int, int] | None = (224, 224),
    clamp: bool = False,
) -> np.ndarray:
    """Frames from a video file or a frame folder, whichever ``path`` is."""
    if os.path.isdir(path):
        return read_frame_folder(path, indices, size, clamp)
    if not os.path.exists(path):
        raise ValueError(f"no video file or frame folder at {os.fspath(path)!r}")
    return decode_video_frames(path, indices, size, clamp)
