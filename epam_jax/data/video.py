"""RGB frames for sampled indices, from video files (PyAV) or from frame folders.

A clip needs a few frames spread over a video. A video is decoded from the keyframe at or
before its first needed frame (a seek) up to its last needed frame, and only the needed
frames are converted to RGB and resized. Non-reference frames that are not needed
(B-frames no other frame is predicted from) are handed to the decoder to drop unseen.
Both need timestamps: the first packets must carry presentation times on the grid of
the stream's frame rate, else (decode-order timestamps as in AVI files, a variable frame
rate, an edit list) the video is decoded from frame 0 and its frames are counted. Frames
are identified by count until a seek or a dropped frame, then by timestamp, checked
frame by frame; timestamps that contradict themselves later make the video be decoded
again from frame 0, counting. Either way the pixels equal those of a plain decode loop
from frame 0.

The decoder runs on one thread: on a 224x224 clip its frame threads cost much more CPU
time and slice threads only their start-up (clips per CPU-second, measured with
``python -m benchmarks.loader``; figures in docs/performance.md). A file that cannot be
opened, fails while decoding (an error, or a frame the decoder flags corrupt), or ends
well before the frame count its header states raises ValueError naming it. H.264 has no
checksums: damaged bytes that still parse decode to wrong pixels without any error, and
pass unnoticed.

Whole videos (poses of every frame, the stream of a file) are read with
``iter_video_frames`` and checked before the slow work with ``probe_video`` (one demux
pass): both hold the frames to what the header promises by one rule (``truncation``), a
frame count where the header has one, else its duration, since a variable frame rate
makes duration x rate no frame count. Person detection and the model are not given
frames or person boxes under ``MIN_SIDE`` pixels (``check_min_side``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Decoders whose "drop non-reference frames" leaves every other frame as it was.
SKIP_CODECS = frozenset({"h264", "hevc"})
# Packets read before a seek, to see where the stream's timestamps start and run.
LOOKAHEAD_PACKETS = 16
# A timestamp further than this (in frames) from the frame grid is not trusted.
_GRID_SLACK = 0.25
_MAX_RATE = 1000
# A stretch without frames longer than this many typical frame steps is lost data, not a
# variable frame rate (whose steps vary a few-fold: 1/30 to 1/15 s in dim light).
_HOLE_STEPS = 10
# The shorter side, in pixels, below which a frame is not given to person detection nor a
# frame or person box to EPAM-Net. The RGB stream reduces its input 32-fold to the 7x7
# grid the attention weighs (224 / 7), so at 32 pixels each cell still rests on about
# 4.6 source pixels across (a 7x enlargement to 224); MediaPipe, which enlarges every
# image to its 224x224 detector, "found" persons in 18-20 of 30 frames of 8x8 noise and
# in none from 16 pixels up. The project's own videos clear it: ``make demo``'s 64x64
# frames (person boxes of 39 pixels and more), the stream demo's 128x128 (78 and more).
MIN_SIDE = 32
# Counters for benchmarks (``benchmarks.loader``); one process, not locked.
decode_stats: dict[str, int] = {
    "calls": 0, "frames_decoded": 0, "frames_converted": 0, "skip_offered": 0,
    "seeks": 0, "restarts": 0,
}


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


def open_video(name: str, verb: str = "open") -> Any:
    """The container of video file ``name`` with a video stream, else ValueError
    ("cannot {verb} video ...")."""
    try:
        container = av.open(name, metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"cannot {verb} video {name!r}: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"{name!r} has no video stream")
    return container


def video_frame_count(path: str | os.PathLike[str]) -> int:
    """Number of frames of a video file, counted by demuxing (no decoding)."""
    name = os.fspath(path)
    with open_video(name) as container:
        try:
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size)
        except (av.error.FFmpegError, OSError) as err:
            raise ValueError(f"cannot read video {name!r}: {err}") from err


def frame_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of a video file's frames or a frame folder's first image, read
    from the header only; ValueError naming the path when it cannot be read."""
    try:
        if os.path.isdir(path):
            with Image.open(list_frame_files(path)[0]) as img:
                return img.size[1], img.size[0]
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise ValueError(f"{os.fspath(path)!r} has no video stream")
            ctx = container.streams.video[0].codec_context
            return int(ctx.height), int(ctx.width)
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"cannot read video {os.fspath(path)!r}: {err}") from err


def frame_rate(stream: Any) -> float | None:
    """The stream's nominal frame rate (the timestamps' grid), or None."""
    for rate in (stream.base_rate, stream.guessed_rate, stream.average_rate):
        if rate and 0 < rate <= _MAX_RATE:
            return float(rate)
    return None


def _header_seconds(container: Any, stream: Any) -> float | None:
    """The duration the header states: the stream's, else the file's when the video is
    its only stream; or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _header_frames(container: Any, stream: Any) -> int | None:
    """Frames the container's header states: the stream's frame count, else its duration
    times the frame rate (an estimate: the rate may vary); or None."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate, seconds = frame_rate(stream), _header_seconds(container, stream)
    if rate is None or seconds is None:
        return None
    return round(seconds * rate)


def truncation_tolerance(header_frames: int) -> int:
    """How many frames fewer than its header states a video may decode to (edit lists,
    rounded durations) before it counts as truncated."""
    return max(2, math.ceil(0.02 * header_frames))


class _Span:
    """The frames (or packets) seen: how many, and their timestamps, to tell the time
    they cover (from the stream's start to the end of the latest) and any hole in it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.count = 0
        self.times: list[int] = []
        self.last: int | None = None
        self.last_duration = 0

    def add(self, pts: int | None, duration: int | None) -> None:
        self.count += 1
        if pts is None:
            return
        self.times.append(pts)
        if self.last is None or pts >= self.last:
            self.last, self.last_duration = pts, duration or 0

    def _start(self) -> int:
        start = self.stream.start_time
        return start if start is not None else min(self.times)

    def seconds(self) -> float | None:
        """Seconds from the stream's start to the end of the latest frame, or None."""
        tb = self.stream.time_base
        if self.last is None or not tb:
            return None
        step = self.last_duration
        if not step:  # no duration stored: one frame at the nominal rate
            rate = frame_rate(self.stream)
            step = 1.0 / (float(tb) * rate) if rate else 0.0
        return float((self.last - self._start() + step) * tb)

    def hole(self, slack: float) -> tuple[float, float] | None:
        """(from, to) in seconds of the longest stretch without a frame, when it is longer
        than ``slack`` seconds and than ``_HOLE_STEPS`` typical (median) frame steps."""
        tb = self.stream.time_base
        times = np.unique(np.asarray(self.times, np.int64))
        if times.size < 3 or not tb:
            return None
        steps = np.diff(times)
        i = int(np.argmax(steps))
        gap = float(steps[i] * tb)
        if gap <= max(slack, _HOLE_STEPS * float(np.median(steps) * tb)):
            return None
        start = self._start()
        return float((times[i] - start) * tb), float((times[i + 1] - start) * tb)


def truncation(name: str, container: Any, stream: Any, frames: int,
               span: _Span) -> str | None:
    """Why a video that decodes to ``frames`` frames (``span``: their timestamps) falls
    short of its header, or None when it does not. Against a frame count in the header:
    fewer frames by more than ``truncation_tolerance``. Against a duration alone
    (Matroska, WebM; duration x rate is no count when the rate varies): frames that end,
    or leave a hole, more than that many frames' time short of it. A file whose header
    states neither, or only a duration read off its own last packets (MPEG-TS), passes."""
    if stream.frames and stream.frames > 0:
        header = int(stream.frames)
        if frames < header - truncation_tolerance(header):
            return (f"{name!r} is truncated or corrupt: it decodes to {frames} frames, its "
                    f"header states {header}")
        return None
    stated, rate, seconds = _header_seconds(container, stream), frame_rate(stream), span.seconds()
    if stated is None or rate is None or seconds is None:
        return None
    slack = truncation_tolerance(round(stated * rate)) / rate
    if seconds < stated - slack:
        return (f"{name!r} is truncated or corrupt: it decodes to {frames} frames lasting "
                f"{seconds:.2f} s, its header states {stated:.2f} s")
    hole = span.hole(slack)
    if hole is not None:
        return (f"{name!r} is truncated or corrupt: it decodes to {frames} frames with none "
                f"from {hole[0]:.2f} s to {hole[1]:.2f} s of its {stated:.2f} s")
    return None


def too_small(shape: tuple[int, int]) -> bool:
    """Whether a frame or box of ``shape`` = (height, width) is under ``MIN_SIDE``."""
    return min(shape) < MIN_SIDE


def check_min_side(shape: tuple[int, int], what: str, hint: str = "") -> None:
    """Refuse ``what`` (a frame, a person box) of ``shape`` = (height, width) under
    ``MIN_SIDE`` pixels on its shorter side: ValueError saying both sizes."""
    if too_small(shape):
        raise ValueError(f"{what} is {shape[1]}x{shape[0]} pixels; person detection and "
                         f"EPAM-Net need at least {MIN_SIDE} pixels on its shorter side{hint}")


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    """What one demux pass over a video file tells: its frame count (the packets that
    hold data, as many as an intact file decodes to), the size of its first frame
    (height, width) and its frame rate."""

    frames: int
    shape: tuple[int, int]
    fps: float | None


def probe_video(path: str | os.PathLike[str],
                report: Callable[[str], None] | None = None) -> VideoProbe:
    """Check a video file before the slow work, without decoding it all: it opens, its
    first frame decodes cleanly, and its packets are not short of the frames its header
    states (``truncation``). A failure raises ValueError naming the file; a shortfall
    is handed to ``report`` instead when one is given."""
    name = os.fspath(path)
    with open_video(name, "read") as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1
        span = _Span(stream)
        first = None
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                span.add(packet.pts, packet.duration)
                if first is None:
                    first = next(iter(ctx.decode(packet)), None)
            if first is None and span.count:
                first = next(iter(ctx.decode(None)), None)
        except (av.error.FFmpegError, OSError) as err:
            raise ValueError(f"cannot read video {name!r}: {err}") from err
        if first is None:
            raise ValueError(f"{name!r} has no decodable frames")
        if first.is_corrupt:
            raise ValueError(f"{name!r} is corrupt: frame 0 does not decode cleanly")
        short = truncation(name, container, stream, span.count, span)
        if short is not None:
            if report is None:
                raise ValueError(short)
            report(short)
        return VideoProbe(span.count, (first.height, first.width), frame_rate(stream))


def iter_video_frames(container: Any, name: str, live: bool = False,
                      report: Callable[[str], None] | None = None) -> Iterator[Any]:
    """Every frame of ``container``'s video stream, in order, for readers of whole videos.

    A file is held to its header: a frame that does not decode cleanly, or an end short
    of the frames the header states (``truncation``, checked after the last frame),
    raises ValueError naming ``name``; with ``report``, the frames end there and the
    message goes to ``report`` instead. A ``live`` source (camera, URL, pipe) has no
    header count and may lose packets: nothing is checked."""
    stream = container.streams.video[0]
    span = _Span(stream)
    problem = None
    try:
        for frame in container.decode(stream):
            if frame.is_corrupt and not live:
                problem = f"{name!r} is corrupt: frame {span.count} does not decode cleanly"
                break
            span.add(frame.pts, frame.duration)
            yield frame
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode video {name!r}: {err}") from err
    if live:
        return
    if span.count == 0:  # nothing to go on, whatever the caller allows
        raise ValueError(problem or f"{name!r} has no decodable frames")
    problem = problem or truncation(name, container, stream, span.count, span)
    if problem is not None:
        if report is None:
            raise ValueError(problem)
        report(problem)


_LOCAL = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's RGB converter. It keeps its swscale context from frame to frame and
    clip to clip (same sizes and format: same pixels); a fresh one per frame, as
    ``frame.reformat`` makes, costs measurable time per frame (docs/performance.md)."""
    reformatter = getattr(_LOCAL, "reformatter", None)
    if reformatter is None:
        reformatter = _LOCAL.reformatter = VideoReformatter()
    return reformatter


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded frame as uint8 (H, W, 3) RGB, resized to ``size`` = (H, W) by area
    averaging (None: native size); the conversion every clip's frames go through."""
    kwargs: dict[str, Any] = {"format": "rgb24", "interpolation": "AREA"}
    if size is not None:
        kwargs.update(height=size[0], width=size[1])
    return _reformatter().reformat(frame, **kwargs).to_ndarray()


class _Clock:
    """Frame index <-> timestamp of a stream: index = (pts - origin) / ticks per frame."""

    def __init__(self, origin: int, step: float) -> None:
        self.origin, self.step = origin, step

    @classmethod
    def of(cls, stream: Any, origin: int | None) -> _Clock | None:
        rate = frame_rate(stream)
        if origin is None or rate is None or not stream.time_base:
            return None
        step = 1.0 / (float(stream.time_base) * rate)
        return cls(origin, step) if step >= 1.0 else None

    def index(self, pts: int | None) -> int | None:
        """The frame at ``pts``, or None when it lies off the frame grid."""
        if pts is None:
            return None
        x = (pts - self.origin) / self.step
        i = round(x)
        return i if abs(x - i) <= _GRID_SLACK else None

    def pts(self, index: int) -> int:
        return self.origin + math.floor(index * self.step)


class _Untrusted(Exception):
    """The timestamps contradicted themselves after a seek or a dropped frame, or a
    frame came out corrupt there: decode again on the plain pass."""


class _ClipDecoder:
    """One pass over a video collecting the frames ``wanted`` (sorted, unique).

    ``timed=False`` is the plain pass: from frame 0, counting, nothing dropped."""

    def __init__(self, name: str, container: Any, wanted: np.ndarray,
                 size: tuple[int, int] | None, clamp: bool, timed: bool) -> None:
        self.name, self.container, self.size, self.clamp = name, container, size, clamp
        self.timed = timed
        self.stream = container.streams.video[0]
        self.ctx = self.stream.codec_context
        self.ctx.thread_count = 1
        self.want = set(wanted.tolist())
        self.first = int(wanted[0])
        self.frames: dict[int, np.ndarray] = {}
        self.clock: _Clock | None = None
        self.can_skip = False
        self.by_time = False  # frames identified by timestamp (else by count)
        self.started = True  # False after a seek until a keyframe comes out
        self.count = 0  # frames out so far
        self.next = 0  # index the next frame must have (by timestamp)
        self.agree = True  # every frame so far: index by timestamp == count
        self.reordered = False  # a packet had an earlier pts than one before it:
        # the timestamps are presentation times, not decode order
        self.max_pts: int | None = None
        self.skipped: set[int] = set()
        self.skip_on = False
        self.tail: Any = None  # the last frame out (for clamp) and its index
        self.tail_index = -1
        self.keep = -1  # never dropped: the header's last frame (for clamp)
        self.span = _Span(self.stream)  # of the frames decoded, for ``truncation``

    def run(self) -> tuple[dict[int, np.ndarray], int | None]:
        """The wanted frames found, and the video's frame count if the end was reached."""
        packets = self.container.demux(self.stream)
        head = list(itertools.islice(packets, LOOKAHEAD_PACKETS if self.timed else 1))
        if not head or not head[0].size:
            raise ValueError(f"{self.name!r} has no decodable frames")
        if self.timed:
            self.clock = self._trusted_clock(head)
            self.can_skip = self.clock is not None and self.ctx.name in SKIP_CODECS
            header = _header_frames(self.container, self.stream)
            if self.clamp and header:
                self.keep = header - 1
        if self.clock is not None and self.first > 0:
            reach = max(self.clock.index(p.pts) for p in head if p.size)
            if reach < self.first or any(p.is_keyframe for p in head[1:]):
                packets, head = self._seek(self.clock.pts(self.first), head)
        for packet in itertools.chain(head, packets):
            if self._feed(packet):
                return self.frames, None
        return self.frames, self._at_end()

    def _trusted_clock(self, head: list[Any]) -> _Clock | None:
        """The stream's clock if the first packets' timestamps look like presentation
        times on its frame grid (distinct, from the first packet's on, about as many
        frames as packets, and out of decode order when the stream reorders frames);
        else None: decode-order timestamps (AVI), a variable frame rate, an edit list
        that drops the first frames. Without a clock frames are only counted."""
        clock = _Clock.of(self.stream, head[0].pts)
        sized = [p for p in head if p.size]
        if clock is None or any(p.pts is None or p.is_discard for p in sized):
            return None
        idx = [clock.index(p.pts) for p in sized]
        if (None in idx or min(idx) != 0 or len(set(idx)) != len(idx)
                or max(idx) >= len(idx) + LOOKAHEAD_PACKETS):
            return None
        reordered = any(b < a for a, b in itertools.pairwise(idx))
        if self.ctx.has_b_frames and not reordered:
            return None
        return clock

    def _seek(self, target: int, head: list[Any]) -> tuple[Any, list[Any]]:
        """Seek to the keyframe at or before ``target``; back at the first packet this is
        the plain pass, else frames are identified by timestamp from the first keyframe."""
        reordered = any(b.pts < a.pts for a, b in itertools.pairwise(head) if a.size and b.size)
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        decode_stats["seeks"] += 1
        packets = self.container.demux(self.stream)
        landed = list(itertools.islice(packets, 1))
        if not landed:
            raise _Untrusted
        first, at = head[0], landed[0]
        if (at.pos, at.dts, at.pts) != (first.pos, first.dts, first.pts):
            self.by_time, self.started, self.reordered = True, False, reordered
        return packets, landed

    def _feed(self, packet: Any) -> bool:
        """Decode one packet (offering it for dropping when not needed); True when done."""
        pts = packet.pts
        if pts is not None:
            if self.max_pts is not None and pts < self.max_pts:
                self.reordered = True
            if self.max_pts is None or pts > self.max_pts:
                self.max_pts = pts
        skip = False
        if (self.can_skip and self.reordered and (self.by_time or self.agree)
                and packet.size and self.started):
            idx = self.clock.index(pts)
            done = self.next if self.by_time else self.count  # frames before are out
            skip = (idx is not None and idx >= done and idx not in self.want
                    and idx != self.keep)
        if skip != self.skip_on:
            self.ctx.skip_frame = "NONREF" if skip else "DEFAULT"
            self.skip_on = skip
        if skip:
            decode_stats["skip_offered"] += 1
            if not self.by_time:  # so far index by timestamp == count: switch
                self.by_time, self.next = True, self.count
            self.skipped.add(idx)
        for frame in self.ctx.decode(packet):
            if self._take(frame):
                return True
        return False

    def _take(self, frame: Any) -> bool:
        """Identify, check and keep one decoded frame; True when all wanted are in."""
        decode_stats["frames_decoded"] += 1
        if self.by_time:
            idx = self.clock.index(frame.pts) if self.clock is not None else None
            if idx is None:
                raise _Untrusted
            if not self.started:  # after a seek: nothing before the keyframe is sound
                if not frame.key_frame:
                    return False
                if idx > self.first:
                    raise _Untrusted
                self.started, self.next = True, idx
            if idx < self.next or any(j not in self.skipped for j in range(self.next, idx)):
                raise _Untrusted
            self.next = idx + 1
        else:
            idx = self.count
            if self.agree:
                self.agree = self.clock is not None and self.clock.index(frame.pts) == idx
        self.count += 1
        self.span.add(frame.pts, frame.duration)
        if frame.is_corrupt:
            if self.by_time:  # make sure on the plain pass
                raise _Untrusted
            raise ValueError(f"{self.name!r} is corrupt: frame {idx} does not decode cleanly")
        if idx in self.want:
            self.frames[idx] = self._convert(frame)
            if len(self.frames) == len(self.want):
                return True
        if self.clamp:
            self.tail, self.tail_index = frame, idx
        return False

    def _convert(self, frame: Any) -> np.ndarray:
        decode_stats["frames_converted"] += 1
        return to_rgb(frame, self.size)

    def _at_end(self) -> int:
        """At the end of the stream: its frame count; missing frames are clamped to the
        last one, or raise (a truncated file, an index past the end without clamp)."""
        if self.by_time and not self.started:
            raise _Untrusted
        n = self.next if self.by_time else self.count
        missing = self.want.difference(self.frames)
        if not missing:
            return n
        if min(missing) < n or any(j >= n for j in self.skipped):
            raise _Untrusted  # a wanted frame, or the end, fell among dropped frames
        if n == 0:
            raise ValueError(f"{self.name!r} has no decodable frames")
        short = truncation(self.name, self.container, self.stream, n, self.span)
        if short is not None:
            raise ValueError(short)
        if not self.clamp:
            raise ValueError(f"{self.name!r} has {n} frames; frame index {max(missing)} "
                             "requested")
        if self.tail_index != n - 1:
            raise _Untrusted
        self.frames[n - 1] = self._convert(self.tail)
        return n


def _decode(name: str, wanted: np.ndarray, size: tuple[int, int] | None, clamp: bool,
            timed: bool) -> tuple[dict[int, np.ndarray], int | None]:
    with open_video(name) as container:
        return _ClipDecoder(name, container, wanted, size, clamp, timed).run()


def decode_video_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    size: tuple[int, int] | None = (224, 224),
    clamp: bool = False,
) -> np.ndarray:
    """Frames ``indices`` (0-based, any order, repeats allowed) of a video as uint8
    (len(indices), H, W, 3) RGB, resized to ``size`` = (H, W) by area averaging (None
    keeps the native size). An index past the end raises ValueError, or with ``clamp`` takes
    the last frame. A file that cannot be opened or decoded, or is truncated, raises
    ValueError naming it."""
    inds = _check_indices(indices)
    size = _check_size(size)
    name = os.fspath(path)
    wanted = np.unique(inds)
    decode_stats["calls"] += 1
    try:
        try:
            frames, count = _decode(name, wanted, size, clamp, timed=True)
        except (_Untrusted, av.error.FFmpegError):  # a decoding error too is confirmed
            decode_stats["restarts"] += 1
            frames, count = _decode(name, wanted, size, clamp, timed=False)
    except (av.error.FFmpegError, OSError) as err:
        raise ValueError(f"cannot decode video {name!r}: {err}") from err
    top = len(frames) if count is None else count
    return np.stack([frames[int(i) if count is None else min(int(i), top - 1)]
                     for i in inds])


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
            decode_stats["frames_decoded"] += 1
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
