"""Poses from a real video: MediaPipe BlazePose (33 landmarks) -> a PoseC3D annotation.

Needs the optional extra ``pose`` (``mediapipe==0.10.14``, whose wheel ships the pose
model); it is imported only when a video is processed.

    python -m epam_jax.data.pose VIDEO OUT.pkl --label 0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import av
import numpy as np

from epam_jax.data.annotations import save_annotations

# BlazePose landmark for each COCO-17 joint (nose, eyes, ears, shoulders, elbows, wrists,
# hips, knees, ankles; left before right).
BLAZEPOSE_TO_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)


def _mediapipe_pose() -> Any:
    try:
        from mediapipe.python.solutions import pose as mp_pose
    except ImportError as err:
        raise ImportError(
            "pose extraction needs mediapipe: pip install 'epam-jax[pose]' "
            "(mediapipe==0.10.14)"
        ) from err
    return mp_pose


def video_to_annotation(
    path: str | os.PathLike[str],
    label: int = 0,
    frame_dir: str | None = None,
    max_side: int | None = 640,
    model_complexity: int = 1,
    min_detection_confidence: float = 0.5,
) -> dict[str, Any]:
    """Run BlazePose on every frame of a video and return a PoseC3D sample dict.

    One person (M = 1): keypoint (1, T, 17, 2) in pixels of the original frame, scores
    from landmark visibility; frames without a detection get zeros. Frames are scaled so
    their longer side is at most ``max_side`` before detection (landmarks are normalised,
    so coordinates stay in original pixels). The dict also records ``num_detected``.
    """
    mp_pose = _mediapipe_pose()
    frames_kp, frames_score = [], []
    detected = 0
    shape = None
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        with mp_pose.Pose(
            static_image_mode=False,
            model_complexity=model_complexity,
            min_detection_confidence=min_detection_confidence,
        ) as estimator:
            for frame in container.decode(stream):
                h, w = frame.height, frame.width
                shape = (h, w)
                scale = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
                rgb = frame.to_ndarray(
                    format="rgb24",
                    width=max(2, round(w * scale)),
                    height=max(2, round(h * scale)),
                )
                result = estimator.process(rgb)
                kp = np.zeros((17, 2), np.float32)
                score = np.zeros(17, np.float32)
                if result.pose_landmarks is not None:
                    marks = result.pose_landmarks.landmark
                    for j, b in enumerate(BLAZEPOSE_TO_COCO):
                        kp[j] = (marks[b].x * w, marks[b].y * h)
                        score[j] = marks[b].visibility
                    detected += 1
                frames_kp.append(kp)
                frames_score.append(score)
    if shape is None:
        raise ValueError(f"{os.fspath(path)!r} has no decodable video frames")
    return {
        "frame_dir": frame_dir or Path(path).stem,
        "label": int(label),
        "img_shape": shape,
        "original_shape": shape,
        "total_frames": len(frames_kp),
        "keypoint": np.stack(frames_kp)[None],
        "keypoint_score": np.clip(np.stack(frames_score), 0.0, 1.0)[None],
        "num_detected": detected,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Video -> PoseC3D annotation (MediaPipe).")
    parser.add_argument("video")
    parser.add_argument("out", help="annotation pickle to write")
    parser.add_argument("--label", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=640)
    args = parser.parse_args(argv)
    ann = video_to_annotation(args.video, label=args.label, max_side=args.max_side)
    save_annotations(args.out, [ann])
    print(f"{args.video}: {ann['num_detected']}/{ann['total_frames']} frames with a person")


if __name__ == "__main__":
    main()
