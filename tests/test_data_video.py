"""RGB decoding of sampled frames: equal to a plain decode from frame 0 for every kind of
video (seeks, dropped non-reference frames, untrusted timestamps), bad files, folders."""

from __future__ import annotations

import os
import re
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import encode_video, moving, plain_frames, rgb24
from PIL import Image

from epam_jax import prepare
from epam_jax.data import (
    decode_video_frames,
    load_frames,
    read_frame_folder,
    rgb_indices,
    uniform_sample_indices,
    video_frame_count,
)
from epam_jax.data import video as video_module
from epam_jax.data.pose import video_to_annotation
from epam_jax.data.synthetic import make_synthetic_dataset
from epam_jax.data.video import iter_video_frames, probe_video
from epam_jax.stream import Source

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NTU = SHARED / "ntu_S001C001P001R001A001_rgb.avi"
DEMO = SHARED / "person_demo_1080p.mp4"
SMALL = (32, 32)


def ntu_clip() -> Path:
    if not NTU.is_file():
        pytest.skip(f"real NTU clip not found at {NTU} (needs ../shared/data beside the project)")
    return NTU


def all_frames(path: Path, size: tuple[int, int]) -> list[np.ndarray]:
    """Every frame converted the same way, by a plain decode loop."""
    with av.open(str(path)) as container:
        return [
            f.reformat(width=size[1], height=size[0], format="rgb24", interpolation="AREA")
            .to_ndarray()
            for f in container.decode(video=0)
        ]


def test_ntu_clip_sampled_frames_equal_full_decode() -> None:
    path = ntu_clip()
    assert video_frame_count(path) == 103
    inds = rgb_indices(uniform_sample_indices(103, 48, test_mode=True))
    start = time.perf_counter()
    frames = decode_video_frames(path, inds)
    elapsed = time.perf_counter() - start
    assert frames.shape == (16, 224, 224, 3) and frames.dtype == np.uint8
    reference = all_frames(path, (112, 112))
    small = decode_video_frames(path, inds[::-1], size=(112, 112))  # any order
    for k, i in enumerate(inds[::-1]):
        np.testing.assert_array_equal(small[k], reference[i])
    assert frames.std() > 10  # real content, not a blank frame
    print(f"decoded 16 of 103 1080p frames in {elapsed:.3f}s")


def test_repeats_native_size_and_bounds() -> None:
    path = ntu_clip()
    out = decode_video_frames(path, [5, 5, 0], size=None)
    assert out.shape == (3, 1080, 1920, 3)
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(ValueError, match="has 103 frames; frame index 103 requested"):
        decode_video_frames(path, [0, 103], size=(32, 32))
    clamped = decode_video_frames(path, [102, 150], size=(32, 32), clamp=True)
    np.testing.assert_array_equal(clamped[0], clamped[1])


def test_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="integer frame indices"):
        decode_video_frames(tmp_path / "x.mp4", [])
    with pytest.raises(ValueError, match=">= 0"):
        decode_video_frames(tmp_path / "x.mp4", [-1])
    with pytest.raises(ValueError, match="no video file or frame folder"):
        load_frames(tmp_path / "missing.mp4", [0])
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open video"):
        decode_video_frames(tmp_path / "junk.mp4", [0])
    with pytest.raises(ValueError, match="size"):
        decode_video_frames(tmp_path / "junk.mp4", [0], size=(0, 4))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frame_folder(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    images = [np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
              for _ in range(5)]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"img_{i + 1:05d}.{ext}")
    (tmp_path / "notes.txt").write_text("ignored")
    out = read_frame_folder(tmp_path, [4, 0, 4], size=None)
    assert out.shape == (3, 48, 64, 3)
    for got, want in ((out[0], images[4]), (out[1], images[0])):
        err = np.abs(got.astype(np.int16) - want)
        assert (err.max() == 0) if ext == "png" else (err.mean() < 12)  # jpg is lossy
    resized = load_frames(tmp_path, [1, 2], size=(24, 32))
    assert resized.shape == (2, 24, 32, 3)
    with pytest.raises(ValueError, match="has 5 frames; frame index 5"):
        read_frame_folder(tmp_path, [5])
    assert read_frame_folder(tmp_path, [9], size=(24, 32), clamp=True).shape == (1, 24, 32, 3)


def test_empty_frame_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no"):
        read_frame_folder(tmp_path, [0])


def write_video(path: Path, n: int = 60, size: tuple[int, int] = (48, 64), *,
                codec: str = "libx264", fmt: str | None = None,
                options: dict[str, str] | None = None, vfr: bool = False,
                container_options: dict[str, str] | None = None) -> Path:
    """A clip whose every frame differs (moving ramps plus noise); ``vfr`` gives it
    irregular timestamps in milliseconds."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.options = options or {}
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(n):
            img = np.stack([(xx * 3 + i * 7) % 256, (yy * 5 + i * 3) % 256,
                            ((xx + yy) * 2 + i * 11) % 256], -1)
            img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += int(rng.choice([20, 33, 34, 50]))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


GOP10 = {"g": "10", "bf": "3", "preset": "fast"}
VIDEOS = {
    # name: (file name, writer arguments)
    "mp4_gop10_bframes": ("a.mp4", {"options": GOP10}),
    "mp4_open_gop": ("b.mp4", {"options": {"preset": "fast", "x264-params":
                                           "keyint=10:min-keyint=10:open-gop=1:bframes=3"}}),
    "mp4_faststart_gop1": ("c.mp4", {"options": {"g": "1"},
                                     "container_options": {"movflags": "faststart"}}),
    "mkv_gop10": ("d.mkv", {"fmt": "matroska", "options": {"g": "10", "bf": "2"}}),
    "avi_decode_order_pts": ("e.avi", {"fmt": "avi", "options": {"g": "10", "bf": "2"}}),
    "mp4_variable_rate": ("f.mp4", {"vfr": True, "options": {"g": "10", "bf": "2"}}),
    "avi_mpeg4_bframes": ("g.avi", {"fmt": "avi", "codec": "mpeg4",
                                    "options": {"g": "10", "bf": "2"}}),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Small videos of every kind above, plus one from the synthetic dataset writer and
    one from ``epam_jax.prepare``'s writer."""
    root = tmp_path_factory.mktemp("videos")
    paths = {name: write_video(root / file, **kw) for name, (file, kw) in VIDEOS.items()}
    data = make_synthetic_dataset(root / "synthetic", num_classes=1, num_train=1, num_val=0,
                                  frames=(45, 45), size=(48, 48))
    paths["synthetic_writer"] = next((root / "synthetic" / "videos").glob("*.mp4"))
    raw = make_synthetic_dataset(root / "raw", num_classes=1, num_train=1, num_val=0,
                                 frames=(50, 50), size=(96, 160), raw=True)
    summary = prepare.prepare_videos(raw, root / "raw" / "videos", root / "prepared", size=64,
                                     progress=False)
    assert summary["ok"] == 1 and data.is_file()
    paths["prepare_writer"] = next((root / "prepared").glob("*.mp4"))
    return paths


_REFERENCE: dict[tuple[str, tuple[int, int]], list[np.ndarray]] = {}


def reference(path: Path, size: tuple[int, int] = SMALL) -> list[np.ndarray]:
    """Every frame of a plain decode loop from frame 0 (cached per file)."""
    key = (str(path), size)
    if key not in _REFERENCE:
        _REFERENCE[key] = all_frames(path, size)
    return _REFERENCE[key]


def index_sets(n: int, seed: int, count: int) -> list[list[int]]:
    """First, last, repeats, the end, the whole clip, and random sets (many in the
    second half, where a seek pays)."""
    rng = np.random.default_rng(seed)
    sets = [[0], [n - 1], [n - 1, 0], [5, 5, 3], [n - 3, n - 2, n - 1, n - 2], list(range(n)),
            rgb_indices(uniform_sample_indices(n, 48, False, rng)).tolist(),
            rgb_indices(uniform_sample_indices(n, 48, True)).tolist()]
    for _ in range(count):
        sets.append(rng.choice(n, int(rng.integers(1, 17)), replace=True).tolist())
        sets.append(rng.integers(n // 2, n, int(rng.integers(1, 6))).tolist())
    return sets


def assert_equal_to_plain_decode(path: Path, sets: list[list[int]],
                                 clamp_sets: int = 3) -> dict[str, int]:
    """Every set decodes to the plain loop's frames, also with clamp past the end; returns
    the decoder's counters over the sets."""
    ref = reference(path)
    n = len(ref)
    before = dict(video_module.decode_stats)
    for inds in sets:
        got = decode_video_frames(path, inds, size=SMALL)
        for k, i in enumerate(inds):
            np.testing.assert_array_equal(got[k], ref[i], err_msg=f"{path.name} {inds} frame {i}")
    # clamp: past the end is the video's last frame
    for inds in ([3, n + 20], [n + 4, n - 1, 3], [n // 2, n])[:clamp_sets]:
        got = decode_video_frames(path, inds, size=SMALL, clamp=True)
        for k, i in enumerate(inds):
            np.testing.assert_array_equal(got[k], ref[min(i, n - 1)], err_msg=f"{inds}")
    with pytest.raises(ValueError, match=f"has {n} frames; frame index {n + 1} requested"):
        decode_video_frames(path, [1, n + 1], size=SMALL)
    return {k: video_module.decode_stats[k] - before[k] for k in before}


@pytest.mark.parametrize("name", [*VIDEOS, "synthetic_writer", "prepare_writer"])
def test_sampled_frames_equal_plain_decode(written, name: str) -> None:
    path = written[name]
    n = video_frame_count(path)
    stats = assert_equal_to_plain_decode(path, index_sets(n, seed=len(name), count=15))
    if name in ("mp4_gop10_bframes", "mp4_open_gop", "mkv_gop10"):
        # Seeks past frame 0 and dropped frames are exercised, and trusted.
        assert stats["seeks"] > 0 and stats["skip_offered"] > 0
        # Open GOPs: a frame shown before its keyframe needs the one before; the seek
        # lands after it now and then, and the clip is decoded again from frame 0.
        assert stats["restarts"] <= (stats["calls"] // 8 if "open" in name else 0)
        assert stats["frames_decoded"] < 0.6 * n * stats["calls"]
    if name in ("avi_decode_order_pts", "mp4_variable_rate"):
        # Timestamps not on the frame grid in presentation order: counted, from frame 0.
        assert stats["seeks"] == stats["skip_offered"] == stats["restarts"] == 0
    if name == "prepare_writer":
        assert stats["skip_offered"] > 0 and stats["restarts"] == 0


@pytest.mark.parametrize("clip", [NTU, DEMO], ids=["ntu_avi", "demo_mp4"])
def test_real_clips_equal_plain_decode(clip: Path) -> None:
    if not clip.is_file():
        pytest.skip(f"real clip not found at {clip} (needs ../shared/data beside the project)")
    n = video_frame_count(clip)
    rng = np.random.default_rng(1)
    sets = [[n - 1, 0, 0], rgb_indices(uniform_sample_indices(n, 48, False, rng)).tolist(),
            rgb_indices(uniform_sample_indices(n, 48, True)).tolist(),
            sorted(rng.integers(n // 2, n, 3).tolist())]
    stats = assert_equal_to_plain_decode(clip, sets, clamp_sets=1)
    assert stats["restarts"] == 0


def test_decodes_stop_after_the_last_needed_frame(written) -> None:
    path = written["mp4_gop10_bframes"]
    before = video_module.decode_stats["frames_decoded"]
    decode_video_frames(path, [12, 14], size=SMALL)  # keyframe before 12 is within reach
    assert video_module.decode_stats["frames_decoded"] - before <= 10


def _damaged(path: Path, how: str, out: Path) -> Path:
    data = path.read_bytes()
    if how == "half":
        data = data[: len(data) // 2]
    elif how == "garbage":
        rng = np.random.default_rng(0)
        third = len(data) // 3
        data = data[:third] + rng.bytes(third) + data[2 * third:]
    elif how == "empty":
        data = b""
    out.write_bytes(data)
    return out


@pytest.mark.parametrize("name", ["mp4_gop10_bframes", "mp4_faststart_gop1", "mkv_gop10",
                                  "avi_decode_order_pts", "prepare_writer"])
@pytest.mark.parametrize("how", ["half", "garbage", "empty"])
def test_damaged_files_raise_value_error_naming_them(written, tmp_path, name, how) -> None:
    src = written[name]
    bad = _damaged(src, how, tmp_path / f"bad_{how}{src.suffix}")
    n = len(reference(src))
    for clamp in (False, True):
        with pytest.raises(ValueError, match=rf"{bad.name}.*(cannot|corrupt|truncated|no )"):
            decode_video_frames(bad, np.arange(0, n, 3), size=SMALL, clamp=clamp)


@pytest.mark.parametrize("clip", [NTU, DEMO], ids=["ntu_avi", "demo_mp4"])
def test_damaged_real_clips_raise(clip: Path, tmp_path) -> None:
    if not clip.is_file():
        pytest.skip(f"real clip not found at {clip} (needs ../shared/data beside the project)")
    for how in ("half", "garbage"):
        bad = _damaged(clip, how, tmp_path / f"bad_{how}{clip.suffix}")
        with pytest.raises(ValueError, match=bad.name):
            decode_video_frames(bad, np.arange(0, 70, 5), size=SMALL, clamp=True)


def test_truncated_mid_stream_is_not_a_short_clip(written, tmp_path) -> None:
    """A file cut where its header still reads (moov first) decodes some frames, then
    ends: that is an error, with clamp too, not the last decoded frame repeated."""
    src = written["mp4_faststart_gop1"]
    with av.open(str(src)) as container:  # cut where packet 30 starts
        cut = [p.pos for p in container.demux(video=0) if p.size][30]
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(src.read_bytes()[:cut])
    with av.open(str(bad)) as container:  # the header still opens
        assert container.streams.video[0].frames == 60
    with pytest.raises(ValueError, match="cut.mp4' is truncated or corrupt: it decodes to"):
        decode_video_frames(bad, [0, 59], size=SMALL, clamp=True)
    # Frames before the cut are still fine.
    np.testing.assert_array_equal(decode_video_frames(bad, [2], size=SMALL)[0],
                                  reference(src)[2])


def test_unreadable_files(tmp_path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ValueError, match="cannot open video .*junk.avi"):
        decode_video_frames(junk, [0])
    with pytest.raises(ValueError, match="junk.avi"):
        video_frame_count(junk)
    audio = tmp_path / "audio.wav"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    with pytest.raises(ValueError, match="audio.wav' has no video stream"):
        decode_video_frames(audio, [0])


SHAPE = (96, 128)


@pytest.mark.parametrize(("name", "message"), [
    ("avi_cut", r"cut.avi' is truncated or corrupt: it decodes to \d+ frames, its header "
                r"states 60$"),
    ("mkv_cut", r"cut.mkv' is truncated or corrupt: it decodes to \d+ frames lasting 0\.\d\d "
                r"s, its header states 2\.00 s$"),
], ids=["avi_frame_count", "mkv_duration"])
def test_truncated_files_are_refused_by_every_whole_video_reader(small_videos, name: str,
                                                                 message: str) -> None:
    """A frame count (AVI) or a duration alone (Matroska) in the header: the probe, the
    frame iterator (after the frames that decode, which are the intact file's), the pose
    extraction (before MediaPipe, absent from this interpreter) and the stream's file."""
    bad = small_videos[name]
    with pytest.raises(ValueError, match=message):
        probe_video(bad)
    with pytest.raises(ValueError, match=message):
        video_to_annotation(bad)
    with pytest.raises(ValueError, match=message):
        Source(os.fspath(bad))
    intact = plain_frames(small_videos[name.removesuffix("_cut")])
    got = []
    # the iterator names the damaged frame where the decoder flags the last one corrupt
    damaged = rf"{message}|cut.\w+' is corrupt: frame \d+ does not decode cleanly$"
    with av.open(os.fspath(bad)) as container, pytest.raises(ValueError, match=damaged):
        for frame in iter_video_frames(container, os.fspath(bad)):
            got.append(rgb24(frame))
    assert 0 < len(got) < len(intact)
    for k, frame in enumerate(got):
        np.testing.assert_array_equal(frame, intact[k])
    # where the caller allows it: the same frames, and the message reported
    reported = []
    with av.open(os.fspath(bad)) as container:
        kept = sum(1 for _ in iter_video_frames(container, os.fspath(bad),
                                                report=reported.append))
    assert kept == len(got) and len(reported) == 1 and re.search(damaged, reported[0])


def test_lost_stretch_in_a_file_without_frame_count(tmp_path: Path) -> None:
    """Garbage over the middle of a Matroska file (a keyframe, and a cluster, every 10
    frames: the demuxer finds the next one): what decodes spans the duration but leaves
    a hole, which a variable frame rate does not."""
    data = encode_video(tmp_path / "gop10.mkv", moving(60), fmt="matroska",
                       options={"g": "10"}).read_bytes()
    third = len(data) // 3
    bad = tmp_path / "holed.mkv"
    bad.write_bytes(data[:third] + np.random.default_rng(0).bytes(third) + data[2 * third:])
    with pytest.raises(ValueError, match=r"holed.mkv' is truncated or corrupt: it decodes to "
                                         r"\d+ frames with none from [\d.]+ s to [\d.]+ s"):
        probe_video(bad)
