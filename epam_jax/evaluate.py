"""The official evaluation: a checkpoint on a dataset split -> top-1, top-5, mean class accuracy.

    python -m epam_jax.evaluate --checkpoint CKPT --annotations ntu60_2d.pkl \\
        --split xsub_val --video-root ntu60_prepared [--dataset ntu60_xsub] \\
        [--num-clips 10] [--flip] [--average score|prob] [--out-dir eval/]

By default the original's protocol: test-mode frame sampling, one clip per video, no flip,
score = rgb_logits + pose_logits. ``--num-clips K`` takes K test-mode clips per video (as
PoseC3D's UniformSampleFrames with num_clips), ``--flip`` adds each clip's horizontal
mirror (both streams, keypoints' left/right swapped), and ``--average`` says whether each
stream's views are averaged as logits ('score') or as softmax probabilities ('prob');
fusions weight the averaged stream scores (rgb:pose 1:1, the fused score, 2:1 and 1:2).
Reported: top-1, top-5 and mean class accuracy of the fused score, of each stream and of
each fusion, per-class accuracy, and with ``--out-dir`` (or ``--json``, ``--scores``,
``--confusion``) ``metrics.json``, ``scores.npz`` (per video, no pickle) and
``confusion.png``.

Batches run through the training library's ``eval_step``, sharded over every device of
every host (``DataParallel``), and the metrics are ``epam_jax.metrics``, the ones training
logs: every (video, view) is counted exactly once. Checkpoints: an epam-jax directory or a
PyTorch ``.pth`` in any container the original wrote (needs the ``torch`` extra). Clips
have the geometry the checkpoint records (``epam_jax.checkpoints.clip_fields``; the
paper's 48 pose frames, every 3rd as RGB, 224x224, for PyTorch checkpoints);
``--size``/``--clip-len``/``--rgb-stride`` override it, with a warning when they differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from epam_jax.checkpoints import LoadedModel, describe_clip, load_model
from epam_jax.cli import (
    OneLineErrors,
    atomic_output,
    nonnegative_int,
    output_dirs,
    positive_int,
    rgb_side,
    run_cli,
    write_npz,
)
from epam_jax.data import ClipConfig, load_annotations
from epam_jax.data.datasets import Recipe, get_recipe, read_names
from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.data.ntu_classes import class_names
from epam_jax.metrics import AVERAGES, ScoreTable, fused_scores, table_metrics

METRIC_KEYS = ("top1", "top5", "mean_class")
SCORE_ORDER = ("fused", "rgb", "pose", "rgb:pose=2:1", "rgb:pose=1:2")


@dataclasses.dataclass
class Evaluation:
    """Everything one evaluation measured."""

    table: ScoreTable
    metrics: dict[str, dict[str, Any]]
    scores: dict[str, np.ndarray]  # what the metrics were computed from, per score name
    annotations: list[dict[str, Any]]
    num_classes: int
    average: str
    seconds: float
    first_batch_seconds: float
    first_batch_clips: int

    @property
    def num_clips_run(self) -> int:
        return int(self.table.seen.sum())

    @property
    def clips_per_second(self) -> float:
        return self.num_clips_run / max(self.seconds, 1e-9)


def evaluate_model(
    loaded: LoadedModel,
    annotations: Sequence[dict[str, Any]],
    config: ClipConfig,
    *,
    batch_size: int = 8,
    average: str = "score",
    progress: bool = True,
    read_threads: int = 4,
    worker_count: int = 0,
    devices: list | None = None,
) -> Evaluation:
    """Run EPAM-Net over every view of every annotation and measure it.

    ``config`` sets the views (``num_clips``, ``test_flip``) and the clip geometry;
    ``batch_size`` is global (rounded up to a multiple of the device count). Every host
    runs this with the same arguments and gets the same result.
    """
    import jax
    from tqdm import tqdm

    from epam_jax.data.loader import ClipLoader
    from epam_jax.train.evaluate import collect_scores
    from epam_jax.train.state import EvalState

    if not loaded.has_heads:
        raise ValueError(
            f"{loaded.meta['checkpoint']} is a {loaded.meta['model']!r} checkpoint without "
            "classification heads; evaluation needs an EPAM-Net ('epam') checkpoint")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if config.pose is None or not config.rgb:
        raise ValueError("evaluation needs both streams: ClipConfig(rgb=True, pose='keypoint' "
                         "or 'heatmap')")
    num_classes = int(loaded.meta["num_classes"])
    dp, step = _runner(tuple(devices) if devices is not None else None,
                       DeviceInputs.of(config))
    # no bigger than the clips there are (a huge --batch-size would pad with copies)
    batch_size = max(1, min(batch_size, len(annotations) * config.num_views))
    batch_size = -(-batch_size // dp.num_devices) * dp.num_devices
    model = loaded.model.clone(tuning=dp.tuning)
    state = dp.put_state(EvalState.create(model, loaded.variables))
    loader = ClipLoader(list(annotations), config, dp.check_batch_size(batch_size), train=False,
                        shard_index=jax.process_index(), shard_count=jax.process_count(),
                        read_threads=read_threads, worker_count=worker_count)
    total = len(annotations) * config.num_views
    start = time.perf_counter()
    first: list[tuple[float, int]] = []
    with tqdm(total=total, unit="clip", desc="evaluate", dynamic_ncols=True,
              disable=not (progress and jax.process_index() == 0)) as bar:

        def on_batch(clips: int) -> None:
            if not first:
                first.append((time.perf_counter() - start, clips))
            bar.update(clips)

        table = collect_scores(lambda b: step(state, dp.put_batch(b)), loader, len(annotations),
                               config.num_views, fetch=dp.fetch, on_batch=on_batch)
    seconds = time.perf_counter() - start
    metrics = table_metrics(table, num_classes, average)
    scores = fused_scores(table.stream_scores(average))
    first_seconds, first_clips = first[0] if first else (seconds, 0)
    return Evaluation(table, metrics, scores, list(annotations), num_classes, average,
                      seconds, first_seconds, first_clips)


@functools.cache
def _runner(devices: tuple | None, inputs: DeviceInputs) -> tuple[Any, Any]:
    """The device mesh and the compiled eval step, shared by every evaluation of this
    process (checkpoints of the same model and shapes compile once)."""
    from epam_jax.train.parallel import DataParallel

    dp = DataParallel("jit", list(devices) if devices is not None else None)
    return dp, dp.eval_step(mode="epam", inputs=inputs)


# --------------------------------------------------------------------------- reports


def metrics_report(ev: Evaluation, names: Sequence[str], settings: dict[str, Any]
                   ) -> dict[str, Any]:
    """The JSON document: each score's metrics, the per-class table and the settings."""
    out: dict[str, Any] = {}
    for name in SCORE_ORDER:
        if name in ev.metrics:
            out[name] = {k: ev.metrics[name][k] for k in METRIC_KEYS}
    counts = ev.metrics["fused"]["class_count"]
    out["per_class"] = [
        {"index": i, "name": names[i], "count": int(counts[i]),
         **{s: _finite(ev.metrics[s]["per_class"][i]) for s in ("fused", "rgb", "pose")}}
        for i in range(ev.num_classes)
    ]
    out["num_videos"] = len(ev.annotations)
    out["num_clips"] = ev.num_clips_run
    out["seconds"] = ev.seconds
    out["clips_per_second"] = ev.clips_per_second
    return out | {"settings": settings}


def _finite(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def write_scores(path: Path, ev: Evaluation) -> None:
    """Per video: frame_dir, label, each stream's logits (mean over views), the scores the
    metrics used, and every view's logits; plain arrays, loadable without pickle."""

    logits = ev.table.logits
    arrays = {
        "frame_dir": np.array([a["frame_dir"] for a in ev.annotations], dtype=str),
        "label": ev.table.labels,
        "rgb_logits": logits["rgb"].mean(1),
        "pose_logits": logits["pose"].mean(1),
        "view_rgb_logits": logits["rgb"],
        "view_pose_logits": logits["pose"],
    }
    arrays |= {f"{name.replace(':', '_').replace('=', '_')}_scores": value
               for name, value in ev.scores.items()}
    write_npz(path, arrays)


def format_report(ev: Evaluation, names: Sequence[str], recipe: Recipe | None,
                  per_class: bool = True) -> str:
    """The printed table: every score's metrics, the paper's figure, per-class accuracy."""
    lines = [f"{'score':<16}{'top-1':>8}{'top-5':>8}{'mean class':>12}"]
    for name in SCORE_ORDER:
        if name in ev.metrics:
            m = ev.metrics[name]
            label = "fused (1:1)" if name == "fused" else name
            lines.append(f"{label:<16}{m['top1']:>8.2f}{m['top5']:>8.2f}{m['mean_class']:>12.2f}")
    if recipe is not None:
        metric = "top-1" if recipe.headline == "top1" else "mean class accuracy"
        got = ev.metrics["fused"][recipe.headline]
        lines.append(f"paper ({recipe.dataset}, 1 clip): {metric} {recipe.reported:.1f}; "
                     f"here {got:.2f}")
    if per_class:
        m = ev.metrics
        lines.append(f"per-class accuracy (%):\n  {'class':<44}{'n':>6}{'fused':>8}{'rgb':>8}"
                     f"{'pose':>8}")
        counts = m["fused"]["class_count"]
        for i in range(ev.num_classes):
            if counts[i]:
                row = "".join(f"{m[s]['per_class'][i]:>8.1f}" for s in ("fused", "rgb", "pose"))
                lines.append(f"  {names[i][:43]:<44}{int(counts[i]):>6}{row}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(
        prog="python -m epam_jax.evaluate",
        description="Top-1, top-5 and mean class accuracy of an EPAM-Net checkpoint on a "
                    "dataset split (the original's protocol by default).")
    p.add_argument("--checkpoint", required=True,
                   help="epam-jax checkpoint directory or PyTorch .pth of an EPAM-Net")
    p.add_argument("--annotations", required=True, help="PoseC3D annotation pickle")
    p.add_argument("--video-root", required=True,
                   help="folder of the prepared videos (python -m epam_jax.prepare)")
    p.add_argument("--dataset", help="dataset recipe (ntu60_xsub, toyota_cs, ...): class count, "
                   "split and class names; the checkpoint must match its class count")
    p.add_argument("--split", help="split to evaluate (default: the recipe's validation split, "
                   "else every sample of the file)")
    p.add_argument("--video-ext", default=".mp4", help="video suffix (default .mp4)")
    p.add_argument("--num-clips", type=positive_int, default=1,
                   help="test-mode clips per video (default 1)")
    p.add_argument("--flip", action="store_true", help="also each clip mirrored")
    p.add_argument("--average", choices=AVERAGES, default="score",
                   help="average the views as logits (default) or softmax probabilities")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per step, global")
    p.add_argument("--size", type=rgb_side, default=None,
                   help="RGB side (pose heatmaps are size/4); default: the checkpoint's clip "
                        "geometry (224 for checkpoints that record none)")
    p.add_argument("--clip-len", type=positive_int, default=None,
                   help="pose frames (default: the checkpoint's, 48 when it records none)")
    p.add_argument("--rgb-stride", type=positive_int, default=None,
                   help="RGB frame every N pose frames (default: the checkpoint's, 3 when it "
                        "records none)")
    p.add_argument("--class-names", help="text file, one class name per line")
    p.add_argument("--out-dir", help="write metrics.json, scores.npz and confusion.png here")
    p.add_argument("--json", help="metrics JSON path (overrides --out-dir's)")
    p.add_argument("--scores", help="per-video scores .npz path (overrides --out-dir's)")
    p.add_argument("--confusion", help="confusion-matrix PNG path (overrides --out-dir's)")
    p.add_argument("--allow-unprepared", action="store_true",
                   help="read videos that are not person-aligned square frames anyway")
    p.add_argument("--workers", type=nonnegative_int, default=0,
                   help="decoding processes (default 0)")
    p.add_argument("--host-inputs", action="store_true",
                   help="draw heatmaps and normalise frames on the host (default: ship "
                        "keypoints and uint8 frames, finished on the device)")
    p.add_argument("--no-per-class", action="store_true", help="do not print per-class rows")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _outputs(args: argparse.Namespace) -> dict[str, Path | None]:
    """Where each output goes (``main`` makes their folders before any work)."""
    out = Path(args.out_dir) if args.out_dir else None
    paths: dict[str, Path | None] = {
        "json": Path(args.json) if args.json else (out / "metrics.json" if out else None),
        "scores": Path(args.scores) if args.scores else (out / "scores.npz" if out else None),
        "confusion": (Path(args.confusion) if args.confusion
                      else (out / "confusion.png" if out else None)),
    }
    return paths


def _select(args: argparse.Namespace, recipe: Recipe | None, num_classes: int
            ) -> tuple[list[dict[str, Any]], str | None]:
    split = args.split or (recipe.val_split if recipe else None)
    annotations = load_annotations(args.annotations, split=split, num_classes=num_classes)
    if not annotations:
        where = f"split {split!r} of " if split else ""
        raise ValueError(f"{where}{args.annotations} selects no sample: nothing to evaluate")
    return annotations, split


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:

    args = build_parser().parse_args(argv)
    outputs = _outputs(args)
    # the folders are made (and checked writable) first, and removed again on a failure
    with output_dirs(*dict.fromkeys(p.parent for p in outputs.values() if p is not None)):
        return _evaluate_cli(args, outputs)


def _evaluate_cli(args: argparse.Namespace, outputs: dict[str, Path | None]
                  ) -> dict[str, Any]:
    """``main``'s work once the output folders exist."""
    recipe = get_recipe(args.dataset) if args.dataset else None
    if not Path(args.annotations).is_file():
        raise FileNotFoundError(f"annotation file {args.annotations} not found")
    if not Path(args.video_root).is_dir():
        raise FileNotFoundError(f"video folder {args.video_root} not found")
    names_from_file = read_names(args.class_names) if args.class_names else None
    loaded = load_model(args.checkpoint)
    geometry = loaded.clip_fields(size=args.size, clip_len=args.clip_len,
                                  rgb_stride=args.rgb_stride)
    num_classes = loaded.meta.get("num_classes")
    if num_classes is not None and recipe is not None and num_classes != recipe.num_classes:
        raise ValueError(f"{args.checkpoint} classifies {num_classes} classes but the "
                         f"{recipe.name} recipe has {recipe.num_classes}")
    if num_classes is None:
        num_classes = recipe.num_classes if recipe else None
    annotations, split = _select(args, recipe, num_classes)
    config = ClipConfig(
        **geometry, video_root=args.video_root, video_ext=args.video_ext,
        num_clips=args.num_clips, test_flip=args.flip,
        require_prepared=not args.allow_unprepared)
    if not args.host_inputs:
        config = config.device_inputs()
    if names_from_file is not None:
        names = class_names(loaded.meta["num_classes"], names_from_file)
    elif recipe is not None:
        names = recipe.class_names()
    else:
        names = class_names(loaded.meta["num_classes"])

    ev = evaluate_model(loaded, annotations, config, batch_size=args.batch_size,
                        average=args.average, progress=not args.quiet,
                        worker_count=args.workers)
    settings = {
        "checkpoint": loaded.meta["checkpoint"], "annotations": os.fspath(
            Path(args.annotations).absolute()), "split": split,
        "dataset": recipe.name if recipe else None, "video_root": os.fspath(
            Path(args.video_root).absolute()), "num_clips": args.num_clips, "flip": args.flip,
        "average": args.average, "num_views": config.num_views,
        "size": config.rgb_size[0], "clip_len": config.clip_len,
        "rgb_stride": config.rgb_stride, "sigma": config.sigma,
        "num_classes": ev.num_classes, "attention_type": loaded.meta.get("attention_type"),
    }
    report = metrics_report(ev, names, settings)
    if recipe is not None:
        report["headline"] = {"metric": recipe.headline,
                              "value": ev.metrics["fused"][recipe.headline],
                              "reported": recipe.reported}

    import jax

    if jax.process_index() != 0:
        return report
    views = f"{args.num_clips} clip{'s' if args.num_clips > 1 else ''}" + (
        " + flip" if args.flip else "") + f", average {args.average}"
    print(f"model       {loaded.meta['model']}, {ev.num_classes} classes, "
          f"{loaded.meta.get('attention_type')}, {loaded.meta['checkpoint']}")
    print(f"clip        {describe_clip(geometry)}")
    print(f"data        {len(annotations)} videos"
          + (f" of split {split}" if split else "") + f" ({views}), {args.video_root}")
    steady = ((ev.num_clips_run - ev.first_batch_clips)
              / max(ev.seconds - ev.first_batch_seconds, 1e-9))
    print(f"speed       {ev.clips_per_second:.1f} clips/s ({ev.num_clips_run} clips in "
          f"{ev.seconds:.1f} s; {steady:.1f} clips/s after the first batch, which took "
          f"{ev.first_batch_seconds:.1f} s with compilation)")
    print(format_report(ev, names, recipe, per_class=not args.no_per_class))
    from epam_jax.viz import save_confusion_matrix

    if outputs["json"] is not None:
        with atomic_output(outputs["json"]) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        print(f"wrote       {outputs['json']}")
    if outputs["scores"] is not None:
        write_scores(outputs["scores"], ev)
        print(f"wrote       {outputs['scores']}")
    if outputs["confusion"] is not None:
        title = (f"{recipe.dataset if recipe else Path(args.annotations).name}"
                 f"{' ' + split if split else ''}: fused top-1 "
                 f"{ev.metrics['fused']['top1']:.2f}%")
        save_confusion_matrix(ev.metrics["fused"]["confusion"], names, outputs["confusion"],
                              title)
        print(f"wrote       {outputs['confusion']}")
    return report


if __name__ == "__main__":
    run_cli(main)
