"""epam_jax.realvideo: from a real video to a clip. Poses for every frame at any frame
rate, the pose sample that belongs to the video, and the person crop."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import (
    encode_video,
    moving,
    need_pose,
    plain_frames,
    pose_python,
    rgb24,
    run_pose_cli,
    small_person,
    synthetic_person,
)

from epam_jax.data import (
    ClipConfig,
    decode_video_frames,
    load_annotations,
    rgb_indices,
    save_annotations,
    uniform_sample_indices,
)
from epam_jax.data.synthetic import make_long_video, make_synthetic_dataset
from epam_jax.data.video import MIN_SIDE, iter_video_frames, probe_video
from epam_jax.realvideo import (
    check_video,
    person_box,
    person_inputs,
    single_video_annotation,
    video_clip,
)
from epam_jax.stream import Source, _poses_for


def test_mediapipe_finds_no_person_in_an_empty_video(tmp_path: Path) -> None:
    import av

    from epam_jax.realvideo import video_poses

    python = pose_python()
    if python is None:
        pytest.skip("mediapipe is not installed (pip install '.[pose]' or set EPAM_POSE_PYTHON)")
    path = tmp_path / "empty_room.mp4"
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(8):
            img = np.full((120, 160, 3), 90 + 5 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(ValueError, match="no person found in .*empty_room.mp4.*8 frames"):
        video_poses(path, python)


def test_crop_config_is_the_pipelines_rule(ntu_poses) -> None:
    """The person box is the compact-keypoint box of the whole clip, so the pose crop
    inside it spans (nearly) the same region: RGB and attention cells line up."""
    from epam_jax.data import compact_keypoints
    from epam_jax.realvideo import crop_annotation, person_box

    _, ann = ntu_poses
    config = ClipConfig(rgb=False)
    box = person_box(ann, config)
    assert box is not None
    inner = crop_annotation(ann, box)
    _, shape = compact_keypoints(inner["keypoint"], inner["img_shape"])
    assert abs(shape[0] - inner["img_shape"][0]) <= 2
    assert abs(shape[1] - inner["img_shape"][1]) <= 2


SHAPE = (96, 128)


# rgb=False: video_clip decodes the crop itself (predict sets video_root instead)
CONFIG = ClipConfig(rgb=False, rgb_size=(32, 32), heatmap_size=(8, 8))


def test_the_projects_own_demo_videos_pass(tmp_path: Path) -> None:
    """``make demo``'s 64x64 videos and the stream demo's 128x128 long video, with person
    boxes of their own poses at least MIN_SIDE."""
    data = make_synthetic_dataset(tmp_path / "demo", num_classes=2, num_train=2, num_val=0,
                                  frames=(24, 24), size=(64, 64))
    for ann in load_annotations(data):
        video = check_video(tmp_path / "demo" / "videos" / f"{ann['frame_dir']}.mp4")
        clip = video_clip(video, ann, CONFIG)
        assert min(clip.box[2] - clip.box[0], clip.box[3] - clip.box[1]) >= MIN_SIDE
    video, poses = make_long_video(tmp_path / "long", ["wave", "none", "squat"], 24)
    source = Source(os.fspath(video))
    source.close()
    (ann,) = load_annotations(poses)
    for start in (0, 48):  # the person's segments
        window = dict(ann, keypoint=ann["keypoint"][:, start:start + 24], total_frames=24)
        x0, y0, x1, y1 = person_box(window, CONFIG)
        assert min(x1 - x0, y1 - y0) >= MIN_SIDE


def test_person_too_small_to_crop_is_refused(tmp_path: Path) -> None:
    video = encode_video(tmp_path / "far.mp4", moving(30, (120, 160)))
    ann = small_person(30, (120, 160), (0.35, 0.22))
    x0, y0, x1, y1 = person_box(ann, CONFIG)
    assert min(x1 - x0, y1 - y0) < MIN_SIDE
    with pytest.raises(ValueError, match=rf"the person box of .*far.mp4 \(x {x0}..{x1}, y "
                                         rf"{y0}..{y1}\) is {x1 - x0}x{y1 - y0} pixels; .*at "
                                         rf"least {MIN_SIDE} .*--crop none"):
        video_clip(video, ann, CONFIG)
    dot = small_person(30, (120, 160), (0.05, 0.05))
    with pytest.raises(ValueError, match=r"the person in .*far.mp4 spans \d+x\d+ pixels, "
                                         r"under the 10 pixels"):
        video_clip(video, dot, CONFIG)
    whole = dataclasses.replace(CONFIG, rgb=True, video_root=os.fspath(tmp_path))
    assert video_clip(video, ann, whole, crop=False).box is None  # whole frame: allowed


def person(frame_dir: str, total: int, **extra) -> dict:
    ann = synthetic_person(total, SHAPE, frame_dir)
    ann["keypoint"] = ann["keypoint"] + len(frame_dir)  # tell the samples apart
    return dict(ann, **extra)


def test_pose_file_sample_is_the_one_named_after_the_video(small_videos, tmp_path: Path) -> None:
    video = small_videos["mp4_vfr"]  # vfr.mp4, 40 frames
    poses = tmp_path / "many.pkl"
    samples = [person("other_a", 50), person("vfr", 40), person("other_b", 41)]
    save_annotations(poses, samples)
    ann = single_video_annotation(video, poses)
    np.testing.assert_array_equal(ann["keypoint"], samples[1]["keypoint"])
    assert (ann["frame_dir"], ann["filename"], ann["total_frames"]) == ("vfr", "vfr.mp4", 40)
    by_file = [person("x_1", 40, filename="x_1.mp4"),
               person("x_22", 40, filename="videos/vfr.mp4")]
    save_annotations(poses, by_file)
    np.testing.assert_array_equal(single_video_annotation(video, poses)["keypoint"],
                                  by_file[1]["keypoint"])
    np.testing.assert_array_equal(_poses_for(os.fspath(poses), os.fspath(video))["keypoint"],
                                  by_file[1]["keypoint"])


def test_pose_file_with_no_or_several_samples_of_the_video_is_refused(
        small_videos, tmp_path: Path) -> None:
    video = small_videos["mp4_vfr"]
    poses = tmp_path / "many.pkl"
    save_annotations(poses, [person(f"clip_{i}", 40) for i in range(5)])
    message = (r"many.pkl holds 5 samples and none is this video's \(frame_dir 'vfr' or "
               r"filename 'vfr.mp4'\); it holds 'clip_0', 'clip_1', 'clip_2' and 2 more$")
    with pytest.raises(ValueError, match=message):
        single_video_annotation(video, poses)
    with pytest.raises(ValueError, match=message):
        _poses_for(os.fspath(poses), os.fspath(video))  # the stream's --poses
    save_annotations(poses, [person("vfr", 40), person("a", 40), person("b", 40,
                                                                      filename="vfr.mp4")])
    with pytest.raises(ValueError, match=r"holds 2 samples of this video .*: 'vfr', 'b'; "
                                         r"expected one$"):
        single_video_annotation(video, poses)
    save_annotations(poses, [])
    with pytest.raises(ValueError, match="many.pkl holds no annotation"):
        single_video_annotation(video, poses)


def test_pose_sample_of_another_length_is_refused(small_videos, tmp_path: Path) -> None:
    """A single sample is taken whatever its name, but only about as long as the video
    (within truncation_tolerance: 2 frames of 40)."""
    video = small_videos["mp4_vfr"]
    poses = tmp_path / "one.pkl"
    for total, ok in ((40, True), (42, True), (38, True), (43, False), (103, False)):
        save_annotations(poses, [person("another_clip", total)])
        if ok:
            assert single_video_annotation(video, poses)["total_frames"] == total
            continue
        with pytest.raises(ValueError, match=rf"one.pkl sample 'another_clip' has {total} "
                                             r"frames, the video .*vfr.mp4 has 40; they must "
                                             r"agree within 2 frames$"):
            single_video_annotation(video, poses)
    missing = person("vfr", 40)
    missing["keypoint"] = np.full_like(missing["keypoint"], np.nan)  # every joint missing
    save_annotations(poses, [missing])
    with pytest.raises(ValueError, match="no person found in .*vfr.mp4: the pose file"):
        single_video_annotation(video, poses)


@pytest.mark.parametrize("name", ["mp4_60fps", "mp4_15fps", "mp4_vfr", "mkv_vfr", "ts_vfr"])
def test_other_and_variable_frame_rates_equal_a_plain_decode(small_videos, name: str) -> None:
    """The predict path's decoding (probe, whole-video frames for the poses, the clip's
    sampled frames, clamp past the end) sees exactly a plain decode loop's frames, and
    the clip is made of them."""
    video = small_videos[name]
    plain = plain_frames(video)
    n = len(plain)
    assert n == 40 and probe_video(video).frames == n
    with av.open(os.fspath(video)) as container:
        whole = [rgb24(f) for f in iter_video_frames(container, os.fspath(video))]
    assert len(whole) == n
    for k in range(n):
        np.testing.assert_array_equal(whole[k], plain[k])
    ann = synthetic_person(n, SHAPE, video.stem)
    clip = video_clip(video, ann, CONFIG)
    inds = rgb_indices(uniform_sample_indices(n, 48, test_mode=True), 3)
    np.testing.assert_array_equal(clip.frame_indices, inds)
    native = np.stack([plain[i] for i in inds])
    want, _, _, _ = person_inputs(native, ann, CONFIG, person_box(ann, CONFIG))
    np.testing.assert_array_equal(clip.rgb, want)
    # a pose file a frame longer than the video: clamped to its last frame, not "truncated"
    last = decode_video_frames(video, [0, n], size=None, clamp=True)
    np.testing.assert_array_equal(last[1], plain[-1])


def test_variable_rate_video_poses_cover_every_frame(small_videos, tmp_path: Path) -> None:
    python = need_pose()
    out = tmp_path / "poses.pkl"
    done = run_pose_cli(python, os.fspath(small_videos["mkv_vfr"]), os.fspath(out))
    assert done.returncode == 0, done.stderr[-2000:]
    (ann,) = load_annotations(out)
    assert ann["total_frames"] == 40 and ann["img_shape"] == SHAPE
