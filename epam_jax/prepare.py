"""Spatial alignment of raw videos: cut every video to one box around its persons.

The paper's RGB stream saw videos that were, once before training, cut to ONE box around
all persons of all frames of the skeleton annotation and resized to 224x224 (EPAM_NET.md
sec. 9); raw 1920x1080 NTU frames squeezed to 224x224 are not what it was trained on.
This tool does that preparation for a PoseC3D annotation file and its raw videos, with
the pipeline's own box rule (``epam_jax.data.compact_box``: non-zero keypoints, padding
0.25, at least 10 px, square, clipped to the frame, integer pixels) and resize
(``epam_jax.data.resize_frame``), so prepared videos, the pose heatmaps and
``epam_jax.predict``'s person crop all show the same region.

    python -m epam_jax.prepare --annotations ntu60_2d.pkl --split xsub_val \\
        --video-root nturgb+d_rgb --video-pattern '{frame_dir}_rgb.avi' \\
        --out-dir ntu60_224 --workers 8

then read them with ``ClipConfig(video_root='ntu60_224', video_ext='.mp4')``.

A video is found at ``VIDEO_ROOT/<filename>`` when its annotation has 'filename', else at
``VIDEO_ROOT/<pattern with {frame_dir}>``. Every frame is decoded (PyAV), cut to the box
and resized to SIZE x SIZE, and written as ``OUT/<frame_dir>.mp4`` (H.264, yuv420p, CRF
18, no macroblock tree so that reruns give the same bytes, the source frame rate) or,
with ``--format frames``, as JPEG frame folders ``OUT/<frame_dir>/img_00001.jpg ...``.
Keypoints whose extent is too small give the whole frame (noted in the manifest); a
video without any keypoint fails.

Outputs are written under a temporary name and renamed when complete, so a rerun skips
finished videos and redoes the rest (an interrupted run is resumed that way).
``OUT/prepare_manifest.json`` records the settings and, per video, its source, size,
frame rate, box, frames written, status and reason; a rerun with other settings into the
same folder is refused unless ``--overwrite``. A video that fails (missing, unreadable,
truncated, no keypoints, a size that does not match the annotation) never stops the
others. Exit status: 0 all ok or skipped, 1 some videos failed, 2 the run could not be
done (bad arguments or annotation file, unwritable output, a full disk).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from epam_jax.cli import output_dirs
from epam_jax.data.annotations import parse_annotations, safe_loads
from epam_jax.data.pipeline import ClipConfig
from epam_jax.data.transforms import compact_box, nan_to_zero
from epam_jax.data.video import resize_frame

FORMATS = ("mp4", "frames")
MANIFEST_NAME = "prepare_manifest.json"
LOCK_NAME = ".prepare.lock"
MANIFEST_VERSION = 1
DEFAULT_PATTERN = "{frame_dir}.mp4"
FALLBACK_FPS = Fraction(30)
JPEG_NAME = "img_{:05d}.jpg"  # 1-based, as mmaction2's frame folders
FAILURES_SHOWN = 20
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")
_BOX_DEFAULTS = ClipConfig(rgb=False)  # the pipeline's compact-box settings
# x264's macroblock-tree rate control (on by default) reads uninitialised memory in its
# AVX-512 code at frame sizes such as 112 or 224 px (not 128 or 256): the same frames then
# encode to different bytes from run to run (x264 as bundled with PyAV 18). Without it the
# output depends on the input only; CRF still sets the quality.
X264_PARAMS = "mbtree=0"
# Write errors that will hit every later video too: stop the run instead of failing each.
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class VideoFailure(Exception):
    """One video cannot be prepared; the reason is the message. Other videos go on."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides the prepared outputs; a folder holds outputs of one setting only."""

    size: int = 224
    fmt: str = "mp4"
    crf: int = 18
    preset: str = "fast"
    jpeg_quality: int = 95
    padding: float = _BOX_DEFAULTS.compact_padding
    threshold: float = _BOX_DEFAULTS.compact_threshold
    hw_ratio: float | None = _BOX_DEFAULTS.compact_hw_ratio

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"expected format in {FORMATS}, got {self.fmt!r}")
        if self.size <= 0 or (self.fmt == "mp4" and self.size % 2):
            raise ValueError(
                f"expected a positive size (even for mp4: yuv420p), got {self.size}"
            )
        if not 0 <= self.crf <= 51:
            raise ValueError(f"expected 0 <= crf <= 51, got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"expected an x264 preset in {X264_PRESETS}, got {self.preset!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"expected 1 <= jpeg quality <= 100, got {self.jpeg_quality}")

    def record(self) -> dict[str, Any]:
        """The settings as the manifest stores and compares them (encoder ones per format)."""
        rec: dict[str, Any] = {"size": self.size, "format": self.fmt}
        if self.fmt == "mp4":
            rec.update(codec="libx264", pix_fmt="yuv420p", crf=self.crf, preset=self.preset,
                       x264_params=X264_PARAMS)
        else:
            rec.update(jpeg_quality=self.jpeg_quality)
        rec.update(padding=self.padding, threshold=self.threshold, hw_ratio=self.hw_ratio,
                   clip_to_image=True)
        return rec


@dataclasses.dataclass(frozen=True)
class Job:
    """One video to prepare, everything a worker process needs (no keypoints: small)."""

    frame_dir: str
    source: str
    output: str
    temp: str
    img_shape: tuple[int, int]
    total_frames: int
    box: tuple[int, int, int, int] | None  # in annotation pixels; None: whole frame
    settings: Settings


# --------------------------------------------------------------------------- one video


def output_path(out_dir: str | os.PathLike[str], frame_dir: str, fmt: str) -> Path:
    """Where a prepared video goes: ``OUT/<frame_dir>.mp4`` or the folder ``OUT/<frame_dir>``."""
    return Path(out_dir) / (f"{frame_dir}.mp4" if fmt == "mp4" else frame_dir)


def temp_path(output: str | os.PathLike[str], fmt: str) -> Path:
    """The fixed temporary name an output is written under (a rerun overwrites it)."""
    output = Path(output)
    if fmt == "mp4":
        return output.with_name(f".{output.stem}.tmp.mp4")
    return output.with_name(f".{output.name}.tmp")


def _remove(path: str | os.PathLike[str]) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _frame_rate(stream: Any, notes: list[str]) -> Fraction:
    """The source's frame rate as a Fraction (average, else guessed, else 30 fps)."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 0 < rate <= 1000:
            return Fraction(rate)
    notes.append(f"the video states no usable frame rate: {FALLBACK_FPS} fps written")
    return FALLBACK_FPS


def _video_box(job: Job, video_hw: tuple[int, int], notes: list[str]) -> tuple[int, ...] | None:
    """The job's box in video pixels: scaled when the video is the annotation's img_shape
    at another resolution; a different aspect ratio cannot be mapped and fails."""
    (ann_h, ann_w), (h, w) = job.img_shape, video_hw
    box = job.box
    if (h, w) != (ann_h, ann_w):
        if abs((w / h) / (ann_w / ann_h) - 1) > 0.01:
            raise VideoFailure(
                f"annotations and videos do not match: annotation img_shape (h, w) = "
                f"{(ann_h, ann_w)}, video {(h, w)}"
            )
        notes.append(f"video is {h}x{w}, annotation img_shape {ann_h}x{ann_w}: box scaled")
        if box is not None:
            sx, sy = w / ann_w, h / ann_h
            x0, y0, x1, y1 = box
            box = (max(0, round(x0 * sx)), max(0, round(y0 * sy)),
                   min(w, round(x1 * sx)), min(h, round(y1 * sy)))
    if box is None:
        notes.append("keypoints span too little for a box: whole frame used")
        return None
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise VideoFailure(f"the person box {box} lies outside the {h}x{w} frame")
    return box


def _rgb_frames(container: Any, stream: Any, notes: list[str]) -> Iterator[np.ndarray]:
    """Every frame as uint8 (H, W, 3) RGB, converted as ``decode_video_frames`` does; a
    decoding error ends the stream (noted) and the frame count decides the rest."""
    frames = container.decode(stream)
    count = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.error.FFmpegError as err:
            notes.append(f"decoding stopped after {count} frames: {err}")
            return
        count += 1
        yield frame.reformat(format="rgb24", interpolation="AREA").to_ndarray()


class _Mp4Writer:
    """H.264 (libx264, yuv420p) in an mp4 container at ``rate``."""

    def __init__(self, path: Path, settings: Settings, rate: Fraction) -> None:
        self.container = av.open(os.fspath(path), mode="w", format="mp4")
        try:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.width = self.stream.height = settings.size
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(settings.crf), "preset": settings.preset,
                                   "x264-params": X264_PARAMS}
        except BaseException:
            self.container.close()
            raise

    def write(self, image: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


class _FrameWriter:
    """A folder of JPEG frames ``img_00001.jpg ...``."""

    def __init__(self, path: Path, settings: Settings) -> None:
        path.mkdir()
        self.path, self.quality, self.count = path, settings.jpeg_quality, 0

    def write(self, image: np.ndarray) -> None:
        self.count += 1
        Image.fromarray(image).save(self.path / JPEG_NAME.format(self.count), quality=self.quality)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _commit(temp: Path, output: Path) -> None:
    """Rename a complete temporary output to its final name (replacing an old one)."""
    if temp.is_dir():
        old = output.with_name(f".{output.name}.old.tmp")
        _remove(old)
        if output.exists():
            os.replace(output, old)
        os.replace(temp, output)
        _remove(old)
    else:
        os.replace(temp, output)


def frame_tolerance(total_frames: int) -> int:
    """How many frames a decoded video may differ from the annotation's total_frames."""
    return max(3, math.ceil(0.1 * total_frames))


def _convert(job: Job, rec: dict[str, Any]) -> None:
    """Decode, crop, resize and write one video to its temporary name, then rename it."""
    source, temp, output = Path(job.source), Path(job.temp), Path(job.output)
    notes: list[str] = rec["notes"]
    if not source.is_file():
        raise VideoFailure(f"missing video {source}")
    try:
        container = av.open(os.fspath(source))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoFailure(f"unreadable video {source}: {err.strerror or err}") from None
    size = (job.settings.size, job.settings.size)
    limit = job.total_frames + frame_tolerance(job.total_frames)
    with container:
        if not container.streams.video:
            raise VideoFailure(f"unreadable video {source}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = _frame_rate(stream, notes)
        rec["fps"], rec["fps_fraction"] = float(rate), f"{rate.numerator}/{rate.denominator}"
        frames = _rgb_frames(container, stream, notes)
        first = next(frames, None)
        if first is None:
            why = f" ({'; '.join(notes)})" if notes else ""
            raise VideoFailure(f"unreadable video {source}: no decodable frame{why}")
        h, w = first.shape[:2]
        rec["source_size"] = [h, w]
        box = _video_box(job, (h, w), notes)
        rec["box"] = None if box is None else list(box)
        x0, y0, x1, y1 = box or (0, 0, w, h)
        _remove(temp)
        output.parent.mkdir(parents=True, exist_ok=True)
        writer: _Mp4Writer | _FrameWriter
        writer = _Mp4Writer(temp, job.settings, rate) if job.settings.fmt == "mp4" else (
            _FrameWriter(temp, job.settings))
        count = 0
        try:
            for image in _chain(first, frames):
                if image.shape[:2] != (h, w):
                    raise VideoFailure(
                        f"frame size changes from {h}x{w} to {image.shape[0]}x{image.shape[1]} "
                        f"at frame {count}"
                    )
                count += 1
                if count > limit:
                    raise VideoFailure(
                        f"truncated or mismatched: more than {limit} frames decoded, "
                        f"annotation says {job.total_frames}"
                    )
                writer.write(resize_frame(image[y0:y1, x0:x1], size))
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    if abs(count - job.total_frames) > frame_tolerance(job.total_frames):
        raise VideoFailure(
            f"truncated or mismatched: {count} frames decoded, annotation says "
            f"{job.total_frames}" + (f" ({'; '.join(notes)})" if notes else "")
        )
    if count != job.total_frames:
        notes.append(f"{count} frames decoded, annotation says {job.total_frames}")
    _commit(temp, output)
    rec["frames"] = count


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def prepare_one(job: Job) -> dict[str, Any]:
    """Prepare one video; returns its manifest record. Never raises for a bad video (the
    record says 'failed' and why); a write error that will hit every video (full disk)
    is returned under 'fatal' for the caller to stop the run."""
    rec: dict[str, Any] = {
        "output": os.path.basename(job.output),
        "source": job.source,
        "source_size": None,
        "fps": None,
        "fps_fraction": None,
        "box": None,
        "frames": 0,
        "total_frames": job.total_frames,
        "status": "failed",
        "reason": None,
        "notes": [],
    }
    done = False
    try:
        _convert(job, rec)
        rec["status"], done = "ok", True
    except VideoFailure as err:
        rec["reason"] = str(err)
    except OSError as err:
        if err.errno in _FATAL_ERRNOS:
            rec["fatal"] = f"cannot write {job.temp}: {os.strerror(err.errno)}"
            rec["reason"] = rec["fatal"]
        else:
            rec["reason"] = f"{type(err).__name__}: {err}"
    except Exception as err:  # one odd video must not stop a 56k-video run
        rec["reason"] = f"unexpected {type(err).__name__}: {err}"
    finally:
        if not done:
            _remove(job.temp)
    return rec


# --------------------------------------------------------------------------- planning


def _load_selection(path: str | os.PathLike[str], splits: Sequence[str] | None) -> list[dict]:
    """Annotations of ``path`` (restricted unpickler), the union of ``splits`` if given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the annotation file {path}: {err.strerror or err}") from None
    if not data:
        raise ValueError(f"annotation file {path} is empty")
    try:
        obj = safe_loads(data)
        anns = parse_annotations(obj)
    except ValueError as err:
        raise type(err)(f"{path}: {err}") from err
    if not splits:
        return anns
    table = obj.get("split") if isinstance(obj, Mapping) else None
    if not isinstance(table, Mapping):
        raise ValueError(f"--split {splits[0]!r} given but {path} has no split table")
    known = {a["frame_dir"] for a in anns}
    wanted: set[str] = set()
    for name in splits:
        if name not in table:
            raise ValueError(f"unknown split {name!r}; {path} has {sorted(table)}")
        names = set(table[name])
        if not names & known:
            raise ValueError(
                f"split {name!r} of {path} names no video of the file "
                f"({len(names)} names, none among its {len(known)} annotations)"
            )
        wanted |= names
    return [a for a in anns if a["frame_dir"] in wanted]


def _source_name(ann: Mapping[str, Any], pattern: str) -> str:
    if ann.get("filename"):
        return os.fspath(ann["filename"])
    return pattern.format(frame_dir=ann["frame_dir"])


def _check_pattern(pattern: str) -> None:
    try:
        name = pattern.format(frame_dir="x")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"bad --video-pattern {pattern!r} ({err!r}); expected a name with {{frame_dir}}, "
            f"e.g. {DEFAULT_PATTERN!r} or '{{frame_dir}}_rgb.avi'"
        ) from None
    if "{frame_dir}" not in pattern or not name:
        raise ValueError(f"expected --video-pattern to contain {{frame_dir}}, got {pattern!r}")


def _has_keypoints(keypoint: np.ndarray) -> bool:
    kp = nan_to_zero(keypoint)
    return bool(np.any(kp[..., 0] != 0) and np.any(kp[..., 1] != 0))


def _plan(
    anns: Sequence[Mapping[str, Any]],
    video_root: Path,
    out: Path,
    settings: Settings,
    pattern: str,
    overwrite: bool,
    old_videos: Mapping[str, Any],
) -> tuple[list[Job], dict[str, dict[str, Any]]]:
    """Jobs to run, and the records decided without decoding (skipped, no keypoints)."""
    jobs: list[Job] = []
    records: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for ann in anns:
        frame_dir = ann["frame_dir"]
        if frame_dir in seen:  # splits overlap (e.g. xsub_train and xview_train)
            continue
        seen.add(frame_dir)
        source = video_root / _source_name(ann, pattern)
        output = output_path(out, frame_dir, settings.fmt)
        temp = temp_path(output, settings.fmt)
        if os.path.abspath(source) == os.path.abspath(output):
            raise ValueError(f"the output {output} would replace its source video; use another "
                             "--out-dir")
        _remove(temp)  # left by a killed run
        base = {"output": output.name, "source": os.fspath(source),
                "total_frames": int(ann["total_frames"])}
        if output.exists() and not overwrite:
            old = dict(old_videos.get(frame_dir) or {})
            records[frame_dir] = {**old, **base, "status": "skipped", "reason": None}
            continue
        if not _has_keypoints(ann["keypoint"]):
            records[frame_dir] = {**base, "source_size": None, "fps": None, "box": None,
                                  "frames": 0, "status": "failed", "reason": "no keypoints",
                                  "notes": []}
            continue
        box = compact_box(ann["keypoint"], ann["img_shape"], settings.padding,
                          settings.threshold, settings.hw_ratio, clip_to_image=True)
        jobs.append(Job(frame_dir, os.fspath(source), os.fspath(output), os.fspath(temp),
                        tuple(ann["img_shape"]), int(ann["total_frames"]), box, settings))
    return jobs, records


# --------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("videos"), dict):
            raise ValueError("not a prepare manifest")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot read the manifest {path} ({err}); delete it or pass --overwrite"
        ) from None
    return manifest


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new), key=lambda k: (k not in ("size", "format"), k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                     if old.get(k) != new.get(k))


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest atomically (temporary file, then rename); one line per video."""
    head = {k: v for k, v in manifest.items() if k != "videos"}
    lines = [json.dumps(head, indent=1)[:-2] + ',\n "videos": {']
    items = list(manifest.get("videos", {}).items())
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(items) - 1 else "")
              for i, (k, v) in enumerate(items)]
    lines.append(" }\n}\n")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("\n".join(lines))
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Refuse a second prepare run writing into the same folder at the same time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(out / LOCK_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"another prepare run is writing into {out}") from None
        yield


# --------------------------------------------------------------------------- running


def _mp_context() -> multiprocessing.context.BaseContext:
    """Worker processes that do not inherit a forked JAX: a fork server that imported the
    heavy packages once (fast worker start), else spawn. This module itself is left out
    of the preload: under ``python -m`` each worker re-runs it as its main module."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["epam_jax.data", "epam_jax.viz", "av", "PIL.Image"])
        return ctx
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


def _run_jobs(
    jobs: Sequence[Job], workers: int, on_result: Callable[[Job, dict[str, Any]], bool]
) -> None:
    """Run ``prepare_one`` over ``jobs`` in this process (workers=0) or a process pool;
    ``on_result`` returns True to stop the run (pending jobs are dropped)."""
    if workers == 0:
        for job in jobs:
            if on_result(job, prepare_one(job)):
                return
        return
    queue = iter(jobs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
    pending: dict[Future, Job] = {}
    stop = False
    try:
        while True:
            while not stop and len(pending) < 2 * workers:
                job = next(queue, None)
                if job is None:
                    break
                pending[pool.submit(prepare_one, job)] = job
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    rec = future.result()
                except BrokenProcessPool:
                    raise RuntimeError(
                        f"a worker process died while preparing {job.source} (out of "
                        "memory, or it could not start); rerun to resume, perhaps with "
                        "fewer --workers"
                    ) from None
                stop = on_result(job, rec) or stop
            if stop:  # let the running videos finish (they clean up), drop the rest
                for future in pending:
                    future.cancel()
    except BaseException:
        # Ctrl-C or an error: stop the workers now and remove what they were writing
        # (only ever a temporary file; a run killed outright leaves it to the next run).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=5)
        pool.shutdown(wait=False, cancel_futures=True)
        for job in pending.values():
            _remove(job.temp)
        raise
    pool.shutdown(wait=True)


def prepare_videos(
    annotations: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    video_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    size: int = 224,
    fmt: str = "mp4",
    video_pattern: str = DEFAULT_PATTERN,
    workers: int = 0,
    crf: int = 18,
    preset: str = "fast",
    jpeg_quality: int = 95,
    padding: float = _BOX_DEFAULTS.compact_padding,
    threshold: float = _BOX_DEFAULTS.compact_threshold,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Spatially align the videos of ``annotations`` (a PoseC3D pickle path, with
    optional ``splits``, or validated annotation dicts) into ``out_dir``; see the module
    docstring. Returns a summary: counts 'ok'/'skipped'/'failed'/'total', 'frames'
    written, 'seconds', 'videos_per_s' and 'frames_per_s' (videos and frames written per
    second of the run), 'manifest' (path), 'failures' (frame_dir, reason), 'whole_frame'
    (videos written uncropped) and 'with_filename' (annotations naming a 'filename',
    which the pipeline would read instead of ``OUT/<frame_dir>``). Raises
    ValueError/OSError/RuntimeError for a problem of the whole run (bad input, unwritable
    folder, full disk)."""
    settings = Settings(size=int(size), fmt=fmt, crf=int(crf), preset=preset,
                        jpeg_quality=int(jpeg_quality), padding=float(padding),
                        threshold=float(threshold))
    if workers < 0:
        raise ValueError(f"expected workers >= 0, got {workers}")
    _check_pattern(video_pattern)
    if isinstance(annotations, str | os.PathLike):
        anns = _load_selection(annotations, splits)
        ann_file: str | None = os.path.abspath(annotations)
    else:
        if splits:
            raise ValueError("splits apply to an annotation file; filter the list instead")
        anns, ann_file = parse_annotations(list(annotations)), None
    if not anns:
        raise ValueError("no videos selected: the annotations are empty")
    video_root = Path(video_root)
    if not video_root.is_dir():
        raise ValueError(f"the video root {video_root} is not a directory")
    # made now; removed again if the run fails before it writes the manifest
    with output_dirs(out_dir, scratch=(LOCK_NAME,)) as (out,), _lock(out):
        manifest_path = out / MANIFEST_NAME
        try:
            old = _read_manifest(manifest_path)
        except ValueError:
            if not overwrite:
                raise
            old = None
        if old is not None and old.get("settings") != settings.record():
            if not overwrite:
                raise ValueError(
                    f"{out} holds videos prepared with other settings "
                    f"({_settings_diff(old.get('settings') or {}, settings.record())}); "
                    "pass --overwrite to redo them, or choose another --out-dir"
                )
            old = None  # its records describe outputs of the other settings
        jobs, records = _plan(anns, video_root, out, settings, video_pattern, overwrite,
                              (old or {}).get("videos", {}))
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "tool": "epam_jax.prepare",
            "settings": settings.record(),
            "annotations": ann_file,
            "video_root": os.path.abspath(video_root),
            "videos": dict((old or {}).get("videos", {})),
        }
        manifest["videos"].update(records)
        summary = _execute(jobs, records, manifest, manifest_path, workers, progress)
    summary["with_filename"] = sum(1 for a in anns if a.get("filename"))
    return summary


def _execute(
    jobs: list[Job],
    records: dict[str, dict[str, Any]],
    manifest: dict[str, Any],
    manifest_path: Path,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Run the jobs with a progress bar, keep the manifest current, sum up."""
    from tqdm.auto import tqdm

    counts = {"ok": 0, "skipped": 0, "failed": 0}
    failures: list[tuple[str, str]] = []
    for frame_dir, rec in records.items():
        counts[rec["status"]] += 1
        if rec["status"] == "failed":
            failures.append((frame_dir, rec["reason"]))
    frames = 0
    whole = 0
    fatal: list[str] = []
    last_write = time.monotonic()
    write_manifest(manifest_path, manifest)
    bar = tqdm(total=len(jobs) + len(records), initial=len(records), unit="video",
               disable=not progress, dynamic_ncols=True, desc="prepare")
    start = time.perf_counter()

    def on_result(job: Job, rec: dict[str, Any]) -> bool:
        nonlocal frames, whole, last_write
        if "fatal" in rec:
            fatal.append(rec.pop("fatal"))
            return True
        manifest["videos"][job.frame_dir] = rec
        counts[rec["status"]] += 1
        frames += rec["frames"]
        if rec["status"] == "failed":
            failures.append((job.frame_dir, rec["reason"]))
        elif rec["box"] is None:
            whole += 1
        bar.update()
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], refresh=False)
        if time.monotonic() - last_write > 10:
            write_manifest(manifest_path, manifest)
            last_write = time.monotonic()
        return False

    try:
        _run_jobs(jobs, workers, on_result)
    finally:
        bar.close()
        seconds = time.perf_counter() - start
        with contextlib.suppress(OSError):  # a full disk may refuse this too
            write_manifest(manifest_path, manifest)
    if fatal:
        raise OSError(f"{fatal[0]}; stopped (rerun to resume once there is space)")
    write_manifest(manifest_path, manifest)
    return {
        **counts,
        "total": sum(counts.values()),
        "frames": frames,
        "seconds": seconds,
        "videos_per_s": counts["ok"] / seconds if seconds > 0 else 0.0,
        "frames_per_s": frames / seconds if seconds > 0 else 0.0,
        "whole_frame": whole,
        "workers": workers,
        "manifest": os.fspath(manifest_path),
        "failures": failures,
    }


# --------------------------------------------------------------------------- CLI


def _print_summary(summary: Mapping[str, Any], out_dir: str) -> None:
    print(f"prepared {summary['total']} videos into {out_dir}: ok {summary['ok']}, "
          f"skipped {summary['skipped']} (already complete), failed {summary['failed']}")
    print(f"throughput: {summary['videos_per_s']:.2f} videos/s, "
          f"{summary['frames_per_s']:.1f} frames/s ({summary['ok']} videos, "
          f"{summary['frames']} frames written in {summary['seconds']:.2f} s, "
          f"workers {summary['workers']})")
    if summary["whole_frame"]:
        print(f"{summary['whole_frame']} videos used the whole frame (keypoints span too little)")
    if summary.get("with_filename"):
        print(f"note: {summary['with_filename']} annotations name a 'filename'; the pipeline "
              "reads video_root/filename for those, so drop that key to read the prepared "
              "OUT/<frame_dir> outputs")
    failures = summary["failures"]
    if failures:
        print(f"failed videos ({len(failures)}):")
        for frame_dir, reason in failures[:FAILURES_SHOWN]:
            print(f"  {frame_dir}: {reason}")
        if len(failures) > FAILURES_SHOWN:
            print(f"  ... and {len(failures) - FAILURES_SHOWN} more")
    print(f"manifest: {summary['manifest']}")
    if failures:
        print(f"{len(failures)} of {summary['total']} videos failed (exit status 1); the "
              "others are ready, and a rerun retries only the failed ones")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m epam_jax.prepare",
        description="Cut raw videos to one box around their persons and resize them "
        "(the paper's spatial alignment).",
        epilog="Exit status: 0 all ok or skipped, 1 some videos failed, 2 the run could "
        "not be done.",
    )
    parser.add_argument("--annotations", required=True, metavar="ANN.pkl",
                        help="PoseC3D annotation pickle (keypoints in img_shape pixels)")
    parser.add_argument("--video-root", required=True, metavar="DIR",
                        help="folder the raw videos are in")
    parser.add_argument("--out-dir", required=True, metavar="OUT", help="output folder")
    parser.add_argument("--split", action="append", metavar="NAME",
                        help="only the videos of this split (repeatable; default: all)")
    parser.add_argument("--video-pattern", default=DEFAULT_PATTERN, metavar="PATTERN",
                        help="video file name when an annotation has no 'filename' "
                        "(default %(default)s; NTU: '{frame_dir}_rgb.avi')")
    parser.add_argument("--size", type=int, default=224, metavar="S",
                        help="output side in pixels (default 224)")
    parser.add_argument("--format", choices=FORMATS, default="mp4", dest="fmt",
                        help="mp4: H.264 videos OUT/<frame_dir>.mp4 (default); frames: "
                        "JPEG folders OUT/<frame_dir>/img_00001.jpg")
    parser.add_argument("--crf", type=int, default=18, help="x264 quality (default 18)")
    parser.add_argument("--preset", default="fast", help="x264 preset (default fast)")
    parser.add_argument("--jpeg-quality", type=int, default=95, metavar="Q",
                        help="JPEG quality for --format frames (default 95)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="worker processes (default 0: this process); for a large "
                        "dataset about one per CPU core")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo complete outputs, also when OUT has other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 1 some videos failed, 2 error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0)
        return int(exit_.code or 0)
    try:
        summary = prepare_videos(
            args.annotations, args.video_root, args.out_dir, splits=args.split,
            size=args.size, fmt=args.fmt, video_pattern=args.video_pattern,
            workers=args.workers, crf=args.crf, preset=args.preset,
            jpeg_quality=args.jpeg_quality, overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: complete outputs are kept; rerun to resume", file=sys.stderr)
        return 130
    _print_summary(summary, args.out_dir)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    from epam_jax.prepare import main as _main  # workers then unpickle epam_jax.prepare.*

    sys.exit(_main())
