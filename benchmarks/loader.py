"""Data-loader throughput of ONE worker: ``make_sample`` in a loop, one process, one thread.

    python -m benchmarks.loader [--clips N] [--repeats R] [--json OUT] [--smoke]

This is what one grain worker process does per clip. Sources, all from one real video
(default: the NTU RGB+D clip in ../shared/data):

- ``mp4``: 224x224 H.264 videos made by ``epam_jax.prepare`` (the training input),
- ``frames``: JPEG frame folders of the same frames (``prepare --format frames``),
- ``raw``: the source video itself, unprepared (``require_prepared=False``): every clip
  decodes 1920x1080 frames and resizes them.

Each prepared video is cut to a slightly different person box, so the clips differ.
The keypoints are synthetic (a COCO-17 figure standing where the NTU clip's person
stands, lifting one hand to the mouth), plausible in size and position; the RGB is real.
Per source and mode (train: random sampling and flips; test: the deterministic view 0)
and per output format (``device``: uint8 RGB + keypoints, what training ships;
``host``: float32 normalised RGB + float32 heatmaps made here) the table gives clips/s
(wall), CPU-seconds per clip and clips/s per core (process CPU time, so decoder threads
count), frames decoded per clip (frames the video decoder put out, the ones it dropped
unseen not counted; images read for a frame folder), and the bytes of one clip in either
format (the 'device MB' and 'host MB' columns). Every figure is the best of
``--repeats`` runs, with the spread (worst/best - 1) beside it, and ``other`` is the
share of the machine's CPUs that other processes used meanwhile (a contended run shows
up there). ``--smoke``: 2 clips, 1 run, 1 video, device format only (a test runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from epam_jax import prepare
from epam_jax.data import ClipConfig, make_sample, video_frame_count
from epam_jax.data import video as video_module

DEFAULT_SOURCE = (Path(__file__).resolve().parents[2] / "shared" / "data"
                  / "ntu_S001C001P001R001A001_rgb.avi")
SOURCES = ("mp4", "frames", "raw")
MODES = ("train", "test")
FORMATS = ("device", "host")
# The NTU clip's person (1920x1080 frame): centre x, feet y and height in pixels.
PERSON_X, PERSON_FEET, PERSON_HEIGHT = 1045.0, 740.0, 460.0
# COCO-17 rest pose in body heights: x right of the body axis, y up from the feet.
_REST = np.array([
    [0.00, 0.93], [0.02, 0.95], [-0.02, 0.95], [0.05, 0.94], [-0.05, 0.94],   # face
    [0.11, 0.82], [-0.11, 0.82], [0.14, 0.64], [-0.14, 0.64],                # shoulders, elbows
    [0.15, 0.47], [-0.15, 0.47], [0.07, 0.52], [-0.07, 0.52],                # wrists, hips
    [0.08, 0.27], [-0.08, 0.27], [0.08, 0.03], [-0.08, 0.03],                # knees, ankles
], np.float32)  # fmt: skip


def figure_keypoints(
    total_frames: int, rng: np.random.Generator, img_shape: tuple[int, int],
    center: tuple[float, float], height: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A standing COCO-17 figure that lifts its right hand to the mouth and back:
    keypoint (1, T, 17, 2) in pixels of ``img_shape`` and keypoint_score (1, T, 17)."""
    t = np.linspace(0.0, 1.0, total_frames, dtype=np.float32)
    lift = np.sin(np.pi * t) ** 2  # 0 -> 1 -> 0
    pose = np.repeat(_REST[None], total_frames, axis=0)
    # Right elbow forward and up, right wrist to the mouth.
    pose[:, 8] += lift[:, None] * np.array([0.04, 0.12], np.float32)
    pose[:, 10] += lift[:, None] * (np.array([-0.01, 0.90], np.float32) - _REST[10])
    kp = np.empty((1, total_frames, 17, 2), np.float32)
    kp[0, ..., 0] = center[0] + height * pose[..., 0]
    kp[0, ..., 1] = center[1] - height * pose[..., 1]
    kp += rng.normal(0.0, 0.004 * height, kp.shape).astype(np.float32)
    kp[..., 0] = np.clip(kp[..., 0], 0, img_shape[1] - 1)
    kp[..., 1] = np.clip(kp[..., 1], 0, img_shape[0] - 1)
    score = np.clip(rng.uniform(0.8, 0.97, kp.shape[:3]), 0, 1).astype(np.float32)
    return kp, score


def _raw_annotations(
    source: Path, variants: int, img_shape: tuple[int, int], person: tuple[float, float, float]
) -> list[dict[str, Any]]:
    """``variants`` annotations of ``source``, each with its figure shifted and scaled a
    little (so each prepared video has its own box); 'filename' names the source."""
    total = video_frame_count(source)
    anns = []
    for k in range(variants):
        rng = np.random.default_rng(k)
        x, feet, height = person
        shift = 0.0 if k == 0 else rng.uniform(-0.08, 0.08) * height
        scale = 1.0 if k == 0 else rng.uniform(0.9, 1.1)
        kp, score = figure_keypoints(total, rng, img_shape, (x + shift, feet), height * scale)
        anns.append({"frame_dir": f"clip_{k:02d}", "filename": source.name, "label": k % 60,
                     "img_shape": img_shape, "original_shape": img_shape,
                     "total_frames": total, "keypoint": kp, "keypoint_score": score})
    return anns


def _synthetic_source(work: Path) -> tuple[Path, tuple[int, int], tuple[float, float, float]]:
    """A small raw synthetic video (for --smoke without the NTU clip)."""
    from epam_jax.data.synthetic import make_synthetic_dataset

    size = (180, 320)
    make_synthetic_dataset(work / "synthetic", num_classes=1, num_train=1, num_val=0,
                           frames=(100, 100), size=size, raw=True)
    video = next((work / "synthetic" / "videos").glob("*.mp4"))
    return video, size, (size[1] / 2, size[0] * 0.9, size[0] * 0.6)


def build_sources(
    work: Path, source: Path | None, variants: int
) -> tuple[dict[str, tuple[list[dict[str, Any]], ClipConfig]], str, int]:
    """Annotations and base config per source, preparing the videos into ``work`` with
    ``epam_jax.prepare``; returns them, a description of the source video and how many
    prepared outputs were already there."""
    if source is not None and source.is_file():
        from epam_jax.data.video import frame_size

        img_shape = frame_size(source)
        person = (PERSON_X * img_shape[1] / 1920, PERSON_FEET * img_shape[0] / 1080,
                  PERSON_HEIGHT * img_shape[0] / 1080)
        what = f"{source.name} (real video)"
    else:
        source, img_shape, person = _synthetic_source(work)
        what = f"{source.name} (synthetic: the real clip was not found)"
    raw = _raw_annotations(source, variants, img_shape, person)
    prepared = [{k: v for k, v in a.items() if k != "filename"} for a in raw]
    sources: dict[str, tuple[list[dict[str, Any]], ClipConfig]] = {}
    reused = 0
    for fmt, ext in (("mp4", ".mp4"), ("frames", "")):
        out = work / fmt
        summary = prepare.prepare_videos(raw, source.parent, out, fmt=fmt, progress=False)
        if summary["ok"] + summary["skipped"] != len(raw):
            raise RuntimeError(f"prepare failed: {summary['failures']}")
        reused += summary["skipped"]
        sources[fmt] = (prepared, ClipConfig(video_root=os.fspath(out), video_ext=ext))
    sources["raw"] = (raw, ClipConfig(video_root=os.fspath(source.parent),
                                      require_prepared=False))
    frames = raw[0]["total_frames"]
    return sources, f"{what}, {img_shape[1]}x{img_shape[0]}, {frames} frames", reused


def _cpu_busy() -> float | None:
    """Busy CPU seconds of the whole machine (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[0] + fields[1] + fields[2] + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def _decoded() -> int | None:
    """Frames decoded so far in this process, when the video module counts them."""
    stats = getattr(video_module, "decode_stats", None)
    return None if stats is None else int(stats["frames_decoded"])


def time_clips(
    fn: Callable[[int], Any], clips: int, repeats: int
) -> dict[str, Any]:
    """Run ``fn(i)`` for i < ``clips``, ``repeats`` times: per repeat wall seconds,
    process CPU seconds, decoded frames and the other processes' CPU share."""
    runs = []
    for _ in range(repeats):
        dec0, busy0 = _decoded(), _cpu_busy()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(clips):
            fn(i)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        dec1, busy1 = _decoded(), _cpu_busy()
        other = None
        if busy0 is not None and busy1 is not None:
            other = max(0.0, (busy1 - busy0) - cpu) / ((os.cpu_count() or 1) * wall)
        runs.append({"wall_s": wall, "cpu_s": cpu, "other_cpu_share": other,
                     "decoded": None if dec0 is None else dec1 - dec0})
    return {"clips": clips, "runs": runs}


def _spread(values: Sequence[float]) -> float:
    return max(values) / min(values) - 1.0 if min(values) > 0 else float("inf")


def summarise(timing: dict[str, Any]) -> dict[str, Any]:
    """Best figures over the repeats and their spread."""
    n, runs = timing["clips"], timing["runs"]
    walls = [r["wall_s"] for r in runs]
    cpus = [max(r["cpu_s"], 1e-9) for r in runs]
    decoded = [r["decoded"] for r in runs if r["decoded"] is not None]
    others = [r["other_cpu_share"] for r in runs if r["other_cpu_share"] is not None]
    return {
        "clips_per_s": n / min(walls), "clips_per_s_spread": _spread(walls),
        "cpu_s_per_clip": min(cpus) / n, "cpu_spread": _spread(cpus),
        "clips_per_s_per_core": n / min(cpus),
        "decoded_frames_per_clip": (sum(decoded) / len(decoded) / n) if decoded else None,
        "other_cpu_share": max(others) if others else None,
    }


def _nbytes(sample: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in sample.values()))


def _one_clip(i: int, anns: Sequence[dict[str, Any]], config: ClipConfig, train: bool,
              rng: np.random.Generator) -> None:
    """Clip ``i`` as a loader worker makes it (cycling over the videos)."""
    make_sample(anns[i % len(anns)], config, train, rng if train else None)


def run(
    work: Path, source: Path | None, clips: int, repeats: int, variants: int,
    sources: Sequence[str], modes: Sequence[str], formats: Sequence[str], warmup: int,
) -> dict[str, Any]:
    """Prepare the sources and time every (source, mode, format); returns the results."""
    start = time.perf_counter()
    built, what, reused = build_sources(work, source, variants)
    prep_s = time.perf_counter() - start
    rows = []
    for name in sources:
        anns, base = built[name]
        configs = {"host": base, "device": base.device_inputs()}
        sizes = {f: _nbytes(make_sample(anns[0], configs[f], False)) for f in FORMATS}
        for mode in modes:
            train = mode == "train"
            for fmt in formats:
                one = partial(_one_clip, anns=anns, config=configs[fmt], train=train,
                              rng=np.random.default_rng(0))
                for i in range(warmup):
                    one(i)
                result = summarise(time_clips(one, clips, repeats))
                rows.append({"source": name, "mode": mode, "format": fmt, **result,
                             "device_bytes_per_clip": sizes["device"],
                             "host_bytes_per_clip": sizes["host"]})
    return {"source": what, "prepare_s": prep_s, "prepare_reused": reused, "clips": clips,
            "repeats": repeats,
            "variants": variants, "cpu_count": os.cpu_count(),
            "keypoints": "synthetic (a figure where the clip's person stands)",
            "rows": rows}


HEADER = ("source", "mode", "format", "clips/s", "spread", "CPU-s/clip", "clips/s/core",
          "spread", "decoded/clip", "device MB", "host MB", "other")


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in result["rows"]:
        dec = r["decoded_frames_per_clip"]
        other = r["other_cpu_share"]
        cells = (r["source"], r["mode"], r["format"], f"{r['clips_per_s']:.1f}",
                 f"{100 * r['clips_per_s_spread']:.0f}%", f"{r['cpu_s_per_clip']:.4f}",
                 f"{r['clips_per_s_per_core']:.1f}", f"{100 * r['cpu_spread']:.0f}%",
                 "n/a" if dec is None else f"{dec:.1f}",
                 f"{r['device_bytes_per_clip'] / 1e6:.2f}",
                 f"{r['host_bytes_per_clip'] / 1e6:.2f}",
                 "n/a" if other is None else f"{100 * other:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def _work_dir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="loader_bench_") as tmp:
            yield Path(tmp)


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected {what} from {allowed}, got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loader",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="clips per timed run (40)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (3)")
    parser.add_argument("--variants", type=int, default=4,
                        help="prepared videos (person boxes) the clips cycle over (4)")
    parser.add_argument("--source", default=os.fspath(DEFAULT_SOURCE),
                        help="raw video to prepare (default: the NTU clip in ../shared/data; "
                        "a synthetic one when it is missing)")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma list of "
                        f"{SOURCES}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {MODES}")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma list of {FORMATS}")
    parser.add_argument("--work-dir", help="keep the prepared videos here (default: a "
                        "temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny and fast: 2 clips, 1 repeat, 1 video, device format")
    args = parser.parse_args(argv)
    try:
        sources = _names(args.sources, SOURCES, "sources")
        modes = _names(args.modes, MODES, "modes")
        formats = _names(args.formats, FORMATS, "formats")
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    clips, repeats, variants, warmup = args.clips, args.repeats, args.variants, 2
    if args.smoke:
        clips, repeats, variants, warmup, formats = 2, 1, 1, 1, ["device"]
    if min(clips, repeats, variants) <= 0:
        parser.error("expected --clips, --repeats and --variants > 0")
    with _work_dir(args.work_dir) as work:
        result = run(work, Path(args.source) if args.source else None, clips, repeats,
                     variants, sources, modes, formats, warmup)
    print(f"source: {result['source']}; keypoints {result['keypoints']}")
    print(f"one process, one thread calling make_sample; {clips} clips x {repeats} repeats "
          f"over {variants} prepared videos; {result['cpu_count']} CPUs; "
          f"prepare took {result['prepare_s']:.1f} s ({result['prepare_reused']} outputs "
          "reused)")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
