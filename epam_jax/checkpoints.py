"""Models on disk: where a model comes from a path, and the epam-jax checkpoint format.

``model, variables = load(path)`` reads an epam-jax checkpoint directory or a PyTorch file
of the original (through ``converters``, imported only then, with ``weights_only=True``);
``load_model`` gives the tools the same with the checkpoint's description. Both build the
model with ``build_model`` and check the variables with ``check_variables``, which names
every missing, unexpected or misshapen array; training's initial variables and
``from_single_streams`` (the original's two pretrained single streams) go the same way.

A directory written by ``save_variables`` holds ``variables/`` (orbax, the
``{'params', 'batch_stats'}`` tree), ``checksums.json`` (a CRC-32 of every array, so that
damaged data is named instead of loaded) and, written last, ``epam_model.json``: which
model, how many classes, which attention, and under ``clip`` the clip geometry the
variables were trained with (``clip_len`` pose frames, ``rgb_stride``, ``rgb_size``,
``heatmap_size``, ``sigma`` and the RGB normalisation ``rgb_mean``/``rgb_std``). A loader
can so refuse a checkpoint of another model or class count with a clear message instead
of a shape error, and name the array a damaged checkpoint cannot give back.

``clip_fields`` is the one rule by which predict, extract, evaluate and stream size their
clips: the geometry a description records (the paper's, ``ClipConfig``'s defaults, for
descriptions without one and for PyTorch checkpoints), with the command line's explicit
overrides, each differing one announced by a warning line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from epam_jax.attention import ATTENTION_TYPES
from epam_jax.cli import print_warning
from epam_jax.models import (
    EPAMBackbone,
    EPAMNet,
    SingleStreamNet,
    init_variables,
    make_attention,
    variable_shapes,
)
from epam_jax.streams import X3DTemporalShiftPose

META_FILE = "epam_model.json"
VARIABLES_DIR = "variables"
CHECKSUM_FILE = "checksums.json"
GEOMETRY_KEY = "clip"
COLLECTIONS = ("params", "batch_stats")
# The ClipConfig fields a checkpoint's geometry sets (the record adds rgb_mean / rgb_std).
GEOMETRY_FIELDS = ("clip_len", "rgb_stride", "rgb_size", "heatmap_size", "sigma")


def describe(variables: Mapping) -> dict[str, Any]:
    """``{'model', 'num_classes', 'attention_type'}`` read off a variable tree."""
    params = variables["params"]
    has_attention = "attention_module" in params
    heads = [k for k in params if k.endswith("_cls_head")]
    if has_attention:
        model = "epam" if heads else "backbone"
    elif set(params) == {"rgb_backbone", "rgb_cls_head"}:
        model = "rgb"
    elif set(params) == {"pose_backbone", "pose_cls_head"}:
        model = "pose"
    else:
        raise ValueError(f"not EPAM-Net variables: top-level keys {sorted(params)}")
    num_classes = int(np.shape(params[heads[0]]["fc_cls"]["bias"])[0]) if heads else None
    attention_type = None
    if has_attention:
        attention_type = (
            "spatial_temporal"
            if "conv_ch_compress" in params["attention_module"]
            else "CBAM_spatial_efficient_temporal"
        )
    return {"model": model, "num_classes": num_classes, "attention_type": attention_type}


# --------------------------------------------------------------------------- clip geometry


def clip_geometry(config: Any | None = None) -> dict[str, Any]:
    """The ``clip`` record of a ClipConfig (default: ClipConfig's defaults, the paper's
    geometry), as JSON values; the RGB normalisation is the pipeline's."""
    from epam_jax.data.pipeline import ClipConfig
    from epam_jax.data.transforms import RGB_MEAN, RGB_STD

    if config is None:
        defaults = {f.name: f.default for f in dataclasses.fields(ClipConfig)}
        values = {k: defaults[k] for k in GEOMETRY_FIELDS}
    else:
        values = {k: getattr(config, k) for k in GEOMETRY_FIELDS}
    return {
        "clip_len": int(values["clip_len"]),
        "rgb_stride": int(values["rgb_stride"]),
        "rgb_size": [int(s) for s in values["rgb_size"]],
        "heatmap_size": [int(s) for s in values["heatmap_size"]],
        "sigma": float(values["sigma"]),
        "rgb_mean": [float(m) for m in RGB_MEAN],
        "rgb_std": [float(s) for s in RGB_STD],
    }


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value: Any, count: int, positive: bool = False) -> bool:
    return (isinstance(value, list | tuple) and len(value) == count
            and all(isinstance(v, int | float) and not isinstance(v, bool)
                    and (v > 0 or not positive) for v in value))


def recorded_geometry(meta: Mapping[str, Any], source: Any = None) -> dict[str, Any] | None:
    """The checked ``clip`` record of a description, or None when it records none.

    Raises ValueError naming the first malformed entry (``source``: the checkpoint)."""
    record = meta.get(GEOMETRY_KEY)
    if record is None:
        return None
    where = f"{source if source is not None else meta.get('checkpoint', 'a checkpoint')}: " \
            f"{META_FILE} entry {GEOMETRY_KEY!r}"
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected an object, found {type(record).__name__}")
    checks = {
        "clip_len": (_positive_int, "a positive integer"),
        "rgb_stride": (_positive_int, "a positive integer"),
        "rgb_size": (lambda v: _numbers(v, 2) and all(map(_positive_int, v)),
                     "[height, width], positive integers"),
        "heatmap_size": (lambda v: _numbers(v, 2) and all(map(_positive_int, v)),
                         "[height, width], positive integers"),
        "sigma": (lambda v: _numbers([v], 1, positive=True), "a positive number"),
        "rgb_mean": (lambda v: _numbers(v, 3), "three numbers (R, G, B)"),
        "rgb_std": (lambda v: _numbers(v, 3, positive=True), "three positive numbers"),
    }
    for key, (ok, expected) in checks.items():
        if key not in record:
            raise ValueError(f"{where}: expected {key!r} ({expected}), found none")
        if not ok(record[key]):
            raise ValueError(f"{where}: expected {key!r} to be {expected}, found "
                             f"{record[key]!r}")
    out = {k: record[k] for k in checks}
    for key in ("rgb_size", "heatmap_size", "rgb_mean", "rgb_std"):
        out[key] = list(out[key])
    return out


def describe_clip(fields: Mapping[str, Any]) -> str:
    """One line for ClipConfig geometry fields: frames, sizes, sigma."""
    (h, w), (hh, hw) = fields["rgb_size"], fields["heatmap_size"]
    rgb_frames = len(range(0, fields["clip_len"], fields["rgb_stride"]))
    return (f"{fields['clip_len']} pose frames of {hh}x{hw} heatmaps (sigma "
            f"{fields['sigma']:g}), {rgb_frames} RGB frames of {h}x{w} (every "
            f"{fields['rgb_stride']})")


def clip_fields(
    meta: Mapping[str, Any],
    *,
    size: int | None = None,
    clip_len: int | None = None,
    rgb_stride: int | None = None,
    warn: Callable[[str], None] = print_warning,
) -> dict[str, Any]:
    """The ClipConfig fields (``GEOMETRY_FIELDS``) to run a checkpoint with.

    Its description's ``clip`` record, else the paper's geometry; ``size`` (square RGB
    side, heatmaps size / 4), ``clip_len`` and ``rgb_stride`` replace what they name.
    Overriding a recorded value is allowed, with one ``warn`` line, because the model then
    sees clips unlike the ones it was trained on. A recorded RGB normalisation other than
    the pipeline's is refused (ValueError): the loaders cannot apply another one.
    """
    from epam_jax.data.transforms import RGB_MEAN, RGB_STD

    source = meta.get("checkpoint", "the checkpoint")
    record = recorded_geometry(meta, source)
    if record is not None and not (np.allclose(record["rgb_mean"], RGB_MEAN, rtol=0, atol=1e-6)
                                   and np.allclose(record["rgb_std"], RGB_STD, rtol=0,
                                                   atol=1e-6)):
        raise ValueError(
            f"{source} was trained on RGB normalised with mean {record['rgb_mean']} and std "
            f"{record['rgb_std']}; this pipeline normalises with mean {list(RGB_MEAN)} and "
            f"std {list(RGB_STD)} (epam_jax.data.transforms)")
    base = record if record is not None else clip_geometry()
    fields: dict[str, Any] = {
        "clip_len": base["clip_len"], "rgb_stride": base["rgb_stride"],
        "rgb_size": tuple(base["rgb_size"]), "heatmap_size": tuple(base["heatmap_size"]),
        "sigma": base["sigma"],
    }
    changed = []
    if size is not None:
        if not _positive_int(size) or size % 4:
            raise ValueError(f"expected the size to be a positive multiple of 4, got {size!r}")
        fields["rgb_size"], fields["heatmap_size"] = (size, size), (size // 4, size // 4)
        if fields["rgb_size"] != tuple(base["rgb_size"]):
            changed.append(f"size {size} (trained at {'x'.join(map(str, base['rgb_size']))})")
    for name, value in (("clip_len", clip_len), ("rgb_stride", rgb_stride)):
        if value is None:
            continue
        if not _positive_int(value):
            raise ValueError(f"expected {name} to be a positive integer, got {value!r}")
        fields[name] = value
        if value != base[name]:
            changed.append(f"{name} {value} (trained with {base[name]})")
    if record is not None and changed:
        warn(f"running {source} on other clips than it records: {', '.join(changed)}; "
             "its outputs may be worse than in training")
    return fields


# --------------------------------------------------------------------------- writing


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, array)`` of every leaf of a nested mapping, paths joined by '/'."""
    if isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            yield from _leaves(tree[key], f"{prefix}/{key}" if prefix else str(key))
    else:
        yield prefix, tree


def array_checksums(variables: Mapping) -> dict[str, str]:
    """CRC-32 (8 hex digits) of every array's bytes, by its '/'-joined tree path."""
    out = {}
    for col in COLLECTIONS:
        for path, leaf in _leaves(variables[col], col):
            data = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
            out[path] = f"{zlib.crc32(data.view(np.uint8).reshape(-1)):08x}"
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def write_description(path: str | os.PathLike, variables: Mapping, meta: Mapping[str, Any]
                      ) -> None:
    """``checksums.json`` of ``variables``, then ``epam_model.json`` = ``meta``: the
    description goes last, so a directory without it is an unfinished write."""
    path = Path(path)
    _write_json(path / CHECKSUM_FILE, {"algorithm": "crc32",
                                       "arrays": array_checksums(variables)})
    _write_json(path / META_FILE, dict(meta, checksums=CHECKSUM_FILE))


def model_description(variables: Mapping, geometry: Mapping[str, Any] | None = None,
                      **extra: Any) -> dict[str, Any]:
    """What ``epam_model.json`` says: ``describe(variables)``, the clip geometry
    (``geometry``, a ``clip_geometry`` record; default the paper's) and ``extra``."""
    record = clip_geometry() if geometry is None else recorded_geometry(
        {GEOMETRY_KEY: dict(geometry)}, "the geometry to record")
    return describe(variables) | {GEOMETRY_KEY: record} | extra


def save_variables(path: str | os.PathLike, variables: Mapping, *,
                   geometry: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``variables`` to the directory ``path`` (created; must not hold a checkpoint).

    ``geometry``: the ``clip_geometry`` of the clips they were trained on; by default the
    paper's (what converted PyTorch checkpoints and fresh variables expect).
    """
    path = Path(path).absolute()
    if (path / VARIABLES_DIR).exists():
        raise FileExistsError(f"{path} already holds a checkpoint; choose a new directory")
    meta = model_description(variables, geometry, **extra)
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write to {path}")
    tree = {col: jax.device_get(dict(variables[col])) for col in COLLECTIONS}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / VARIABLES_DIR, tree)
    checkpointer.wait_until_finished()
    write_description(path, tree, meta)
    return path


# --------------------------------------------------------------------------- reading


def _not_a_checkpoint(path: Path) -> str:
    """Why ``path`` (a directory without a description) is no checkpoint, with a hint."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError as err:
        return f"{path} is not a readable epam-jax checkpoint ({err.strerror or err})"
    if path.name == VARIABLES_DIR and (path.parent / META_FILE).is_file():
        hint = f"; pass the checkpoint directory {path.parent}"
    elif (path / "model" / META_FILE).is_file():
        hint = f"; it looks like a training workdir: its exported model is {path / 'model'}"
    elif "_METADATA" in names or "_CHECKPOINT_METADATA" in names:
        hint = ("; it looks like a bare orbax checkpoint (an epam-jax checkpoint holds one in "
                f"{VARIABLES_DIR}/ beside {META_FILE})")
    else:
        hint = ""
    found = (f"{len(names)} other entries ({', '.join(names[:4])}"
             f"{', ...' if len(names) > 4 else ''})" if names else "an empty directory")
    return (f"{path} is not an epam-jax checkpoint: expected {META_FILE} and {VARIABLES_DIR}/ "
            f"(written by epam_jax.checkpoints.save_variables), found {found}{hint}")


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a checkpoint directory (FileNotFoundError for a directory
    that is none, ValueError for a damaged description)."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        if (path / VARIABLES_DIR).is_dir():
            raise FileNotFoundError(
                f"{path} is not a complete epam-jax checkpoint: it has {VARIABLES_DIR}/ but "
                f"no {META_FILE}; it may be an interrupted write")
        raise FileNotFoundError(_not_a_checkpoint(path))
    data = meta_file.read_bytes()
    if not data.strip():
        raise ValueError(f"{meta_file} is empty ({len(data)} bytes): the checkpoint's "
                         "description is damaged")
    try:
        meta = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{meta_file} is not JSON text (not UTF-8): the checkpoint's "
                         "description is damaged") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_file} is not valid JSON ({err.msg} at line {err.lineno} "
                         f"column {err.colno}): the checkpoint's description is damaged"
                         ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, found a JSON "
                         f"{type(meta).__name__}")
    if not isinstance(meta.get("model"), str):
        raise ValueError(f"{meta_file}: expected a 'model' entry naming the model, found "
                         f"{meta.get('model')!r}")
    return meta


def _unraisable_filter(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        """Drop 'Event loop is closed' from tensorstore operations that finish after the
        orbax event loop that awaited them ended because another one failed."""
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            tb = unraisable.exc_traceback
            while tb is not None:
                if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
                    return
                tb = tb.tb_next
        previous(unraisable)

    hook._epam_closed_loop = True  # type: ignore[attr-defined]
    return hook


def ignore_closed_loop_callbacks() -> None:
    """Install (once) a ``sys.unraisablehook`` filter for the late tensorstore callbacks of
    a failed orbax save or restore: orbax's ``asyncio.run`` closes its loop as soon as one
    array fails, and the reads or writes still in flight then report, each with a
    traceback, that the loop is closed. Nothing is lost by dropping them."""
    if not getattr(sys.unraisablehook, "_epam_closed_loop", False):
        sys.unraisablehook = _unraisable_filter(sys.unraisablehook)


_ARRAY_NAME = re.compile(r'(?:Error reading|Metadata at) "([^"]+)"')
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


def _restore_problem(err: BaseException, variables_dir: Path) -> str:
    """One line for an orbax/tensorstore restore error: the array it names (as a
    '/'-joined tree path), the data file and the reason, else the error's first line."""
    text = str(err).split(" [tensorstore_spec=")[0].strip()
    first = text.splitlines()[0] if text else ""
    found = _ARRAY_NAME.search(first)
    if found is None:
        return f"cannot read {VARIABLES_DIR}/ ({type(err).__name__}: {first[:300]})"
    name = re.sub(r"/(\.zarray|\.zattrs|zarr\.json|[0-9.]+)$", "", found.group(1))
    files = [f for f in _LOCAL_FILE.findall(first) if not f.endswith("/")]
    reason = first.rsplit('": ', 1)[-1].split(";")[0].strip()
    if reason.endswith("does not exist"):
        index = variables_dir / "manifest.ocdbt"
        reason = ("its data is not in the checkpoint's index" if index.is_file()
                  else f"the index of the arrays, {VARIABLES_DIR}/{index.name}, is missing")
    where = f" in {files[-1]}" if files else ""
    return (f"array {name.replace('.', '/')} cannot be read{where} ({reason}): a data file "
            f"under {VARIABLES_DIR}/ is missing, truncated or corrupt")


def _restore(path: Path) -> dict:
    """orbax's restore of ``path/variables``, any failure as one ValueError line."""
    ignore_closed_loop_callbacks()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(path / VARIABLES_DIR)
    except Exception as err:  # orbax and tensorstore raise many types for damaged data
        problem = _restore_problem(err, path / VARIABLES_DIR)
        raise ValueError(f"{path} is a damaged epam-jax checkpoint: {problem}") from None
    if not isinstance(restored, Mapping) or any(c not in restored for c in COLLECTIONS):
        keys = sorted(restored) if isinstance(restored, Mapping) else type(restored).__name__
        raise ValueError(f"{path}: expected {VARIABLES_DIR}/ to hold {list(COLLECTIONS)}, "
                         f"found {keys}")
    return {col: dict(restored[col]) for col in COLLECTIONS}


def _verify_checksums(path: Path, meta: Mapping[str, Any], variables: Mapping) -> None:
    """Compare the arrays with ``checksums.json`` (when the description says it exists)."""
    if meta.get("checksums") is None:
        return  # written before checksums were recorded
    file = path / CHECKSUM_FILE
    try:
        recorded = json.loads(file.read_text())["arrays"]
        if not isinstance(recorded, dict):
            raise TypeError(type(recorded).__name__)
    except FileNotFoundError:
        raise ValueError(f"{path} is a damaged epam-jax checkpoint: its {CHECKSUM_FILE} is "
                         "missing") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is a damaged epam-jax checkpoint: {file} is not a "
                         f"checksum list ({type(err).__name__}: {err})") from None
    got = array_checksums(variables)
    missing = sorted(set(recorded) - set(got))
    unexpected = sorted(set(got) - set(recorded))
    wrong = sorted(k for k in set(recorded) & set(got) if recorded[k] != got[k])
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(f"{path} is a damaged epam-jax checkpoint: array {wrong[0]}{more} "
                         f"does not match the CRC-32 recorded when it was saved: a data file "
                         f"under {VARIABLES_DIR}/ is corrupt")
    if missing or unexpected:
        raise ValueError(f"{path} is a damaged epam-jax checkpoint: {len(missing)} arrays of "
                         f"{CHECKSUM_FILE} missing {missing[:3]}, {len(unexpected)} not in it "
                         f"{unexpected[:3]}")


def load_variables(
    path: str | os.PathLike,
    *,
    expect_model: str | None = None,
    expect_num_classes: int | None = None,
) -> dict:
    """Read variables written by ``save_variables`` (numpy arrays, on the host).

    ``expect_model`` / ``expect_num_classes`` make a mismatch a clear error; a missing or
    damaged array is one ValueError naming the checkpoint and the array.
    """
    path = Path(path).absolute()
    meta = load_meta(path)
    if expect_model is not None and meta["model"] != expect_model:
        raise ValueError(
            f"{path} holds a {meta['model']!r} checkpoint, expected {expect_model!r}"
        )
    if (
        expect_num_classes is not None
        and meta.get("num_classes") is not None
        and meta["num_classes"] != expect_num_classes
    ):
        raise ValueError(
            f"{path} was trained for {meta['num_classes']} classes, expected "
            f"{expect_num_classes}"
        )
    if not (path / VARIABLES_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a complete epam-jax checkpoint: it has "
                                f"{META_FILE} but no {VARIABLES_DIR}/ folder")
    variables = _restore(path)
    _verify_checksums(path, meta, variables)
    return variables


# --------------------------------------------------------------------------- models

MODELS = ("epam", "backbone", "rgb", "pose")
TWO_STREAM_MODELS = ("epam", "backbone")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model, its variables (host numpy) and its checkpoint's description (``meta``:
    ``describe``'s fields, the recorded clip geometry, 'checkpoint': the absolute path)."""

    model: nn.Module
    variables: dict
    meta: dict[str, Any]

    @property
    def has_heads(self) -> bool:
        """Whether the model classifies (EPAM-Net or one stream with its head)."""
        return self.meta["model"] != "backbone"

    def clip_fields(self, **overrides: Any) -> dict[str, Any]:
        """The ClipConfig geometry to run this model with: what its checkpoint records
        (else the paper's), with the given overrides (``clip_fields``)."""
        return clip_fields(self.meta, **overrides)


def build_model(model: str, num_classes: int | None = 60, attention_type: str | None = None,
                **options: Any) -> nn.Module:
    """The module of a kind of checkpoint: ``model`` 'epam' (EPAMNet), 'backbone'
    (EPAMBackbone) or 'rgb'/'pose' (SingleStreamNet), with ``num_classes`` and
    ``attention_type`` (None: the paper's) as a description records them (``describe``);
    ``options`` are further module fields (dtype, remat, tuning, dropout_ratio, ...)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if model != "backbone" and not (isinstance(num_classes, int) and num_classes > 0):
        raise ValueError(f"a {model!r} model needs a positive num_classes, got {num_classes!r}")
    attention = attention_type or ATTENTION_TYPES[0]
    if model == "epam":
        return EPAMNet(num_classes=num_classes, attention_type=attention, **options)
    if model == "backbone":
        return EPAMBackbone(attention_type=attention, **options)
    return SingleStreamNet(stream=model, num_classes=num_classes, **options)


@functools.lru_cache(maxsize=8)
def expected_shapes(model: nn.Module) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{collection: {'a/b/c': shape}}`` of the variables ``model`` builds (traced once
    per model, nothing computed)."""
    shapes = variable_shapes(model)
    return {col: {path: tuple(leaf.shape) for path, leaf in _leaves(shapes.get(col, {}))}
            for col in COLLECTIONS}


def check_variables(model: nn.Module, variables: Mapping, source: Any = "variables") -> None:
    """Raise a ValueError unless ``variables`` holds exactly the arrays ``model`` builds,
    each of its shape: counts and the first few of what is missing, unexpected or
    misshapen, named by collection and '/'-joined path."""
    want = {f"{col}/{p}": s for col, tree in expected_shapes(model).items()
            for p, s in tree.items()}
    got = {f"{col}/{p}": tuple(np.shape(v)) for col in COLLECTIONS
           for p, v in _leaves(variables.get(col, {}))}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    misshapen = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if misshapen:
            parts.append(f"{len(misshapen)} misshapen (" + ", ".join(
                f"{k}: {got[k]} for {want[k]}" for k in misshapen[:3]) + ")")
        raise ValueError(f"{source} does not fit {type(model).__name__}: {'; '.join(parts)}")


def _converters() -> Any:
    """The ``converters`` package, which reads PyTorch files (imported on first use, so
    that epam_jax needs torch only for them)."""
    try:
        import torch  # noqa: F401
    except ImportError as err:
        raise ImportError("reading a PyTorch checkpoint needs torch: pip install "
                          "'epam-jax[torch]' (or convert it once with python -m converters "
                          "where torch is installed)") from err
    import converters

    return converters


def _torch_variables(path: Path, models: Sequence[str], num_classes: int | None,
                     attention_type: str | None) -> dict:
    """Variables of the first of ``models`` the PyTorch file at ``path`` converts to."""
    conv = _converters()
    state_dict = conv.read_torch_checkpoint(path)  # one clear line if unreadable
    errors = []
    for kind in models:
        try:
            keyed, _ = conv.normalize_keys(state_dict, kind)
            return conv.torch_to_flax(keyed, kind, num_classes=num_classes,
                                      attention_type=attention_type)
        except conv.ConversionError as err:
            errors.append(f"as {kind!r}: {err}")
    kinds = ("a two-stream" if tuple(models) == TWO_STREAM_MODELS
             else "a " + " or ".join(map(repr, models)))
    raise ValueError(f"{path} is not {kinds} EPAM-Net checkpoint (tried {'; '.join(errors)})")


def _refuse_model(path: Path, kind: Any, models: Sequence[str]) -> None:
    if kind in models:
        return
    if tuple(models) == TWO_STREAM_MODELS:
        raise ValueError(
            f"{path}: expected a two-stream EPAM-Net checkpoint (model 'epam' or 'backbone'), "
            f"got a {kind!r} checkpoint; single-stream checkpoints cannot compute the "
            "attention (combine two with epam_jax.checkpoints.from_single_streams)")
    raise ValueError(f"{path} holds a {kind!r} checkpoint, expected "
                     f"{' or '.join(map(repr, models))}")


def load_model(
    path: str | os.PathLike,
    *,
    models: Sequence[str] = TWO_STREAM_MODELS,
    num_classes: int | None = None,
    attention_type: str | None = None,
) -> LoadedModel:
    """The model a checkpoint holds, its variables and description.

    ``path``: an epam-jax checkpoint directory (``save_variables``) or a PyTorch file of
    the original (any container it wrote; read with ``weights_only=True``). ``models``:
    the kinds accepted (default the two-stream ones); ``num_classes`` /
    ``attention_type``: what the caller expects. Anything else is one ValueError saying
    what was found.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file():
        if path.name == META_FILE:
            raise ValueError(f"{path} is the description of an epam-jax checkpoint; pass the "
                             f"directory holding it, {path.parent}")
        variables = _torch_variables(path, models, num_classes, attention_type)
        meta = describe(variables)
    else:
        meta = load_meta(path)
        _refuse_model(path, meta["model"], models)  # before reading the weights
        recorded_geometry(meta, path)
        variables = load_variables(path)
        found = describe(variables)
        if found["model"] != meta["model"]:
            raise ValueError(f"{path}: its description says {meta['model']!r} but it holds "
                             f"{found['model']!r} variables")
        meta = meta | found
    if num_classes is not None and meta.get("num_classes") not in (None, num_classes):
        raise ValueError(f"{path} was trained for {meta['num_classes']} classes, expected "
                         f"{num_classes}")
    if attention_type is not None and meta.get("attention_type") not in (None, attention_type):
        raise ValueError(f"{path} holds {meta['attention_type']!r} attention, expected "
                         f"{attention_type!r}")
    model = build_model(meta["model"], meta.get("num_classes"), meta.get("attention_type"))
    check_variables(model, variables, path)
    return LoadedModel(model, variables, dict(meta, checkpoint=os.fspath(path.absolute())))


def load(path: str | os.PathLike, **expect: Any) -> tuple[nn.Module, dict]:
    """``(model, variables)`` of an epam-jax checkpoint directory or a PyTorch file
    (``load_model``, whose keywords it takes); ``model.apply(variables, ...)`` runs it."""
    loaded = load_model(path, **expect)
    return loaded.model, loaded.variables


def from_single_streams(
    rgb: str | os.PathLike | None,
    pose: str | os.PathLike | None,
    *,
    model: str = "backbone",
    num_classes: int | None = None,
    attention_type: str | None = None,
    rng: jax.Array | None = None,
) -> dict:
    """Two-stream variables from two single-stream checkpoints (the original's
    ``rgb_pretrained`` / ``pose_pretrained``: epam-jax directories or PyTorch files).

    Each stream (and for ``model='epam'`` its head) comes from its checkpoint; what none
    provides (always the attention; a stream given as None) is initialised from ``rng`` as
    the original initialises it.
    """
    attention_type = attention_type or ATTENTION_TYPES[0]
    if model not in TWO_STREAM_MODELS:
        raise ValueError(f"model must be one of {TWO_STREAM_MODELS}, got {model!r}")
    if attention_type not in ATTENTION_TYPES:
        raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got "
                         f"{attention_type!r}")
    rng = jax.random.key(0) if rng is None else rng
    keys = dict(zip(("rgb", "pose", "attention"), jax.random.split(rng, 3), strict=True))
    parts = {stream: load_model(p, models=(stream,)).variables
             for stream, p in (("rgb", rgb), ("pose", pose)) if p is not None}
    classes = {describe(v)["num_classes"] for v in parts.values()}
    if model == "epam" and num_classes is not None:
        classes.add(num_classes)
    if model == "epam" and len(classes) > 1:
        raise ValueError(f"the checkpoints' heads disagree on the number of classes: "
                         f"{sorted(classes)}")
    num_classes = num_classes or (classes.pop() if classes else 60)
    for stream in ("rgb", "pose"):
        if stream not in parts:
            net = build_model(stream, num_classes)
            parts[stream] = init_variables(net, keys[stream])
    attention = make_attention(attention_type, dtype=np.float32, bn_axis_name=None)
    pose_features = np.zeros((1, 16, 7, 7, X3DTemporalShiftPose().head_channels), np.float32)
    fresh = jax.jit(attention.init)(keys["attention"], pose_features)
    parts["attention"] = {col: {"attention_module": tree} for col, tree in fresh.items()}
    variables: dict[str, dict] = {col: {} for col in COLLECTIONS}
    for part in parts.values():
        for col in COLLECTIONS:
            for name, tree in part.get(col, {}).items():
                if not (model == "backbone" and name.endswith("_cls_head")):
                    variables[col][name] = jax.device_get(tree)
    two_stream = build_model(model, num_classes, attention_type)
    check_variables(two_stream, variables, "the combined single-stream checkpoints")
    return variables
