"""Feature extraction: EPAM-Net features of every clip of a dataset (or one video) to .npz.

    python -m epam_jax.extract --checkpoint CKPT --out-dir FEATS \\
        --annotations ntu60.pkl --split xsub_val --video-root videos/ --video-ext .avi
    python -m epam_jax.extract --checkpoint CKPT --out-dir FEATS --video clip.avi [--poses p.pkl]

Dataset clips go through the original eval pipeline (``epam_jax.data``, deterministic
sampling; the videos are expected pre-cropped around the persons, as the paper's were); a
single raw ``--video`` is first cropped around the person (``epam_jax.realvideo``; poses
from ``--poses`` or MediaPipe). Batches run through one jit-compiled forward pass sharded
over all local devices (batch axis 'data'). Each clip gets ``OUT/<frame_dir>.npz``
holding, as chosen:

- ``rgb_features`` (16, 7, 7, 432) / ``rgb_pooled`` (432,): RGB features after the
  attention (``--fusion multiply``: rgb * attention, the seed backbone's output;
  ``residual``: rgb + rgb * attention, what EPAM-Net's RGB head sees; ``none``: raw RGB);
- ``pose_features`` (48, 7, 7, 216) / ``pose_pooled`` (216,);
- ``attention`` (16, 7, 7, 1), always;
- ``rgb_logits``, ``pose_logits``, ``scores`` = their sum (num_classes,), when the
  checkpoint has the classification heads (an EPAM-Net rather than a backbone checkpoint);
- ``label``, ``frame_dir``.

Files are written atomically (temporary file, then rename), so an interrupted run leaves
only complete files, and a rerun skips clips already written. ``extract_meta.json``
records the settings; a rerun with other settings into the same folder is refused.
Checkpoints: an epam-jax directory (``epam_jax.checkpoints``) or a PyTorch ``.pth``
(through ``converters``, needs the ``torch`` extra). Clips take the geometry the checkpoint
records (``epam_jax.checkpoints.clip_fields``: pose frames, RGB stride, sizes, sigma; the
paper's 48 frames and 224x224 for PyTorch checkpoints and descriptions without one);
``--size`` overrides it, with a warning when it differs (the shapes above are the paper's).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from epam_jax.checkpoints import LoadedModel, load_model
from epam_jax.cli import (
    OneLineErrors,
    atomic_output,
    ensure_writable_dir,
    output_dirs,
    rgb_side,
    run_cli,
    write_npz,
)
from epam_jax.data import ClipConfig, load_annotations
from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.forward import POOLINGS, make_forward
from epam_jax.models import FUSIONS
from epam_jax.viz import denormalize_rgb, save_attention_pictures

META_FILE = "extract_meta.json"


# --------------------------------------------------------------------------- writing


def clip_name(frame_dir: str) -> str:
    """File stem for a clip: its frame_dir with path separators replaced."""
    name = frame_dir.replace("/", "__").replace(os.sep, "__")
    if name in ("", ".", ".."):
        raise ValueError(f"cannot name an output file after frame_dir {frame_dir!r}")
    return name


def _check_meta(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Record the settings; refuse to mix in features made with other ones."""
    meta_path = out_dir / META_FILE
    if meta_path.is_file() and not overwrite:
        previous = json.loads(meta_path.read_text())
        if previous != settings:
            changed = sorted(k for k in settings.keys() | previous.keys()
                             if settings.get(k) != previous.get(k))
            raise ValueError(
                f"{out_dir} holds features extracted with other settings ({', '.join(changed)} "
                "differ); use another --out-dir, or --overwrite to redo every clip"
            )
    with atomic_output(meta_path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))


def _settings(loaded: LoadedModel, config: ClipConfig, fusion: str, pooling: str,
              crop: bool | None) -> dict[str, Any]:
    return {
        "checkpoint": loaded.meta["checkpoint"],
        "model": loaded.meta["model"],
        "num_classes": loaded.meta.get("num_classes"),
        "attention_type": loaded.meta.get("attention_type"),
        "fusion": fusion,
        "pooling": pooling,
        "rgb_size": list(config.rgb_size),
        "heatmap_size": list(config.heatmap_size),
        "clip_len": config.clip_len,
        "rgb_stride": config.rgb_stride,
        "sigma": config.sigma,
        "person_crop": crop,
    }


class _Writer:
    """Writes each clip's arrays (and pictures) as batches come out of the model."""

    def __init__(self, out_dir: Path, pictures: bool, gif: bool) -> None:
        self.out_dir, self.pictures, self.gif = out_dir, pictures, gif
        self.written: list[Path] = []

    def clip(self, ann: dict[str, Any], outputs: dict[str, np.ndarray], row: int,
             frames: np.ndarray | None) -> None:
        name = clip_name(ann["frame_dir"])
        arrays = {k: v[row] for k, v in outputs.items()}
        arrays |= {"label": np.int64(ann["label"]), "frame_dir": np.str_(ann["frame_dir"])}
        path = self.out_dir / f"{name}.npz"
        write_npz(path, arrays)
        self.written.append(path)
        if self.pictures and frames is not None:
            stem = self.out_dir / f"{name}_attention"
            save_attention_pictures(
                frames,
                outputs["attention"][row],
                stem.with_suffix(".png"),
                stem.with_suffix(".gif") if self.gif else None,
                title=f"{ann['frame_dir']}: EPAM-Net attention",
            )


def _prepare(annotations: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str],
             overwrite: bool) -> tuple[Path, list[dict[str, Any]]]:
    out_dir = ensure_writable_dir(out_dir, "output")
    names = [clip_name(a["frame_dir"]) for a in annotations]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"several clips would write the same file: {dup[:5]}")
    todo = [a for a, n in zip(annotations, names, strict=True)
            if overwrite or not (out_dir / f"{n}.npz").is_file()]
    return out_dir, todo


def extract(
    annotations: Sequence[dict[str, Any]],
    config: ClipConfig,
    loaded: LoadedModel,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    fusion: str = "multiply",
    pooling: str = "pooled",
    pictures: bool = False,
    gif: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    read_threads: int = 4,
) -> list[Path]:
    """Extract features of dataset clips into ``out_dir``; return the files written now.

    Clips go through ``ClipLoader`` (eval mode: deterministic sampling, whole frames as in
    the pre-cropped datasets). Clips whose file exists are skipped unless ``overwrite``.
    ``pictures`` also writes ``<name>_attention.png`` (and ``.gif`` with ``gif``).
    """
    from tqdm import tqdm

    from epam_jax.data.loader import ClipLoader

    if config.pose is None or not config.rgb:
        raise ValueError("extraction needs both streams: ClipConfig(rgb=True, pose='keypoint' "
                         "or 'heatmap')")
    out_dir, todo = _prepare(annotations, out_dir, overwrite)
    _check_meta(out_dir, _settings(loaded, config, fusion, pooling, None), overwrite)
    skipped = len(annotations) - len(todo)
    if not todo:
        if progress:
            print(f"all {len(annotations)} clips already extracted in {out_dir}")
        return []
    forward, num_devices = make_forward(loaded, fusion, pooling, DeviceInputs.of(config))
    # Several hosts: each extracts every process_count-th clip (the loader's eval sharding).
    host, hosts = jax.process_index(), jax.process_count()
    # no bigger than the clips there are (a huge --batch-size would pad with copies)
    batch_size = max(1, min(batch_size, -(-len(todo) // hosts)))
    batch_size = -(-batch_size // num_devices) * num_devices
    loader = ClipLoader(todo, config, batch_size, train=False, shard_index=host,
                        shard_count=hosts, read_threads=read_threads)
    writer = _Writer(out_dir, pictures, gif)
    desc = f"extract ({skipped} done before)" if skipped else "extract"
    total = len(range(host, len(todo), hosts))
    with tqdm(total=total, unit="clip", disable=not progress, desc=desc) as bar:
        for batch in loader:
            outputs = forward(batch)
            frames = None
            if pictures:
                frames = (batch["rgb"] if batch["rgb"].dtype == np.uint8
                          else denormalize_rgb(batch["rgb"]))
            for row in np.flatnonzero(batch["mask"] > 0):
                ann = todo[int(batch["index"][row])]
                writer.clip(ann, outputs, int(row), None if frames is None else frames[row])
                bar.update(1)
    return writer.written


def extract_video(
    video: str | os.PathLike[str],
    ann: dict[str, Any],
    config: ClipConfig,
    loaded: LoadedModel,
    out_dir: str | os.PathLike[str],
    *,
    crop: bool = True,
    fusion: str = "multiply",
    pooling: str = "pooled",
    pictures: bool = False,
    gif: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Features of one raw video (``ann``: its poses), cropped around the person by
    default (``epam_jax.realvideo``); the same files as ``extract``."""
    from epam_jax.realvideo import video_clip

    out_dir, todo = _prepare([ann], out_dir, overwrite)
    _check_meta(out_dir, _settings(loaded, config, fusion, pooling, crop), overwrite)
    if not todo:
        if progress:
            print(f"{video} already extracted in {out_dir}")
        return []
    clip = video_clip(video, ann, config, crop=crop)
    forward, num_devices = make_forward(loaded, fusion, pooling)
    pad = (num_devices,) + (1,) * (clip.rgb.ndim)
    outputs = forward({"rgb": np.tile(clip.rgb[None], pad),
                       "heatmap": np.tile(clip.heatmap[None], pad)})
    writer = _Writer(out_dir, pictures, gif)
    writer.clip(ann, outputs, 0, clip.frames)
    return writer.written


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="python -m epam_jax.extract",
        description="EPAM-Net features (and attention, logits) of clips to .npz files.",
    )
    parser.add_argument("--checkpoint", required=True,
                        help="epam-jax checkpoint directory or PyTorch .pth (epam or backbone)")
    parser.add_argument("--out-dir", required=True, help="folder for <frame_dir>.npz files")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--annotations", help="PoseC3D annotation pickle")
    src.add_argument("--video", help="one video file")
    parser.add_argument("--split", help="keep only this split of the annotation file")
    parser.add_argument("--video-root", help="folder of the videos (with --annotations)")
    parser.add_argument("--video-ext", default=".mp4", help="video suffix (default .mp4)")
    parser.add_argument("--poses", help="pose pickle for --video (skips MediaPipe)")
    parser.add_argument("--pose-python", help="interpreter with mediapipe (or EPAM_POSE_PYTHON)")
    parser.add_argument("--crop", choices=("person", "none"), default="person",
                        help="--video: cut the box around the person out of the frames first "
                             "(default; raw videos), or feed whole frames")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fusion", choices=FUSIONS, default="multiply",
                        help="RGB features saved: rgb*attention (default), rgb+rgb*attention, "
                             "or raw")
    parser.add_argument("--pooling", choices=POOLINGS, default="pooled",
                        help="save pooled vectors, unpooled maps, or both")
    parser.add_argument("--size", type=rgb_side, default=None,
                        help="RGB side (pose heatmaps are size/4); default: the checkpoint's "
                             "clip geometry (224 for checkpoints that record none)")
    parser.add_argument("--pictures", action="store_true", help="attention PNG per clip")
    parser.add_argument("--gif", action="store_true", help="with --pictures: also a GIF")
    parser.add_argument("--allow-unprepared", action="store_true",
                        help="--annotations: read dataset videos that are not person-aligned "
                             "square frames anyway (see python -m epam_jax.prepare)")
    parser.add_argument("--host-inputs", action="store_true",
                        help="--annotations: draw heatmaps and normalise frames on the host "
                             "(default: ship keypoints and uint8 frames, finished on the "
                             "device)")
    parser.add_argument("--overwrite", action="store_true", help="redo clips already written")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    if args.batch_size <= 0:
        raise SystemExit(f"error: --batch-size must be > 0, got {args.batch_size}")
    if args.gif and not args.pictures:
        raise SystemExit("error: --gif needs --pictures")
    # made first; removed again if the run fails before writing a clip into it
    with output_dirs(args.out_dir, scratch=(META_FILE,)):
        written = _extract_cli(args)
    if not args.quiet:
        print(f"{len(written)} clip(s) written to {Path(args.out_dir).absolute()}")
    return written


def _extract_cli(args: argparse.Namespace) -> list[Path]:
    """``main``'s work once the output folder exists."""
    common = dict(fusion=args.fusion, pooling=args.pooling, pictures=args.pictures,
                  gif=args.gif, overwrite=args.overwrite, progress=not args.quiet)
    if args.video is not None:
        from epam_jax.realvideo import single_video_annotation

        loaded = load_model(args.checkpoint)  # a bad checkpoint fails before the poses
        geometry = loaded.clip_fields(size=args.size)
        ann = single_video_annotation(args.video, args.poses, args.pose_python)
        config = ClipConfig(video_root=os.fspath(Path(args.video).parent), **geometry)
        written = extract_video(args.video, ann, config, loaded, args.out_dir,
                                crop=args.crop == "person", **common)
    else:
        if args.video_root is None:
            raise SystemExit("error: --annotations needs --video-root (the folder of the videos)")
        anns = load_annotations(args.annotations, split=args.split)
        loaded = load_model(args.checkpoint)
        config = ClipConfig(video_root=args.video_root, video_ext=args.video_ext,
                            require_prepared=not args.allow_unprepared,
                            **loaded.clip_fields(size=args.size))
        if not args.host_inputs:
            config = config.device_inputs()
        written = extract(anns, config, loaded, args.out_dir, batch_size=args.batch_size,
                          **common)
    return written


if __name__ == "__main__":
    run_cli(main)
