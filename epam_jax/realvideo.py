"""One real video to EPAM-Net inputs: checks, MediaPipe poses, the person crop.

The paper's videos were cropped around the persons and resized to 224x224 before
training, while the pose heatmaps are drawn in a box around the keypoints; the attention
map computed from the pose stream multiplies the RGB features cell by cell, so both must
show the same region. A raw video (e.g. a 1920x1080 NTU clip) is therefore cropped here
with the pipeline's own box rule (``compact_box``: all keypoints of the clip,
padding 0.25, square, clipped to the frame) before the usual eval pipeline runs.
``crop=False`` feeds the whole frame, as ``epam_jax.data.make_sample`` does for
pre-cropped datasets.

Refused before the slow work, naming the file: a video that cannot be read, holds fewer
frames than its header states, or has frames under ``MIN_SIDE`` pixels
(``check_video``); a pose file that holds no sample of this video, or one of another
length (``single_video_annotation``); a person box under ``MIN_SIDE`` pixels
(``video_clip``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epam_jax.data import (
    ClipConfig,
    compact_box,
    decode_video_frames,
    load_annotations,
    make_sample,
    nan_to_zero,
    normalize_rgb,
    parse_annotations,
    resize_frame,
    rgb_indices,
    shift_keypoints,
    uniform_sample_indices,
)
from epam_jax.data.video import VideoProbe, check_min_side, probe_video, truncation_tolerance

POSE_INSTALL_HINT = (
    "pose extraction needs MediaPipe, which is not importable here. It pins protobuf<5 "
    "(grain needs >=5), so install it in its own environment:\n"
    "  python -m venv --system-site-packages .venv-pose && "
    ".venv-pose/bin/pip install 'mediapipe==0.10.14'   (or: make pose-env)\n"
    "then pass --pose-python .venv-pose/bin/python (or set EPAM_POSE_PYTHON), or give "
    "poses you already have with --poses ANN.pkl"
)


def inspect_video(path: str | os.PathLike[str]) -> tuple[Path, VideoProbe]:
    """``check_video``'s checks, and what they found (frame count, frame size, rate)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    probe = probe_video(path)
    check_min_side(probe.shape, f"each frame of {path}")
    return path, probe


def check_video(path: str | os.PathLike[str]) -> Path:
    """Fail early, naming the path, when a video is missing, cannot be opened or decoded,
    holds fewer frames than its header states (one demux pass, no decoding: see
    ``epam_jax.data.video.probe_video``) or has frames under ``MIN_SIDE`` pixels."""
    return inspect_video(path)[0]


def _mediapipe_in_process() -> bool:
    if importlib.util.find_spec("mediapipe") is None:
        return False
    try:
        from mediapipe.python.solutions import pose  # noqa: F401
    except Exception:  # e.g. a protobuf version clash: use the other interpreter
        return False
    return True


def open_pose_tracker(pose_python: str | None = None) -> Any:
    """A frame-by-frame pose tracker (``epam_jax.data.pose``), chosen as ``video_poses``
    chooses: the interpreter ``pose_python`` (or ``$EPAM_POSE_PYTHON``) when one is
    named, else this process when mediapipe imports, else RuntimeError saying how to
    install it."""
    from epam_jax.data.pose import PoseTracker, SubprocessPoseTracker

    pose_python = pose_python or os.environ.get("EPAM_POSE_PYTHON") or None
    if pose_python is not None:
        return SubprocessPoseTracker(pose_python)
    if _mediapipe_in_process():
        return PoseTracker()
    raise RuntimeError(POSE_INSTALL_HINT)


def _poses_in_subprocess(video: Path, python: str, label: int) -> dict[str, Any]:
    """MediaPipe's poses by ``python -m epam_jax.data.pose`` in the interpreter
    ``python``: a video it refuses raises its one-line ValueError here, any other
    failure RuntimeError with the end of its stderr."""
    from epam_jax.data.pose import EXIT_BAD_INPUT, pose_interpreter_env

    env = pose_interpreter_env(python)
    with tempfile.TemporaryDirectory(prefix="epam_pose_") as tmp:
        out = Path(tmp) / "poses.pkl"
        cmd = [python, "-m", "epam_jax.data.pose", os.fspath(video), os.fspath(out)]
        done = subprocess.run(
            cmd + ["--label", str(label)], capture_output=True, text=True, env=env
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        if done.returncode == EXIT_BAD_INPUT and errors:
            raise ValueError(errors[-1].removeprefix("error: "))
        if done.returncode != 0:
            raise RuntimeError(
                f"pose extraction with {python} failed (exit {done.returncode}):\n"
                f"{done.stderr[-3000:]}"
            )
        (ann,) = load_annotations(out)
    return ann


def video_poses(
    video: str | os.PathLike[str], pose_python: str | None = None, label: int = 0
) -> dict[str, Any]:
    """MediaPipe poses of a video as a validated PoseC3D annotation.

    Runs ``python -m epam_jax.data.pose`` in the interpreter ``pose_python`` (or
    ``$EPAM_POSE_PYTHON``) when one is named, else in this process when mediapipe
    imports, else raises saying how to install it. Raises when no person is found.
    """
    video = check_video(video)
    pose_python = pose_python or os.environ.get("EPAM_POSE_PYTHON") or None
    if pose_python is not None:
        ann = _poses_in_subprocess(video, pose_python, label)
    elif _mediapipe_in_process():
        from epam_jax.data.pose import video_to_annotation

        ann = parse_annotations([video_to_annotation(video, label=label)])[0]
    else:
        raise RuntimeError(POSE_INSTALL_HINT)
    if int(ann.get("num_detected", 1)) == 0 or not np.any(ann["keypoint_score"] > 0):
        raise ValueError(
            f"no person found in {video}: MediaPipe detected no pose in any of its "
            f"{ann['total_frames']} frames"
        )
    return ann


def _some_names(anns: Sequence[dict[str, Any]], shown: int = 3) -> str:
    names = ", ".join(repr(a["frame_dir"]) for a in anns[:shown])
    return names + (f" and {len(anns) - shown} more" if len(anns) > shown else "")


def select_pose_sample(anns: Sequence[dict[str, Any]], video: str | os.PathLike[str],
                       poses: str | os.PathLike[str]) -> dict[str, Any]:
    """The sample of the pose file ``poses`` that belongs to ``video``: its only one,
    else the one whose 'frame_dir' is the video's stem or whose 'filename' is its name.
    None or several of those: ValueError naming a few of the samples."""
    video = Path(video)
    if not anns:
        raise ValueError(f"the pose file {poses} holds no annotation")
    if len(anns) == 1:
        return anns[0]
    matches = [a for a in anns if a["frame_dir"] == video.stem
               or Path(str(a.get("filename", ""))).name == video.name]
    if len(matches) == 1:
        return matches[0]
    named = f"frame_dir {video.stem!r} or filename {video.name!r}"
    if not matches:
        raise ValueError(f"the pose file {poses} holds {len(anns)} samples and none is this "
                         f"video's ({named}); it holds {_some_names(anns)}")
    raise ValueError(f"the pose file {poses} holds {len(matches)} samples of this video "
                     f"({named}): {_some_names(matches)}; expected one")


def check_pose_frames(ann: dict[str, Any], frames: int, video: str | os.PathLike[str],
                      poses: str | os.PathLike[str]) -> None:
    """Refuse poses whose frame count differs from the video's ``frames`` by more than
    ``truncation_tolerance``: they are another clip's, or the video is cut."""
    have, tolerance = int(ann["total_frames"]), truncation_tolerance(frames)
    if abs(have - frames) > tolerance:
        raise ValueError(f"the pose file {poses} sample {ann['frame_dir']!r} has {have} "
                         f"frames, the video {video} has {frames}; they must agree within "
                         f"{tolerance} frames")


def single_video_annotation(
    video: str | os.PathLike[str],
    poses: str | os.PathLike[str] | None = None,
    pose_python: str | None = None,
    label: int = 0,
) -> dict[str, Any]:
    """The annotation of one video: its sample of a pose pickle (``select_pose_sample``,
    as long as the video: ``check_pose_frames``), or MediaPipe's.

    'filename' is set to the video's name and 'frame_dir' to its stem, so
    ``ClipConfig(video_root=video.parent)`` finds it.
    """
    video, probe = inspect_video(video)
    if poses is not None:
        ann = select_pose_sample(load_annotations(poses), video, poses)
        check_pose_frames(ann, probe.frames, video, poses)
        if not np.any(ann["keypoint_score"] > 0) or not np.any(nan_to_zero(ann["keypoint"])):
            raise ValueError(f"no person found in {video}: the pose file {poses} has none")
    else:
        ann = video_poses(video, pose_python, label)
    ann = dict(ann, filename=video.name, frame_dir=video.stem)
    return parse_annotations([ann])[0]


def person_box(ann: dict[str, Any], config: ClipConfig) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) around all persons of the whole clip, by the pipeline's own rule
    (``compact_box`` with the config's padding, ratio and threshold, clipped to the
    frame); None when the keypoints span too little to crop."""
    return compact_box(
        ann["keypoint"],
        ann["img_shape"],
        padding=config.compact_padding,
        threshold=config.compact_threshold,
        hw_ratio=config.compact_hw_ratio,
        clip_to_image=True,
    )


def checked_person_box(video: str | os.PathLike[str], ann: dict[str, Any],
                       config: ClipConfig) -> tuple[int, int, int, int]:
    """``person_box``, refused (ValueError) when there is none, the keypoints spanning
    under ``config.compact_threshold`` pixels, or when it is under ``MIN_SIDE``."""
    hint = "; the person is too small to recognise (--crop none feeds whole frames)"
    box = person_box(ann, config)
    if box is None:
        kp = nan_to_zero(ann["keypoint"])
        xs, ys = kp[..., 0][kp[..., 0] != 0], kp[..., 1][kp[..., 1] != 0]
        if xs.size == 0 or ys.size == 0:
            raise ValueError(f"no person found in {video}: its poses have no keypoints")
        raise ValueError(f"the person in {video} spans {np.ptp(xs):.0f}x{np.ptp(ys):.0f} "
                         f"pixels, under the {config.compact_threshold:g} pixels a person "
                         f"box needs across and down{hint}")
    x0, y0, x1, y1 = box
    where = f"the person box of {video} (x {x0}..{x1}, y {y0}..{y1})"
    check_min_side((y1 - y0, x1 - x0), where, hint)
    return box


def crop_annotation(ann: dict[str, Any], box: tuple[int, int, int, int]) -> dict[str, Any]:
    """``ann`` seen through the crop ``box``: keypoints shifted, img_shape the box's."""
    x0, y0, x1, y1 = box
    shape = (y1 - y0, x1 - x0)
    return dict(ann, keypoint=shift_keypoints(ann["keypoint"], box), img_shape=shape,
                original_shape=shape)


@dataclasses.dataclass
class VideoClip:
    """Model inputs of one video plus what the pictures need."""

    rgb: np.ndarray  # (16, S, S, 3) float32, normalised
    heatmap: np.ndarray  # (48, S/4, S/4, C) float32
    frames: np.ndarray  # (16, h, w, 3) uint8: the region the model saw, undistorted
    frame_indices: np.ndarray  # (16,) video frame numbers of the RGB frames
    box: tuple[int, int, int, int] | None  # person crop in video pixels, None: whole frame
    annotation: dict[str, Any]


def person_inputs(
    native: np.ndarray, ann: dict[str, Any], config: ClipConfig,
    box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Eval-mode model inputs from the native RGB frames at the clip's RGB indices and
    the clip's annotation, seen through the person ``box``: (rgb, heatmap, the cropped
    native frames, the cropped annotation). ``video_clip`` and ``epam_jax.stream``'s
    windows both go through here."""
    x0, y0, x1, y1 = box
    native = native[:, y0:y1, x0:x1]
    pose_ann = crop_annotation(ann, box)
    sample = make_sample(pose_ann, dataclasses.replace(config, rgb=False), train=False)
    size = (config.rgb_size[1], config.rgb_size[0])
    rgb = normalize_rgb(np.stack([resize_frame(f, size) for f in native]))
    return rgb, sample["heatmap"], native, pose_ann


def display_frames(native: np.ndarray, display_side: int = 224) -> np.ndarray:
    """Frames resized with their aspect ratio kept, longer side ``display_side``."""
    height, width = native.shape[1:3]
    scale = display_side / max(height, width)
    display = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([resize_frame(f, display) for f in native])


def video_clip(
    video: str | os.PathLike[str],
    ann: dict[str, Any],
    config: ClipConfig,
    crop: bool = True,
    display_side: int = 224,
) -> VideoClip:
    """Eval-mode model inputs for one video and its annotation.

    ``crop``: cut the person box out of every frame first (for raw videos; see the
    module docstring); otherwise ``make_sample`` as for a dataset. ``frames`` shows the
    same region with its aspect ratio kept, longer side ``display_side``. A person too
    small to crop, or a box under ``MIN_SIDE`` pixels, raises ValueError.
    """
    video = check_video(video)
    box = checked_person_box(video, ann, config) if crop else None
    inds = uniform_sample_indices(ann["total_frames"], config.clip_len, test_mode=True)
    rgb_inds = rgb_indices(inds, config.rgb_stride)
    native = decode_video_frames(video, rgb_inds, size=None, clamp=config.clamp_frames)
    if box is not None:
        rgb, heatmap, native, pose_ann = person_inputs(native, ann, config, box)
    else:
        pose_ann = ann
        root = dataclasses.replace(config, video_root=os.fspath(video.parent))
        sample = make_sample(dict(ann, filename=video.name), root, train=False)
        rgb, heatmap = sample["rgb"], sample["heatmap"]
    frames = display_frames(native, display_side)
    return VideoClip(rgb, heatmap, frames, rgb_inds, box, pose_ann)
