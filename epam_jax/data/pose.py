"""Poses from a real video: MediaPipe BlazePose (33 landmarks) -> a PoseC3D annotation.

Needs the optional extra ``pose`` (``mediapipe==0.10.14``, whose wheel ships the pose
model); it is imported only when a video is processed. MediaPipe pins protobuf<5, which
grain cannot import with, so it often lives in another interpreter: ``--serve`` runs this
module as a frame-by-frame pose server over stdin/stdout for ``SubprocessPoseTracker``.

    python -m epam_jax.data.pose VIDEO OUT.pkl --label 0 [--allow-truncated]
    python -m epam_jax.data.pose --serve        (used by SubprocessPoseTracker)

A video short of the frames its header states, or with frames under ``MIN_SIDE``
pixels, is refused before MediaPipe starts (``epam_jax.data.video``); the command line
then prints ``error: ...`` and exits with ``EXIT_BAD_INPUT``, which
``epam_jax.realvideo`` turns back into a ValueError. ``--allow-truncated`` keeps the
poses of the frames that decode and prints a warning instead.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

from epam_jax.data.annotations import save_annotations
from epam_jax.data.video import check_min_side, iter_video_frames, open_video, probe_video

# BlazePose landmark for each COCO-17 joint (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles; left before right).
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
NUM_JOINTS = len(BLAZEPOSE_TO_COCO)
# Server protocol: a request is (height, width) as two little-endian uint32 and the RGB
# bytes of that image ((0, 0): stop); the answer is one byte (1: a person) and the 17
# COCO joints as (x, y, visibility) float32, x and y normalised to the image.
_REQUEST = struct.Struct("<II")
_ANSWER_BYTES = 1 + NUM_JOINTS * 3 * 4
_READY = b"R"
# Exit status of the command line for a video it refuses (sysexits' EX_DATAERR).
EXIT_BAD_INPUT = 65


def _mediapipe_pose() -> Any:
    try:
        from mediapipe.python.solutions import pose as mp_pose
    except ImportError as err:
        raise ImportError(
            "pose extraction needs mediapipe: pip install 'epam-jax[pose]' "
            "(mediapipe==0.10.14)"
        ) from err
    return mp_pose


def detection_image(frame: av.VideoFrame, max_side: int | None = 640) -> np.ndarray:
    """The RGB image BlazePose sees of a decoded frame: longer side at most ``max_side``
    (landmarks are normalised, so coordinates still come out in original pixels)."""
    h, w = frame.height, frame.width
    scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    return frame.to_ndarray(
        format="rgb24", width=max(2, round(w * scale)), height=max(2, round(h * scale))
    )


def to_pixels(joints: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(17, 3) normalised (x, y, visibility), or None for no person, to keypoints (17, 2)
    in pixels of a frame of ``shape`` = (h, w) and scores (17,); zeros without a person."""
    h, w = shape
    kp = np.zeros((NUM_JOINTS, 2), np.float32)
    score = np.zeros(NUM_JOINTS, np.float32)
    if joints is not None:
        for j, (x, y, visibility) in enumerate(joints.tolist()):
            kp[j] = (x * w, y * h)
            score[j] = visibility
    return kp, score


class PoseTracker:
    """BlazePose in this process, in tracking mode (``static_image_mode=False``): call it
    on consecutive frames of one video; each call gives (17, 3) normalised joints or None."""

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5):
        mp_pose = _mediapipe_pose()
        self._estimator = mp_pose.Pose(
            static_image_mode=False,
            model_complexity=model_complexity,
            min_detection_confidence=min_detection_confidence,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        result = self._estimator.process(image)
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        return np.array([(marks[b].x, marks[b].y, marks[b].visibility)
                         for b in BLAZEPOSE_TO_COCO], np.float32)

    def close(self) -> None:
        self._estimator.close()

    def __enter__(self) -> PoseTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def pose_interpreter_env(python: str) -> dict[str, str]:
    """The environment to run ``python -m epam_jax.data.pose`` in another interpreter
    (this project on its PYTHONPATH); FileNotFoundError when ``python`` cannot run."""
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        raise FileNotFoundError(f"pose interpreter {python} does not exist or cannot run")
    project = os.fspath(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH")) if p)
    return env


class SubprocessPoseTracker:
    """``PoseTracker`` run by another interpreter (one holding mediapipe), frame by frame
    through ``python -m epam_jax.data.pose --serve``; the same answers, the same order.
    A server that fails raises RuntimeError with the end of its stderr."""

    def __init__(self, python: str, model_complexity: int = 1,
                 min_detection_confidence: float = 0.5) -> None:
        env = pose_interpreter_env(python)
        self.python = python
        self._log = tempfile.TemporaryFile()
        cmd = [python, "-m", "epam_jax.data.pose", "--serve",
               "--model-complexity", str(model_complexity),
               "--min-detection-confidence", str(min_detection_confidence)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, env=env)
        if _read_exactly(self._proc.stdout, 1) != _READY:
            self._fail("did not start")

    def _fail(self, what: str) -> None:
        self._proc.kill()
        self._proc.wait()
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-3000:]
        raise RuntimeError(f"the pose server ({self.python}) {what} "
                           f"(exit {self._proc.returncode}):\n{tail}")

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (h, w, 3) uint8 RGB image, got shape {image.shape}")
        try:
            self._proc.stdin.write(_REQUEST.pack(*image.shape[:2]) + image.tobytes())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail("stopped")
        answer = _read_exactly(self._proc.stdout, _ANSWER_BYTES)
        if len(answer) != _ANSWER_BYTES:
            self._fail("stopped")
        if not answer[0]:
            return None
        return np.frombuffer(answer, np.float32, offset=1).reshape(NUM_JOINTS, 3).copy()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(_REQUEST.pack(0, 0))
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> SubprocessPoseTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(model_complexity: int = 1, min_detection_confidence: float = 0.5) -> None:
    """The server side of ``SubprocessPoseTracker``: answers requests on stdin/stdout.
    Everything else the process prints (MediaPipe's logs) goes to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    with PoseTracker(model_complexity, min_detection_confidence) as tracker:
        answers.write(_READY)
        answers.flush()
        while True:
            header = _read_exactly(requests, _REQUEST.size)
            if len(header) != _REQUEST.size:
                return
            h, w = _REQUEST.unpack(header)
            if h == 0 or w == 0:
                return
            pixels = _read_exactly(requests, h * w * 3)
            if len(pixels) != h * w * 3:
                return
            joints = tracker(np.frombuffer(pixels, np.uint8).reshape(h, w, 3))
            if joints is None:
                answers.write(bytes(_ANSWER_BYTES))
            else:
                answers.write(b"\x01" + joints.astype("<f4").tobytes())
            answers.flush()


def poses_annotation(keypoints: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                     shape: tuple[int, int], detected: int, label: int = 0,
                     frame_dir: str = "video") -> dict[str, Any]:
    """Per-frame keypoints (M, 17, 2) and scores (M, 17) of M persons as a PoseC3D
    sample (keypoint (M, T, 17, 2), keypoint_score (M, T, 17))."""
    return {
        "frame_dir": frame_dir,
        "label": int(label),
        "img_shape": tuple(shape),
        "original_shape": tuple(shape),
        "total_frames": len(keypoints),
        "keypoint": np.stack(keypoints, axis=1),
        "keypoint_score": np.clip(np.stack(scores, axis=1), 0.0, 1.0),
        "num_detected": int(detected),
    }


def video_to_annotation(
    path: str | os.PathLike[str],
    label: int = 0,
    frame_dir: str | None = None,
    max_side: int | None = 640,
    model_complexity: int = 1,
    min_detection_confidence: float = 0.5,
    allow_truncated: bool = False,
) -> dict[str, Any]:
    """Run BlazePose on every frame of a video and return a PoseC3D sample dict.

    One person (M = 1): keypoint (1, T, 17, 2) in pixels of the original frame, scores
    from landmark visibility; frames without a detection get zeros. Frames are scaled so
    their longer side is at most ``max_side`` before detection (``detection_image``).
    The dict also records ``num_detected``. A video short of the frames its header
    states or with frames under ``MIN_SIDE`` pixels raises ValueError before MediaPipe
    starts, a damaged frame when it is reached; ``allow_truncated`` warns instead and
    keeps the frames that decode.
    """
    name = os.fspath(path)
    probe = probe_video(name, report=_ignore if allow_truncated else None)
    check_min_side(probe.shape, f"each frame of {name!r}")
    keypoints, scores = [], []
    detected = 0
    shape = probe.shape
    with open_video(name) as container, \
            PoseTracker(model_complexity, min_detection_confidence) as tracker:
        frames = iter_video_frames(container, name,
                                   report=_warn_truncated if allow_truncated else None)
        for frame in frames:
            shape = (frame.height, frame.width)
            joints = tracker(detection_image(frame, max_side))
            kp, score = to_pixels(joints, shape)
            detected += joints is not None
            keypoints.append(kp[None])
            scores.append(score[None])
    return poses_annotation(keypoints, scores, shape, detected, label,
                            frame_dir or Path(path).stem)


def _ignore(message: str) -> None:
    """A shortfall seen by the probe: ``_warn_truncated`` reports it after decoding."""


def _warn_truncated(message: str) -> None:
    print(f"warning: {message}; keeping the poses of the frames that decode",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Video -> PoseC3D annotation (MediaPipe).")
    parser.add_argument("video", nargs="?")
    parser.add_argument("out", nargs="?", help="annotation pickle to write")
    parser.add_argument("--label", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--model-complexity", type=int, default=1, choices=(0, 1, 2))
    parser.add_argument("--min-detection-confidence", type=float, default=0.5)
    parser.add_argument("--allow-truncated", action="store_true",
                        help="a video short of the frames its header states: warn and keep "
                             "the poses of the frames that decode (default: refuse it)")
    parser.add_argument("--serve", action="store_true",
                        help="answer frame-by-frame requests on stdin/stdout")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.model_complexity, args.min_detection_confidence)
        return
    if args.video is None or args.out is None:
        parser.error("expected VIDEO and OUT (or --serve)")
    ann = video_to_annotation(args.video, label=args.label, max_side=args.max_side,
                              model_complexity=args.model_complexity,
                              min_detection_confidence=args.min_detection_confidence,
                              allow_truncated=args.allow_truncated)
    save_annotations(args.out, [ann])
    print(f"{args.video}: {ann['num_detected']}/{ann['total_frames']} frames with a person")


def _cli(argv: list[str] | None = None) -> None:
    """``main`` with one ``error: ...`` line instead of a traceback: exit status
    ``EXIT_BAD_INPUT`` for a refused video (ValueError), 1 for other failures."""
    try:
        main(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except (OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    _cli()
