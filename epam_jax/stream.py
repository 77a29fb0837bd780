"""Action recognition over a long video or a live source, window by window.

    python -m epam_jax.stream SOURCE --checkpoint CKPT [--out-dir DIR] [--window 3.2]
        [--stride 1.0] [--video-out annotated.mp4]

SOURCE is a video file, a camera (``/dev/video0``, or its number ``0``) or a stream URL
(``rtsp://``, ``http://``, ...). Frames are decoded on a reader thread; MediaPipe gives
each frame's pose as it comes (in this process, or in the interpreter named by
``--pose-python``/``$EPAM_POSE_PYTHON``, as ``predict`` does; ``--poses ANN.pkl`` gives
them instead). Window k covers frames [k * stride, k * stride + span) with span and
stride the ``--window`` and ``--stride`` seconds at the source's frame rate; a file's last
window is aligned to its end, so the windows cover the whole video (one window when the
video is shorter than a span). Each window is one clip of that stretch, made exactly as
``predict`` makes the clip of a video holding just those frames: ``clip_len`` pose frames
sampled by the test-mode rule, the RGB frames at every ``rgb_stride``-th of them (the
checkpoint's recorded geometry, else the paper's 48 and 3; ``--clip-len``,
``--rgb-stride`` and ``--size`` override it, with a warning), cropped to the person box of
that window's poses, so the crop follows the person. Windows where too few frames show a
person, or whose person box is under ``MIN_SIDE`` pixels, are labelled ``no_person``. The
model runs on its own thread, beside the poses. A file is checked before anything runs
(``epam_jax.data.video.probe_video``: not short of the frames its header states, frames
of at least ``MIN_SIDE`` pixels) and again as it is decoded; a ``--poses`` file must
hold its sample (``epam_jax.realvideo.select_pose_sample``) of about its length.

A live source (camera, URL, or ``--pace realtime``) keeps up instead of falling behind:
frames that arrive while the reader's queue is full are dropped, and windows holding a
dropped frame, or finished more than a stride ago when the model gets to them, are
labelled ``dropped``.

Outputs in ``--out-dir``: ``timeline.jsonl`` (or ``.csv``), one row per window as it is
done (start and end times, status, person box, top-k classes), so the timeline so far is
readable while the stream runs and after it stops; at the end (also on a stall, an error
in the source or Ctrl-C) ``windows.npz`` (each window's scores, logits, attention, RGB
frame numbers and box), ``poses.pkl`` (the stream's poses, a PoseC3D annotation to give
back with ``--poses``), ``timeline.png`` and, with ``--video-out``, the annotated MP4
(label, probability and the attention overlay in the person box on every frame). The
real-time factor (seconds of video per second of wall time, and for the poses and the
model alone) is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from epam_jax.checkpoints import LoadedModel, load_model
from epam_jax.cli import OneLineErrors, atomic_output, ensure_writable_dir, output_dirs, run_cli
from epam_jax.data import ClipConfig, load_annotations, parse_annotations, save_annotations
from epam_jax.data.datasets import read_names
from epam_jax.data.ntu_classes import class_names
from epam_jax.data.pose import detection_image, poses_annotation, to_pixels
from epam_jax.data.sampling import rgb_indices, uniform_sample_indices
from epam_jax.data.video import (
    check_min_side,
    decode_video_frames,
    frame_rate,
    iter_video_frames,
    probe_video,
    to_rgb,
    too_small,
    truncation_tolerance,
)
from epam_jax.forward import make_forward
from epam_jax.predict import require_heads, top_k
from epam_jax.realvideo import (
    check_pose_frames,
    open_pose_tracker,
    person_box,
    person_inputs,
    select_pose_sample,
)
from epam_jax.viz import _font, blend_attention

STATUSES = ("ok", "no_person", "dropped")
TIMELINE_FORMATS = ("jsonl", "csv")
_END = object()


# --------------------------------------------------------------------------- windows


class WindowPlan:
    """Where the windows of a stream lie, in frames: window k is [k * stride,
    k * stride + span); which frames a window samples (test-mode rule, as ``predict``)."""

    def __init__(self, span: int, stride: int, clip_len: int = 48, rgb_stride: int = 3):
        if span <= 0 or stride <= 0:
            raise ValueError(f"expected a window and stride of at least one frame, got "
                             f"{span} and {stride} frames")
        self.span, self.stride = int(span), int(stride)
        self.clip_len, self.rgb_stride = clip_len, rgb_stride
        self._rgb = frozenset(self.rgb_offsets(self.span).tolist())

    def pose_offsets(self, length: int) -> np.ndarray:
        return uniform_sample_indices(length, self.clip_len, test_mode=True)

    def rgb_offsets(self, length: int) -> np.ndarray:
        return rgb_indices(self.pose_offsets(length), self.rgb_stride)

    def needs_rgb(self, index: int) -> bool:
        """Whether some regular window takes frame ``index`` as one of its RGB frames."""
        return any(o <= index and (index - o) % self.stride == 0 for o in self._rgb)

    def completed_by(self, index: int) -> int | None:
        """The regular window whose last frame is ``index``, if any."""
        first = index + 1 - self.span
        return first // self.stride if first >= 0 and first % self.stride == 0 else None

    def nearest(self, index: int) -> int:
        """The regular window whose centre is nearest to frame ``index``."""
        return max(0, round((index - (self.span - 1) / 2) / self.stride))

    def regular_count(self, frames: int) -> int:
        return 0 if frames < self.span else (frames - self.span) // self.stride + 1

    def tail(self, frames: int) -> tuple[int, int] | None:
        """(start, length) of the window that covers the end of a stream of ``frames``
        frames not covered by regular windows (aligned to the end; the whole stream when
        it is shorter than a span), or None."""
        regular = self.regular_count(frames)
        if regular == 0:
            return (0, frames) if frames > 0 else None
        end = (regular - 1) * self.stride + self.span
        return (frames - self.span, self.span) if end < frames else None


@dataclasses.dataclass
class Window:
    """One window: its frames, status and (once the model ran) outputs."""

    index: int
    start: int  # first frame
    length: int
    rgb_frames: np.ndarray  # (16,) frame numbers of its RGB frames
    status: str = "ok"
    person_frames: float = 0.0  # share of its frames with a detected person
    box: tuple[int, int, int, int] | None = None
    rgb: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    outputs: dict[str, np.ndarray] | None = None
    display: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.length


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Frame:
    index: int
    image: np.ndarray  # what the pose estimator sees
    native: np.ndarray | None  # full-size RGB, for the frames windows take
    display: np.ndarray | None  # for the annotated video


def _camera_device(source: str) -> str | None:
    if re.fullmatch(r"\d+", source):
        return f"/dev/video{source}"
    return source if source.startswith("/dev/video") else None


class Source:
    """An opened video source: its container, frame rate and whether it is live; a file
    also its frame count, checked first (``probe_video``, ``check_min_side``)."""

    def __init__(self, source: str, pace: bool = False, timeout: float = 10.0) -> None:
        self.name = source
        self.camera = _camera_device(source)
        self.url = self.camera is None and "://" in source
        self.path: Path | None = None
        self.frames: int | None = None
        try:
            if self.camera is not None:
                self.container = av.open(self.camera, format="v4l2")
            elif self.url:
                micro = str(int(timeout * 1e6))
                self.container = av.open(source, timeout=timeout,
                                         options={"rw_timeout": micro})
            else:
                path = Path(source)
                if not path.exists() or path.is_dir():
                    raise FileNotFoundError(f"no video file at {source} (a camera is "
                                            "/dev/videoN or its number N)")
                self.path = path if path.is_file() else None  # not a pipe: seekable
                if self.path is not None:
                    probe = probe_video(path)
                    check_min_side(probe.shape, f"each frame of {source}")
                    self.frames = probe.frames
                self.container = av.open(source, metadata_errors="ignore")
        except av.error.FFmpegError as err:
            if self.camera is not None:
                raise OSError(
                    f"cannot open camera {self.camera}: {err}; check that it exists "
                    "(ls /dev/video*), that no other program holds it and that this user "
                    "may read it (group 'video')") from None
            raise ValueError(f"cannot open video source {source}: {err}") from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{source} has no video stream")
        self.stream = self.container.streams.video[0]
        self.fps = frame_rate(self.stream)
        if self.fps is None:
            self.container.close()
            raise ValueError(f"{source} states no frame rate; windows are set in seconds")
        self.live = self.camera is not None or self.url or pace
        self.pace = pace

        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the container once (the reader thread or the consumer, whoever is last:
        closing it under a decode that is still blocked would crash)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.container.close()


class FrameReader(threading.Thread):
    """Decodes the source into a queue of ``Frame``s, ending with ``_END`` (or the
    exception that stopped it). Live: a full queue drops the frame (counted)."""

    def __init__(self, source: Source, plan: WindowPlan, max_side: int,
                 display_side: int | None, backlog: int) -> None:
        super().__init__(daemon=True, name="epam-stream-reader")
        self.source, self.plan = source, plan
        self.max_side, self.display_side = max_side, display_side
        self.frames: queue.Queue = queue.Queue(maxsize=backlog)
        self.stop = threading.Event()
        self.newest = -1  # index of the newest frame decoded
        self.dropped = 0
        self.shape: tuple[int, int] | None = None

    def _display(self, frame: av.VideoFrame) -> np.ndarray:
        scale = min(1.0, self.display_side / max(frame.height, frame.width))
        width = max(2, 2 * round(frame.width * scale / 2))
        height = max(2, 2 * round(frame.height * scale / 2))
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.frames.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        source = self.source
        try:
            start = time.monotonic()
            frames = iter_video_frames(source.container, source.name,
                                       live=source.path is None)
            for index, frame in enumerate(frames):
                if self.stop.is_set():
                    return
                if source.pace:
                    delay = start + index / source.fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self.newest = index
                shape = (frame.height, frame.width)
                if self.shape is None:
                    check_min_side(shape, f"each frame of {source.name}")
                    self.shape = shape
                elif shape != self.shape:
                    raise ValueError(f"{source.name} changed its frame size from "
                                     f"{self.shape} to {shape} at frame {index}")
                if source.live and self.frames.full():
                    self.dropped += 1
                    continue
                item = Frame(
                    index,
                    detection_image(frame, self.max_side),
                    to_rgb(frame) if self.plan.needs_rgb(index) else None,
                    None if self.display_side is None else self._display(frame),
                )
                if not self._put(item):
                    return
            self._put(_END)
        except Exception as err:  # handed to the consumer, which reports it
            self._put(err)
        finally:
            if self.stop.is_set():  # the consumer has given up on this thread
                self.source.close()


# --------------------------------------------------------------------------- outputs


def _draw_label(image: Image.Image, text: str, xy: tuple[int, int], size: int) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(size)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
    draw.rectangle((x0 - 3, y0 - 2, x1 + 3, y1 + 2), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def annotate_frame(frame: np.ndarray, index: int, fps: float, window: Window,
                   shape: tuple[int, int], names: Sequence[str]) -> np.ndarray:
    """One display frame with its window's result: the attention overlay inside the
    person box, the box, the top class and its probability; or the window's status."""
    height, width = frame.shape[:2]
    out = frame.copy()
    label = {"no_person": "no person", "dropped": "dropped (keeping up)"}.get(window.status)
    if window.status == "ok":
        attention = window.outputs["attention"][..., 0]
        slot = int(np.argmin(np.abs(window.rgb_frames - index)))
        sx, sy = width / shape[1], height / shape[0]
        x0, y0, x1, y1 = window.box
        bx0, by0 = int(round(x0 * sx)), int(round(y0 * sy))
        bx1, by1 = max(bx0 + 1, int(round(x1 * sx))), max(by0 + 1, int(round(y1 * sy)))
        region = out[by0:by1, bx0:bx1]
        out[by0:by1, bx0:bx1] = blend_attention(region, attention[slot],
                                                float(attention.min()), float(attention.max()))
        best = top_k(window.outputs["scores"], names, 1)[0]
        label = f"{best['name']}  p={best['prob']:.2f}"
    image = Image.fromarray(out)
    if window.status == "ok":
        ImageDraw.Draw(image).rectangle((bx0, by0, bx1 - 1, by1 - 1), outline=(255, 255, 0),
                                        width=2)
    size = max(12, height // 24)
    _draw_label(image, label, (8, 8), size)
    _draw_label(image, f"{index / fps:7.2f} s", (8, height - size - 12), size)
    return np.asarray(image)


class VideoWriter:
    """H.264 MP4 written to a temporary file, renamed into place when closed."""

    def __init__(self, path: Path, fps: float) -> None:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_output(path))
        self.container = av.open(os.fspath(tmp), "w", format="mp4")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.stream = None
        self.path = path
        self.closed = False
        self.kept = False

    def write(self, frame: np.ndarray) -> None:
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": "23", "preset": "veryfast"}
        packet = self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
        self.container.mux(packet)

    def close(self, keep: bool = True) -> bool:
        """Finish the file; True when it was kept (``keep`` and at least one frame),
        else it is removed. Closing again changes nothing."""
        if not self.closed:
            self.closed = True
            try:
                with self._stack:  # leaving it renames the file into place, or removes it
                    if self.stream is not None:
                        self.container.mux(self.stream.encode(None))
                    self.container.close()
                    if not keep or self.stream is None:
                        raise _Discard
                self.kept = True
            except _Discard:
                pass
        return self.kept


class _Discard(Exception):
    pass


class Timeline:
    """The per-window rows: printed, appended to the timeline file (each row written
    whole and flushed), kept for ``windows.npz`` and the timeline picture."""

    def __init__(self, path: Path, fmt: str, names: Sequence[str], k: int, fps: float):
        self.path, self.fmt, self.names, self.k, self.fps = path, fmt, names, k, fps
        self.rows: list[dict[str, Any]] = []
        self.windows: list[Window] = []
        self._file: io.TextIOBase | None = None
        self._csv: Any = None

    def _open(self) -> None:
        ensure_writable_dir(self.path.parent, "output")
        self._file = open(self.path, "w", newline="")  # noqa: SIM115 - open for the run
        if self.fmt == "csv":
            fields = ["window", "start", "end", "start_frame", "end_frame", "status",
                      "person_frames", "box"]
            for r in range(1, self.k + 1):
                fields += [f"class_{r}", f"name_{r}", f"prob_{r}", f"score_{r}"]
            self._csv = csv.DictWriter(self._file, fields)
            self._csv.writeheader()
            self._file.flush()

    def add(self, window: Window) -> dict[str, Any]:
        if self._file is None:
            self._open()
        top = (top_k(window.outputs["scores"], self.names, self.k)
               if window.status == "ok" else [])
        row = {
            "window": window.index,
            "start": round(window.start / self.fps, 6),
            "end": round(window.end / self.fps, 6),
            "start_frame": window.start,
            "end_frame": window.end,
            "status": window.status,
            "person_frames": round(window.person_frames, 4),
            "box": None if window.box is None else list(window.box),
            "top": top,
        }
        if self.fmt == "jsonl":
            self._file.write(json.dumps(row) + "\n")
        else:
            flat = {k: v for k, v in row.items() if k not in ("top", "box")}
            flat["box"] = "" if window.box is None else " ".join(map(str, window.box))
            for r, entry in enumerate(top, 1):
                flat |= {f"class_{r}": entry["index"], f"name_{r}": entry["name"],
                         f"prob_{r}": round(entry["prob"], 6),
                         f"score_{r}": round(entry["score"], 6)}
            self._csv.writerow(flat)
        self._file.flush()
        self.rows.append(row)
        self.windows.append(window)
        shown = (f"{top[0]['name']}  p={top[0]['prob']:.3f}" if top
                 else window.status.replace("_", " "))
        print(f"  {row['start']:8.2f} - {row['end']:8.2f} s  {shown}", flush=True)
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def arrays(self, num_classes: int) -> dict[str, np.ndarray]:
        """Every window's numbers, NaN (scores) or -1 (box) where the model did not run."""
        n = len(self.windows)
        out = {
            "window_start": np.array([w.start for w in self.windows], np.int64),
            "window_end": np.array([w.end for w in self.windows], np.int64),
            "status": np.array([w.status for w in self.windows], dtype="U9"),
            "person_frames": np.array([w.person_frames for w in self.windows], np.float32),
            "box": np.array([w.box or (-1, -1, -1, -1) for w in self.windows],
                            np.int64).reshape(n, 4),
            "rgb_frames": np.array([w.rgb_frames for w in self.windows],
                                   np.int64).reshape(n, -1),
            "fps": np.float64(self.fps),
        }
        shapes = {}
        for w in self.windows:
            if w.outputs is not None:
                shapes = {k: v.shape for k, v in w.outputs.items()}
                break
        shapes.setdefault("scores", (num_classes,))
        for key, shape in shapes.items():
            stack = np.full((n, *shape), np.nan, np.float32)
            for i, w in enumerate(self.windows):
                if w.outputs is not None:
                    stack[i] = w.outputs[key]
            out[key] = stack
        return out


def _spans(rows: Sequence[dict[str, Any]], status: str) -> list[tuple[float, float]]:
    """Merged (start, end) times of the windows with ``status``."""
    spans: list[tuple[float, float]] = []
    for r in rows:
        if r["status"] != status:
            continue
        if spans and r["start"] <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], r["end"]))
        else:
            spans.append((r["start"], r["end"]))
    return spans


def timeline_picture(rows: Sequence[dict[str, Any]], scores: np.ndarray,
                     names: Sequence[str], path: Path, title: str, leading: int = 6) -> Path:
    """Softmax probabilities of the leading classes (each window's best first, then the
    highest peaks) against the window centres; no-person and dropped stretches shaded.
    ``scores``: (windows, classes), NaN where the model did not run."""
    from matplotlib.figure import Figure

    scores = np.asarray(scores, np.float64)
    probs = np.exp(scores - np.nanmax(scores, axis=1, keepdims=True, initial=-np.inf))
    probs /= np.nansum(probs, axis=1, keepdims=True)
    ran = ~np.isnan(scores[:, 0])
    chosen: list[int] = []
    if ran.any():
        best = np.argmax(np.where(np.isnan(probs), -1, probs), axis=1)[ran]
        peaks = np.nanmax(probs[ran], axis=0)
        for cls in [*dict.fromkeys(best.tolist()), *np.argsort(-peaks).tolist()]:
            if cls not in chosen and len(chosen) < leading:
                chosen.append(int(cls))
    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax = fig.add_subplot()
    centres = np.array([(r["start"] + r["end"]) / 2 for r in rows])
    for cls in chosen:
        ax.plot(centres, probs[:, cls], marker="o", markersize=3, label=names[cls])
    for status, colour, label in (("no_person", "0.75", "no person"),
                                  ("dropped", "#f4b183", "dropped")):
        for i, (a, b) in enumerate(_spans(rows, status)):
            ax.axvspan(a, b, color=colour, alpha=0.4, lw=0, label=None if i else label)
    ax.set_xlabel("time (s); points at window centres")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.02)
    if rows:
        ax.set_xlim(0, max(r["end"] for r in rows))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class StreamResult:
    """What a run produced and how fast it was."""

    rows: list[dict[str, Any]]
    files: list[Path]
    frames: int
    fps: float
    wall_seconds: float
    pose_seconds: float
    model_seconds: float
    dropped_frames: int
    stopped: str  # "end", "stall", "interrupt", "error"

    @property
    def video_seconds(self) -> float:
        return self.frames / self.fps

    def real_time_factor(self, seconds: float) -> float:
        return self.video_seconds / seconds if seconds > 0 else float("inf")


class _Recognizer:
    """The consumer side: poses frame by frame, windows as they complete, the model on
    its own thread, rows in window order."""

    def __init__(self, loaded: LoadedModel, plan: WindowPlan, config: ClipConfig,
                 tracker: Callable[[np.ndarray], np.ndarray | None] | None,
                 poses: dict[str, Any] | None, source: Source, reader: FrameReader,
                 timeline: Timeline, video: VideoWriter | None, min_person: float):
        self.plan, self.config, self.tracker, self.poses = plan, config, tracker, poses
        self.source, self.reader, self.timeline, self.video = source, reader, timeline, video
        self.min_person = min_person
        self.persons = 1 if poses is None else int(poses["keypoint"].shape[0])
        # frames past the end of a pose file that check_pose_frames let through
        self.pose_slack = (truncation_tolerance(source.frames)
                           if poses is not None and source.frames is not None else 0)
        self.forward, self.num_devices = make_forward(loaded, fusion="residual",
                                                      pooling="pooled")
        self.keypoints: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.detected: list[bool] = []
        self.missing: list[bool] = []
        self.native: dict[int, np.ndarray] = {}
        self.display: deque[tuple[int, np.ndarray]] = deque()
        self.windows = 0
        self.pose_seconds = 0.0
        self.model_seconds = 0.0
        self.work: queue.Queue = queue.Queue(maxsize=0 if source.live else 2)
        self.failure: BaseException | None = None
        self.worker = threading.Thread(target=self._model_loop, daemon=True,
                                       name="epam-stream-model")

    # -- model thread

    def warm_up(self) -> float:
        """Compile the forward pass before the first frame (seconds taken)."""
        side, length = self.config.rgb_size, self.plan.span
        rgb_frames = len(self.plan.rgb_offsets(length))
        rgb = np.zeros((rgb_frames, side[0], side[1], 3), np.float32)
        heat = np.zeros((self.plan.clip_len, *self.config.heatmap_size, 17), np.float32)
        start = time.perf_counter()
        self._run_model(rgb, heat)
        return time.perf_counter() - start

    def _run_model(self, rgb: np.ndarray, heatmap: np.ndarray) -> dict[str, np.ndarray]:
        tile = (self.num_devices,) + (1,) * rgb.ndim
        out = self.forward({"rgb": np.tile(rgb[None], tile),
                            "heatmap": np.tile(heatmap[None], tile)})
        return {k: out[k][0] for k in ("rgb_logits", "pose_logits", "scores", "attention")}

    def _model_loop(self) -> None:
        while True:
            window = self.work.get()
            if window is _END:
                return
            try:
                if (window.status == "ok" and self.source.live
                        and self.reader.newest - (window.end - 1) > self.plan.stride):
                    window.status = "dropped"
                if window.status == "ok":
                    start = time.perf_counter()
                    window.outputs = self._run_model(window.rgb, window.heatmap)
                    self.model_seconds += time.perf_counter() - start
                window.rgb = window.heatmap = None
                self.timeline.add(window)
                if self.video is not None:
                    for index, frame in window.display:
                        self.video.write(annotate_frame(
                            frame, index, self.source.fps, window, self.reader.shape,
                            self.timeline.names))
                    window.display = []
            except BaseException as err:  # reported by the main thread
                self.failure = err
                return

    def _submit(self, window: Window) -> None:
        while True:
            if self.failure is not None:
                raise RuntimeError(f"the model thread failed: {self.failure}") from self.failure
            try:
                self.work.put(window, timeout=0.2)
                return
            except queue.Full:
                continue

    # -- main thread

    def annotation(self) -> dict[str, Any]:
        """The stream's poses so far as a PoseC3D annotation."""
        shape = self.reader.shape or (0, 0)
        name = Path(self.source.name).stem or "stream"
        return poses_annotation(self.keypoints, self.scores, shape, sum(self.detected),
                                frame_dir=name)

    def _persons(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (M, T, 17, 2) and scores (M, T, 17) of frames [start, stop)."""
        return (np.stack(self.keypoints[start:stop], axis=1),
                np.stack(self.scores[start:stop], axis=1))

    def _missing_frame(self) -> None:
        self.keypoints.append(np.zeros((self.persons, 17, 2), np.float32))
        self.scores.append(np.zeros((self.persons, 17), np.float32))
        self.detected.append(False)
        self.missing.append(True)

    def feed(self, frame: Frame) -> None:
        while len(self.keypoints) < frame.index:  # frames the reader dropped
            self._missing_frame()
        shape = self.reader.shape
        if self.poses is not None:
            total = self.poses["total_frames"]
            if frame.index >= total + self.pose_slack:
                raise ValueError(f"the pose file has {total} frames, the video more "
                                 f"(frame {frame.index})")
            if frame.index < total:
                kp = self.poses["keypoint"][:, frame.index]
                score = self.poses["keypoint_score"][:, frame.index]
            else:
                kp = np.zeros((self.persons, 17, 2), np.float32)
                score = np.zeros((self.persons, 17), np.float32)
            found = bool(np.any(score > 0))
        else:
            start = time.perf_counter()
            joints = self.tracker(frame.image)
            self.pose_seconds += time.perf_counter() - start
            kp, score = to_pixels(joints, shape)
            kp, score = kp[None], score[None]
            found = joints is not None
        self.keypoints.append(kp)
        self.scores.append(score)
        self.detected.append(found)
        self.missing.append(False)
        if frame.native is not None:
            self.native[frame.index] = frame.native
        if frame.display is not None:
            self.display.append((frame.index, frame.display))
        k = self.plan.completed_by(frame.index)
        if k is not None:
            start = k * self.plan.stride
            window = self._window(k, start, self.plan.span, self.native)
            while self.display and self.plan.nearest(self.display[0][0]) <= k:
                window.display.append(self.display.popleft())
            self._submit(window)
            self.windows = k + 1
            horizon = (k + 1) * self.plan.stride  # later windows start here or after
            for index in [i for i in self.native if i < horizon]:
                del self.native[index]

    def _window(self, k: int, start: int, length: int,
                frames: dict[int, np.ndarray] | Callable[[np.ndarray], np.ndarray]) -> Window:
        rgb_frames = start + self.plan.rgb_offsets(length)
        window = Window(k, start, length, rgb_frames)
        stop = start + length
        if any(self.missing[start:stop]):
            window.status = "dropped"
            return window
        keypoint, keypoint_score = self._persons(start, stop)
        ann = parse_annotations([{
            "frame_dir": "window", "label": 0, "img_shape": self.reader.shape,
            "original_shape": self.reader.shape, "total_frames": length,
            "keypoint": keypoint, "keypoint_score": keypoint_score,
        }])[0]
        window.person_frames = float(np.mean(self.detected[start:stop]))
        window.box = box = person_box(ann, self.config)
        if (window.person_frames < self.min_person or box is None
                or too_small((box[3] - box[1], box[2] - box[0]))):
            window.status = "no_person"
            return window
        native = (np.stack([frames[int(i)] for i in rgb_frames]) if isinstance(frames, dict)
                  else frames(rgb_frames))
        window.rgb, window.heatmap, _, _ = person_inputs(native, ann, self.config, window.box)
        return window

    def finish(self, frames: int, complete: bool) -> None:
        """After the last frame: the window aligned to the end (a file read to its end),
        the display frames left, then wait for the model thread."""
        while len(self.keypoints) < frames:  # frames the reader dropped at the end
            self._missing_frame()
        tail = self.plan.tail(frames) if complete and self.source.path is not None else None
        last: Window | None = None
        if tail is not None:
            path = self.source.path
            last = self._window(self.windows, *tail,
                                lambda inds: decode_video_frames(path, inds, size=None))
            last.display.extend(self.display)
            self.display.clear()
            self._submit(last)
        self._submit(_END)
        self.worker.join()
        if self.failure is not None:
            raise RuntimeError(f"the model thread failed: {self.failure}") from self.failure
        if self.video is not None and self.display and self.timeline.windows:
            window = self.timeline.windows[-1]  # frames after the last window's centre
            for index, frame in self.display:
                self.video.write(annotate_frame(frame, index, self.source.fps, window,
                                                self.reader.shape, self.timeline.names))
            self.display.clear()


def _poses_for(path: str, source: str) -> dict[str, Any]:
    return select_pose_sample(load_annotations(path), source, path)


def recognize_stream(
    source: str,
    loaded: LoadedModel,
    out_dir: str | os.PathLike[str],
    *,
    window: float = 3.2,
    stride: float = 1.0,
    size: int = 224,
    top: int = 5,
    names: Sequence[str] | None = None,
    timeline_format: str = "jsonl",
    video_out: str | os.PathLike[str] | None = None,
    video_side: int = 640,
    poses: str | os.PathLike[str] | None = None,
    pose_python: str | None = None,
    pace: bool = False,
    stall_timeout: float = 10.0,
    min_person: float = 0.5,
    max_side: int = 640,
    backlog: int | None = None,
    clip_len: int = 48,
    rgb_stride: int = 3,
) -> StreamResult:
    """Recognise actions window by window over ``source``; see the module docstring.

    Raises RuntimeError after writing the outputs when the source stalls (no frame for
    ``stall_timeout`` seconds) or fails while decoding; KeyboardInterrupt likewise
    flushes them first. Returns the rows, the files and the timings."""
    require_heads(loaded)
    if timeline_format not in TIMELINE_FORMATS:
        raise ValueError(f"timeline format must be one of {TIMELINE_FORMATS}, got "
                         f"{timeline_format!r}")
    if size <= 0 or size % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {size}")
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be > 0 seconds, got {window} and {stride}")
    if not 0.0 <= min_person <= 1.0:
        raise ValueError(f"min_person must be a share of frames in [0, 1], got {min_person}")
    names = list(names) if names is not None else class_names(int(loaded.meta["num_classes"]))
    pose_ann = None if poses is None else _poses_for(os.fspath(poses), source)
    out_dir = Path(out_dir)
    src = Source(source, pace=pace, timeout=stall_timeout)
    files: list[Path] = []
    reader: FrameReader | None = None
    try:
        if pose_ann is not None and src.frames is not None:
            check_pose_frames(pose_ann, src.frames, source, poses)
        plan = WindowPlan(max(1, round(window * src.fps)), max(1, round(stride * src.fps)),
                          clip_len, rgb_stride)
        # rgb=False: the RGB frames come from the stream, not from a dataset's files
        config = ClipConfig(rgb=False, rgb_size=(size, size),
                            heatmap_size=(size // 4, size // 4), clip_len=clip_len,
                            rgb_stride=rgb_stride)
        tracker = None if pose_ann is not None else open_pose_tracker(pose_python)
        with contextlib.ExitStack() as stack:
            if tracker is not None:
                stack.callback(tracker.close)
            # made now; removed again if the run fails before writing into them
            stack.enter_context(output_dirs(out_dir, None if video_out is None
                                            else Path(video_out).parent))
            timeline = Timeline(out_dir / f"timeline.{timeline_format}", timeline_format,
                                names, top, src.fps)
            stack.callback(timeline.close)
            video = None if video_out is None else VideoWriter(Path(video_out), src.fps)
            if video is not None:
                stack.callback(video.close, False)  # nothing half-written on an error
            reader = FrameReader(src, plan, max_side, None if video is None else video_side,
                                 backlog or (max(8, plan.stride) if src.live else 16))
            rec = _Recognizer(loaded, plan, config, tracker, pose_ann, src, reader, timeline,
                              video, min_person)
            compile_s = rec.warm_up()
            print(f"source  {source}: {src.fps:.3f} frames/s, {'live' if src.live else 'file'}"
                  f"; windows of {plan.span} frames ({plan.span / src.fps:.2f} s) every "
                  f"{plan.stride} ({plan.stride / src.fps:.2f} s); model compiled in "
                  f"{compile_s:.1f} s", flush=True)
            stopped, problem, ended = "end", None, False
            frames = 0
            wall = time.perf_counter()
            rec.worker.start()
            reader.start()
            try:
                while True:
                    try:
                        item = reader.frames.get(timeout=stall_timeout)
                    except queue.Empty:
                        stopped = "stall"
                        problem = (f"no frame from {source} for {stall_timeout:g} s: the "
                                   "stream stalled")
                        break
                    if item is _END:
                        ended = True
                        break
                    if isinstance(item, Exception):
                        stopped, problem = "error", f"reading {source} failed: {item}"
                        break
                    rec.feed(item)
                    frames = item.index + 1
            except KeyboardInterrupt:
                stopped = "interrupt"
            finally:
                reader.stop.set()
                if ended:
                    frames = max(frames, reader.newest + 1)
                rec.finish(frames, complete=ended)
                wall = time.perf_counter() - wall
                files += _write_results(rec, timeline, out_dir, video, source, frames)
    finally:
        _release(src, reader)
    result = StreamResult(timeline.rows, files, frames, src.fps, wall, rec.pose_seconds,
                          rec.model_seconds, reader.dropped, stopped)
    _report(result)
    if stopped == "interrupt":
        raise KeyboardInterrupt
    if problem is not None:
        raise RuntimeError(f"{problem}; the {len(result.rows)} windows so far are in "
                           f"{out_dir}")
    return result


def _release(source: Source, reader: FrameReader | None) -> None:
    """Close the source, or leave that to a reader still blocked in a read."""
    if reader is not None and reader.is_alive():
        reader.stop.set()
        reader.join(timeout=1.0)
        if reader.is_alive():
            return  # it closes the source when its read returns
    source.close()


def _write_results(rec: _Recognizer, timeline: Timeline, out_dir: Path,
                   video: VideoWriter | None, source: str, frames: int) -> list[Path]:
    files = []
    if rec.keypoints:
        path = out_dir / "poses.pkl"
        with atomic_output(path) as tmp:
            save_annotations(tmp, [rec.annotation()])
        files.append(path)
    if timeline.rows:
        files.append(timeline.path)
        npz = out_dir / "windows.npz"
        arrays = timeline.arrays(len(timeline.names))
        with atomic_output(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        files.append(npz)
        title = (f"{Path(source).name}: {len(timeline.rows)} windows of "
                 f"{rec.plan.span / rec.source.fps:g} s, {frames} frames")
        files.append(timeline_picture(timeline.rows, arrays["scores"], timeline.names,
                                      out_dir / "timeline.png", title))
    if video is not None and video.close(keep=bool(timeline.rows)):
        files.append(video.path)
    return files


def _report(result: StreamResult) -> None:
    counts = {s: sum(r["status"] == s for r in result.rows) for s in STATUSES}
    print(f"windows {len(result.rows)} ({counts['ok']} ok, {counts['no_person']} no person, "
          f"{counts['dropped']} dropped); {result.frames} frames, "
          f"{result.dropped_frames} dropped by the reader")
    poses = (f"poses alone {result.real_time_factor(result.pose_seconds):.2f}x"
             if result.pose_seconds > 0 else "poses from the pose file")
    print(f"real-time factor {result.real_time_factor(result.wall_seconds):.2f}x "
          f"({result.video_seconds:.1f} s of video in {result.wall_seconds:.1f} s); {poses}, "
          f"model alone {result.real_time_factor(result.model_seconds):.2f}x")
    for path in result.files:
        print(f"wrote   {path}")


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m epam_jax.stream",
        description="EPAM-Net actions over a long video or a live source, window by window.",
    )
    parser.add_argument("source", help="video file, camera (/dev/videoN or N) or stream URL")
    parser.add_argument("--checkpoint", required=True,
                        help="EPAM-Net checkpoint: epam-jax directory or PyTorch .pth")
    parser.add_argument("--out-dir", help="output folder (default: stream_<source name>)")
    parser.add_argument("--window", type=float, default=3.2,
                        help="seconds each window covers (default 3.2: 48 pose frames "
                             "every 2nd frame at 30 frames/s)")
    parser.add_argument("--stride", type=float, default=1.0,
                        help="seconds between window starts (default 1.0)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--size", type=int, default=None,
                        help="RGB side; pose heatmaps are size/4 (default: the checkpoint's "
                             "clip geometry, 224 for checkpoints that record none)")
    parser.add_argument("--class-names", help="text file, one class name per line")
    parser.add_argument("--timeline-format", choices=TIMELINE_FORMATS, default="jsonl")
    parser.add_argument("--video-out", help="write the annotated MP4 here")
    parser.add_argument("--video-side", type=int, default=640,
                        help="longer side of the annotated video (default 640)")
    parser.add_argument("--poses", help="PoseC3D pose pickle of the video (skips MediaPipe)")
    parser.add_argument("--pose-python",
                        help="python of an environment with mediapipe (or EPAM_POSE_PYTHON)")
    parser.add_argument("--pace", choices=("fast", "realtime"), default="fast",
                        help="realtime: read a file at its frame rate, as a live source "
                             "(windows are dropped to keep up)")
    parser.add_argument("--min-person", type=float, default=0.5,
                        help="share of a window's frames that must show a person "
                             "(default 0.5); fewer: the window is labelled no_person")
    parser.add_argument("--clip-len", type=int, default=None,
                        help="pose frames sampled from each window (default: the "
                             "checkpoint's, the paper's 48 when it records none)")
    parser.add_argument("--rgb-stride", type=int, default=None,
                        help="RGB frames: every n-th pose frame (default: the checkpoint's, "
                             "the paper's 3 when it records none: 16 RGB frames)")
    parser.add_argument("--stall-timeout", type=float, default=10.0,
                        help="seconds without a frame before the source counts as stalled")
    return parser


def main(argv: Sequence[str] | None = None) -> StreamResult:
    args = build_parser().parse_args(argv)
    if args.top_k <= 0:
        raise SystemExit(f"error: --top-k must be > 0, got {args.top_k}")
    if args.stall_timeout <= 0:
        raise SystemExit(f"error: --stall-timeout must be > 0, got {args.stall_timeout}")
    if args.video_side < 16:
        raise SystemExit(f"error: --video-side must be at least 16, got {args.video_side}")
    if args.size is not None and (args.size <= 0 or args.size % 4):  # before the checkpoint
        raise SystemExit(f"error: --size must be a positive multiple of 4, got {args.size}")
    for flag in ("window", "stride", "clip_len", "rgb_stride"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be > 0, got "
                             f"{getattr(args, flag)}")
    if not 0.0 <= args.min_person <= 1.0:
        raise SystemExit(f"error: --min-person must be a share of frames in [0, 1], got "
                         f"{args.min_person}")
    out_dir = args.out_dir or f"stream_{Path(args.source).stem or 'camera'}"
    loaded = load_model(args.checkpoint)
    require_heads(loaded)
    # the checkpoint's clip geometry unless overridden (epam_jax.checkpoints.clip_fields)
    geometry = loaded.clip_fields(size=args.size, clip_len=args.clip_len,
                                  rgb_stride=args.rgb_stride)
    names = None
    if args.class_names is not None:
        names = class_names(int(loaded.meta["num_classes"]), read_names(args.class_names))
    try:
        return recognize_stream(
            args.source, loaded, out_dir, window=args.window, stride=args.stride,
            size=geometry["rgb_size"][0], top=args.top_k, names=names,
            timeline_format=args.timeline_format, video_out=args.video_out,
            video_side=args.video_side, poses=args.poses, pose_python=args.pose_python,
            pace=args.pace == "realtime", stall_timeout=args.stall_timeout,
            min_person=args.min_person, clip_len=geometry["clip_len"],
            rgb_stride=geometry["rgb_stride"])
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted; the windows so far are in {out_dir}") from None


if __name__ == "__main__":
    run_cli(main)
