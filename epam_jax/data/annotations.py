"""PoseC3D annotation files: safe loading, validation and writing.

A PoseC3D annotation file is a pickle holding either a list of per-sample dicts or
``{'split': {name: [frame_dir, ...]}, 'annotations': [...]}``. Pickles can run
arbitrary code when loaded, so they are read through an unpickler that resolves only
the handful of globals numpy arrays and scalars need; anything else is refused before
it can be called. A file that is empty, cut short, not a pickle, of another structure,
or holds keypoints of a wrong shape or non-finite values raises one ValueError line
naming the file and what is wrong. NaN keypoint coordinates are allowed: they mark
missing joints (the pipeline maps them to 0).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NUM_JOINTS = 17
REQUIRED_KEYS = ("frame_dir", "label", "img_shape", "total_frames", "keypoint")


class UnsafePickleError(ValueError):
    """Raised when an annotation pickle references something other than plain data."""


def _reconstruct_array(cls: Any, *args: Any) -> np.ndarray:
    # numpy's own reconstructor, restricted to the plain ndarray class.
    if cls is not np.ndarray:
        raise UnsafePickleError(f"annotation pickle tried to build an array of type {cls!r}")
    return np.ndarray.__new__(np.ndarray, *args)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("annotation pickle holds an object array")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order=order)


def _scalar(dtype: np.dtype, data: bytes | None = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("annotation pickle holds an object scalar")
    if not isinstance(data, bytes):
        raise UnsafePickleError("annotation pickle holds a malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"annotation pickle used _codecs.encode with {encoding!r}")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/scalar reconstructors and builtin containers."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load annotation pickle: it references {module}.{name}; only numpy "
                "arrays, numpy scalars and builtin containers are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load annotation pickle with persistent ids")


_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _check_plain(obj: Any, depth: int = 0) -> None:
    """Refuse object arrays or odd types that slipped through reconstruction."""
    if depth > 64:
        raise UnsafePickleError("annotation pickle is nested too deeply")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("annotation pickle holds an object array")
    elif isinstance(obj, (np.generic, np.dtype, *_PLAIN)):
        return
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            _check_plain(key, depth + 1)
            _check_plain(value, depth + 1)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            _check_plain(value, depth + 1)
    else:
        raise UnsafePickleError(f"annotation pickle holds an object of type {type(obj).__name__}")


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` admitting only numpy arrays, numpy scalars and builtin containers."""
    if not data:
        raise ValueError("annotation pickle is empty")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # damaged bytes fail in many ways: AttributeError, MemoryError...
        raise ValueError(f"annotation pickle is truncated or corrupt ({err!r})") from err
    _check_plain(obj)
    return obj


def _as_int(value: Any, what: str, where: str) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        if arr.ndim == 0 and np.issubdtype(arr.dtype, np.floating) and float(arr).is_integer():
            return int(arr)
        raise ValueError(f"{where}: expected an integer {what}, got {value!r}")
    return int(arr)


def _as_shape(value: Any, what: str, where: str) -> tuple[int, int]:
    if not isinstance(value, Sequence | np.ndarray) or len(value) != 2:
        raise ValueError(f"{where}: expected {what} as (height, width), got {value!r}")
    h, w = (_as_int(v, what, where) for v in value)
    if h <= 0 or w <= 0:
        raise ValueError(f"{where}: expected a positive {what}, got {(h, w)}")
    return h, w


def validate_annotation(
    ann: Mapping[str, Any], num_classes: int | None = None, index: int | None = None
) -> dict[str, Any]:
    """Check one PoseC3D sample dict and return a normalised copy.

    Keypoints become float32 (M, T, 17, 2) and scores float32 (M, T, 17) (ones when the
    file has none, as the original pipeline assumes); shapes become int tuples.
    """
    where = "annotation" if index is None else f"annotation {index}"
    if not isinstance(ann, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(ann).__name__}")
    if isinstance(ann.get("frame_dir"), str):
        where = f"{where} ({ann['frame_dir']!r})"
    missing = [k for k in REQUIRED_KEYS if k not in ann]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}; expected {REQUIRED_KEYS}")
    frame_dir = ann["frame_dir"]
    if not isinstance(frame_dir, str) or not frame_dir:
        raise ValueError(f"{where}: expected 'frame_dir' to be a non-empty str, got {frame_dir!r}")
    out = dict(ann)
    label = _as_int(ann["label"], "'label'", where)
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = "" if num_classes is None else f" < num_classes={num_classes}"
        raise ValueError(f"{where}: expected 0 <= label{bound}, got {label}")
    out["label"] = label
    out["img_shape"] = _as_shape(ann["img_shape"], "'img_shape'", where)
    out["original_shape"] = _as_shape(
        ann.get("original_shape", out["img_shape"]), "'original_shape'", where
    )
    total = _as_int(ann["total_frames"], "'total_frames'", where)
    if total <= 0:
        raise ValueError(f"{where}: expected total_frames > 0, got {total}")
    out["total_frames"] = total
    kp = _real_array(ann["keypoint"], "'keypoint'", where)
    if kp.ndim != 4 or kp.shape[1] != total or kp.shape[2] != NUM_JOINTS or kp.shape[3] != 2:
        raise ValueError(
            f"{where}: expected 'keypoint' of shape (M, total_frames={total}, {NUM_JOINTS}, 2), "
            f"got {kp.shape}"
        )
    kp = kp.astype(np.float32, copy=False)
    if np.isinf(kp).any():  # NaN is a missing joint; inf (or overflowing float32) is not
        raise ValueError(f"{where}: expected finite 'keypoint' coordinates (NaN for a missing "
                         f"joint), got {int(np.isinf(kp).sum())} infinite")
    out["keypoint"] = kp
    score = ann.get("keypoint_score")
    if score is None:
        score = np.ones(kp.shape[:3], np.float32)
    if not isinstance(score, np.ndarray) or score.shape != kp.shape[:3]:
        got = getattr(score, "shape", type(score).__name__)
        raise ValueError(f"{where}: expected 'keypoint_score' of shape {kp.shape[:3]}, got {got}")
    score = _real_array(score, "'keypoint_score'", where).astype(np.float32, copy=False)
    if not np.isfinite(score).all():
        raise ValueError(f"{where}: expected finite 'keypoint_score' values, got "
                         f"{int((~np.isfinite(score)).sum())} NaN or infinite")
    out["keypoint_score"] = score
    return out


def _real_array(value: Any, what: str, where: str) -> np.ndarray:
    """``value`` if it is a numpy array of integers or real floats, else ValueError."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{where}: expected {what} to be a numeric numpy array, got "
                         f"{type(value).__name__}")
    if value.dtype == np.bool_ or not (np.issubdtype(value.dtype, np.integer)
                                       or np.issubdtype(value.dtype, np.floating)):
        raise ValueError(f"{where}: expected {what} to be a numeric numpy array, got dtype "
                         f"{value.dtype}")
    return value


def parse_annotations(
    obj: Any, split: str | None = None, num_classes: int | None = None
) -> list[dict[str, Any]]:
    """Validate an unpickled annotation object and optionally keep one split."""
    split_map = None
    if isinstance(obj, Mapping):
        if "annotations" not in obj:
            raise ValueError(
                "expected a list of sample dicts or a dict with keys 'split' and 'annotations', "
                f"got a dict with keys {sorted(map(str, obj))}"
            )
        split_map = obj.get("split")
        obj = obj["annotations"]
    if not isinstance(obj, list | tuple):
        raise ValueError(f"expected a list of sample dicts, got {type(obj).__name__}")
    anns = [validate_annotation(a, num_classes, i) for i, a in enumerate(obj)]
    if split is None:
        return anns
    if not isinstance(split_map, Mapping):
        raise ValueError(f"split {split!r} requested but the file has no 'split' table")
    if split not in split_map:
        raise ValueError(f"unknown split {split!r}; the file has {sorted(split_map)}")
    wanted = set(split_map[split])
    return [a for a in anns if a["frame_dir"] in wanted]


def load_annotations(
    path: str | os.PathLike[str], split: str | None = None, num_classes: int | None = None
) -> list[dict[str, Any]]:
    """Read a PoseC3D pickle safely and return its validated sample dicts.

    ``split`` keeps only the samples whose ``frame_dir`` the file's split table lists
    under that name; ``num_classes`` bounds the labels.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ValueError(f"annotation file {os.fspath(path)!r} is empty")
    try:
        return parse_annotations(safe_loads(data), split=split, num_classes=num_classes)
    except ValueError as err:
        raise type(err)(f"{os.fspath(path)}: {err}") from err


def save_annotations(
    path: str | os.PathLike[str],
    annotations: Sequence[Mapping[str, Any]],
    split: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Write annotations in the PoseC3D pickle format (with a split table when given)."""
    anns = [dict(a) for a in annotations]
    obj: Any = anns if split is None else {
        "split": {k: list(v) for k, v in split.items()},
        "annotations": anns,
    }
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
