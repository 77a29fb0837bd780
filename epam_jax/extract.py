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
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from epam_jax import checkpoints
from epam_jax.checkpoints import describe, load_meta, load_variables, recorded_geometry
from epam_jax.data import ClipConfig, load_annotations
from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.models import EPAMBackbone, EPAMNet, variable_shapes
from epam_jax.streams import check_finite
from epam_jax.tuning import Tuning
from epam_jax.viz import (
    atomic_output,
    denormalize_rgb,
    ensure_writable_dir,
    output_dirs,
    save_attention_pictures,
)

TWO_STREAM_MODELS = ("epam", "backbone")
FUSIONS = ("multiply", "residual", "none")
POOLINGS = ("pooled", "unpooled", "both")
META_FILE = "extract_meta.json"
TORCH_SUFFIXES = (".pth", ".pt", ".tar")


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class LoadedModel:
    """A two-stream model, its variables (host numpy) and its description."""

    model: EPAMNet | EPAMBackbone
    variables: dict
    meta: dict[str, Any]

    @property
    def has_heads(self) -> bool:
        return isinstance(self.model, EPAMNet)

    def clip_fields(self, **overrides: Any) -> dict[str, Any]:
        """The ClipConfig geometry to run this model with: what its checkpoint records
        (else the paper's), with the given overrides (``checkpoints.clip_fields``)."""
        return checkpoints.clip_fields(self.meta, **overrides)


def _torch_variables(path: Path) -> dict:
    """Variables of a PyTorch EPAM-Net (with heads) or backbone (without) checkpoint."""
    try:
        import converters
    except ImportError as err:  # pragma: no cover - the package ships with the project
        raise ImportError("reading a PyTorch checkpoint needs the converters package") from err
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"{path} is a PyTorch checkpoint; reading it needs torch: pip install "
            "'epam-jax[torch]' (or convert it once with python -m converters)"
        ) from err
    state_dict = converters.read_torch_checkpoint(path)  # one clear line if unreadable
    errors = []
    for model in TWO_STREAM_MODELS:
        try:
            keyed, _ = converters.normalize_keys(state_dict, model)
            return converters.torch_to_flax(keyed, model)
        except converters.ConversionError as err:
            errors.append(f"as {model!r}: {err}")
    raise ValueError(
        f"{path} is not a two-stream EPAM-Net checkpoint (tried "
        + "; ".join(errors)
        + "); single-stream checkpoints are combined with "
        "converters.from_single_stream_checkpoints"
    )


def build_model(meta: dict[str, Any]) -> EPAMNet | EPAMBackbone:
    """The model a checkpoint description names; only two-stream models are accepted."""
    if meta.get("model") not in TWO_STREAM_MODELS:
        raise ValueError(
            f"expected a two-stream EPAM-Net checkpoint (model 'epam' or 'backbone'), got a "
            f"{meta.get('model')!r} checkpoint; single-stream checkpoints cannot compute "
            "the attention"
        )
    attention = meta.get("attention_type") or "CBAM_spatial_efficient_temporal"
    if meta["model"] == "epam":
        return EPAMNet(num_classes=int(meta["num_classes"]), attention_type=attention)
    return EPAMBackbone(attention_type=attention)


@functools.lru_cache(maxsize=8)
def _expected_shapes(model: Any) -> dict:
    return variable_shapes(model)  # traces the model: worth keeping per (hashable) model


def _check_tree(model: Any, variables: dict, source: Path) -> None:
    expected = _expected_shapes(model)
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(
        {c: expected[c] for c in ("params", "batch_stats")})}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(
        {c: variables[c] for c in ("params", "batch_stats")})}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not fit {type(model).__name__}: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} "
            f"misshapen {wrong[:3]}"
        )


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """A two-stream model from an epam-jax checkpoint directory or a PyTorch ``.pth``.

    Single-stream and unknown checkpoints are refused with a message saying what was found.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file():
        if path.name == checkpoints.META_FILE:
            raise ValueError(f"{path} is the description of an epam-jax checkpoint; pass the "
                             f"directory holding it, {path.parent}")
        if path.suffix not in TORCH_SUFFIXES:
            raise ValueError(
                f"{path} is a file but not a PyTorch checkpoint ({', '.join(TORCH_SUFFIXES)}); "
                "epam-jax checkpoints are directories written by "
                "epam_jax.checkpoints.save_variables"
            )
        variables = _torch_variables(path)
        meta = describe(variables)
    else:
        meta = load_meta(path)
        build_model(meta)  # refuse other models before reading the weights
        recorded_geometry(meta, path)  # and a malformed clip geometry
        variables = load_variables(path)
        found = describe(variables)
        if found["model"] != meta["model"]:
            raise ValueError(
                f"{path}: its description says {meta['model']!r} but it holds "
                f"{found['model']!r} variables"
            )
        meta = meta | found
    model = build_model(meta)
    _check_tree(model, variables, path)
    return LoadedModel(model, variables, dict(meta, checkpoint=os.fspath(path.absolute())))


# --------------------------------------------------------------------------- the forward pass


def _outputs(module: Any, rgb: jax.Array, pose: jax.Array, fusion: str, pooling: str,
             heads: bool) -> dict[str, jax.Array]:
    rgb_feats, pose_feats, attention = module.features(rgb, pose, False)
    fused = {"multiply": rgb_feats * attention, "residual": rgb_feats + rgb_feats * attention,
             "none": rgb_feats}[fusion]
    out = {"attention": attention}
    if pooling in ("unpooled", "both"):
        out["rgb_features"] = fused
        out["pose_features"] = pose_feats
    if pooling in ("pooled", "both"):
        out["rgb_pooled"] = jnp.mean(fused, axis=(1, 2, 3))
        out["pose_pooled"] = jnp.mean(pose_feats, axis=(1, 2, 3))
    if heads:
        rgb_logits = module.rgb_cls_head(rgb_feats + rgb_feats * attention, train=False)
        pose_logits = module.pose_cls_head(pose_feats, train=False)
        out |= {"rgb_logits": rgb_logits, "pose_logits": pose_logits,
                "scores": rgb_logits + pose_logits}
    return out


def _forward_outputs(variables: dict, batch: dict[str, jax.Array], *, model: Any,
                     fusion: str, pooling: str, inputs: DeviceInputs) -> dict[str, jax.Array]:
    heads = isinstance(model, EPAMNet)
    batch = inputs(batch)
    return model.apply(
        variables, batch["rgb"], batch["heatmap"],
        method=lambda m, r, p: _outputs(m, r, p, fusion, pooling, heads)
    )


@functools.cache
def _jitted_forward() -> Callable[..., dict[str, jax.Array]]:
    # One jitted function keyed on the (hashable) model, so every caller shares the
    # compile; made on first use so importing this module starts no JAX backend.
    return jax.jit(_forward_outputs, static_argnames=("model", "fusion", "pooling", "inputs"))


def make_forward(
    loaded: LoadedModel, fusion: str = "multiply", pooling: str = "pooled",
    inputs: DeviceInputs | None = None,
) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], int]:
    """A jit-compiled ``forward(batch) -> {name: numpy array}`` sharded over all local
    devices (batch on mesh axis 'data', variables replicated), and the device count the
    batch size must be a multiple of. ``batch`` holds 'rgb' (float32 normalised or uint8)
    and 'heatmap' or 'keypoint', finished on the device by ``inputs`` (the loader's
    ``DeviceInputs.of(config)``)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    devices = np.array(jax.local_devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    variables = jax.device_put(loaded.variables, replicated)
    model = loaded.model.clone(tuning=Tuning.for_devices(devices))
    inputs = inputs or DeviceInputs()

    def forward(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pose_key = "keypoint" if "keypoint" in batch else "heatmap"
        arrays = {"rgb": np.asarray(batch["rgb"]), pose_key: np.asarray(batch[pose_key])}
        for key, array in arrays.items():
            if array.dtype == np.uint8 and key == "rgb":
                continue
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(
                    f"batch[{key!r}] must be float32 ('rgb' may also be uint8 frames, "
                    f"normalised on the device), got {array.dtype}")
            arrays[key] = array.astype(np.float32, copy=False)
            check_finite(arrays[key], f"batch[{key!r}]")
        if len(arrays["rgb"]) % len(devices):
            raise ValueError(
                f"batch of {len(arrays['rgb'])} clips does not split over {len(devices)} "
                "devices")
        placed = jax.device_put(arrays, batch_sharding)
        out = _jitted_forward()(variables, placed, model=model, fusion=fusion,
                                pooling=pooling, inputs=inputs)
        return jax.tree_util.tree_map(np.asarray, out)

    return forward, len(devices)


# --------------------------------------------------------------------------- writing


def clip_name(frame_dir: str) -> str:
    """File stem for a clip: its frame_dir with path separators replaced."""
    name = frame_dir.replace("/", "__").replace(os.sep, "__")
    if name in ("", ".", ".."):
        raise ValueError(f"cannot name an output file after frame_dir {frame_dir!r}")
    return name


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to ``path`` atomically (a file that exists is complete)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


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


def _size(text: str) -> int:
    side = int(text)
    if side <= 0 or side % 4:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 4, got {text}")
    return side


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
    parser.add_argument("--size", type=_size, default=None,
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


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose refusals (a missing or malformed argument) are one line ``error:
    ...`` with exit status 2, like ``run_cli``'s, instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (usage: {self.prog} -h)\n")


def run_cli(entry: Callable[[], Any]) -> None:
    """Run a CLI entry point; the clear errors raised for bad input (unreadable video, no
    person, wrong checkpoint, unwritable folder, ...) print one line instead of a traceback."""
    try:
        entry()
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    run_cli(main)
