"""PyTorch <-> Flax conversion of EPAM-Net variables, by an explicit key table.

The table lists, for every tensor of the original state dict, the Flax
collection and path it lands in and how its axes move. It is built from the
architecture (stages, blocks, SE placement) and checked against
``jax.eval_shape`` of the Flax model's ``init``: anything missing, unexpected
or misshapen raises one ``ConversionError`` listing all of it.

Only ``torch`` needs numpy arrays or tensors here; ``torch`` itself is imported
only to read files and to build tensors in ``flax_to_torch``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from epam_jax.attention import ATTENTION_TYPES
from epam_jax.checkpoints import build_model, expected_shapes
from epam_jax.streams import X3DStream, X3DTemporalShift, X3DTemporalShiftPose

MODELS = ("epam", "backbone", "rgb", "pose")
CBAM, SPATIAL_TEMPORAL = ATTENTION_TYPES


class ConversionError(ValueError):
    """A state dict that does not fit the model, with every problem listed."""


@dataclass(frozen=True)
class Entry:
    """One tensor: torch key -> (collection, flax path), with the axis permutation."""

    torch_key: str
    collection: str
    path: tuple[str, ...]
    perm: tuple[int, ...] | None = None  # torch axes -> flax axes; None: as is


# torch (out, in, kt, kh, kw) -> flax (kt, kh, kw, in, out); Conv1d (out, in, k) -> (k, in, out)
CONV3D = (2, 3, 4, 1, 0)
CONV1D = (2, 1, 0)
LINEAR = (1, 0)


def _conv(tk: str, fp: tuple[str, ...], bias: bool = False) -> list[Entry]:
    out = [Entry(f"{tk}.weight", "params", fp + ("kernel",), CONV3D)]
    if bias:
        out.append(Entry(f"{tk}.bias", "params", fp + ("bias",)))
    return out


def _bn(tk: str, fp: tuple[str, ...]) -> list[Entry]:
    return [
        Entry(f"{tk}.weight", "params", fp + ("scale",)),
        Entry(f"{tk}.bias", "params", fp + ("bias",)),
        Entry(f"{tk}.running_mean", "batch_stats", fp + ("mean",)),
        Entry(f"{tk}.running_var", "batch_stats", fp + ("var",)),
    ]


def _conv_bn(tk: str, fp: tuple[str, ...]) -> list[Entry]:
    return _conv(f"{tk}.conv", fp + ("conv",)) + _bn(f"{tk}.bn", fp + ("bn",))


def _stream_entries(stream: X3DStream, tk: str, fp: tuple[str, ...]) -> list[Entry]:
    entries = _conv_bn(f"{tk}.conv1_s", fp + ("conv1_s",))
    for i, blocks in enumerate(stream.stage_blocks, start=1):
        for j in range(blocks):
            bt, bf = f"{tk}.layer{i}.{j}", fp + (f"layer{i}", str(j))
            for name in ("conv1", "conv2", "conv3"):
                entries += _conv_bn(f"{bt}.{name}", bf + (name,))
            if j % 2 == 0:
                for name in ("fc1", "fc2"):
                    entries += _conv(f"{bt}.se_module.{name}", bf + ("se_module", name), bias=True)
            if j == 0:  # every stage strides by 2, so its first block downsamples
                entries += _conv_bn(f"{bt}.downsample", bf + ("downsample",))
    return entries + _conv_bn(f"{tk}.conv5", fp + ("conv5",))


def _attention_entries(attention_type: str, tk: str, fp: tuple[str, ...]) -> list[Entry]:
    if attention_type == CBAM:
        return (
            _conv(f"{tk}.spatial.conv", fp + ("spatial", "conv"))
            + _bn(f"{tk}.spatial.bn", fp + ("spatial", "bn"))
            + [Entry(f"{tk}.conv_temporal_attention.weight", "params",
                     fp + ("conv_temporal_attention",), CONV1D)]
        )
    return (
        _conv(f"{tk}.conv_ch_compress", fp + ("conv_ch_compress",), bias=True)
        + _conv(f"{tk}.conv_sptial_attention", fp + ("conv_sptial_attention",), bias=True)
        + [Entry(f"{tk}.fc{i}.weight", "params", fp + (f"fc{i}", "kernel"), LINEAR)
           for i in (1, 2)]
    )


def _head_entries(tk: str, fp: tuple[str, ...]) -> list[Entry]:
    return [
        Entry(f"{tk}.fc_cls.weight", "params", fp + ("fc_cls", "kernel"), LINEAR),
        Entry(f"{tk}.fc_cls.bias", "params", fp + ("fc_cls", "bias")),
    ]


_STREAMS = {"rgb": X3DTemporalShift(), "pose": X3DTemporalShiftPose()}


def key_table(model: str, attention_type: str = CBAM) -> list[Entry]:
    """Every tensor of ``model``'s PyTorch state dict (``num_batches_tracked`` aside).

    Torch keys are the original's: the full network's names for 'epam' and
    'backbone'; mmaction's ``backbone.*`` / ``cls_head.*`` for single streams.
    """
    _check_choice("model", model, MODELS)
    _check_choice("attention_type", attention_type, ATTENTION_TYPES)
    if model in ("rgb", "pose"):
        return _stream_entries(_STREAMS[model], "backbone", (f"{model}_backbone",)) + (
            _head_entries("cls_head", (f"{model}_cls_head",))
        )
    entries = []
    for s in ("rgb", "pose"):
        entries += _stream_entries(_STREAMS[s], f"{s}_backbone", (f"{s}_backbone",))
    entries += _attention_entries(attention_type, "attention_module", ("attention_module",))
    if model == "epam":
        for s in ("rgb", "pose"):
            entries += _head_entries(f"{s}_cls_head", (f"{s}_cls_head",))
    return entries


def _check_choice(what: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _checked_table(
    model: str, num_classes: int, attention_type: str
) -> tuple[list[Entry], dict[tuple[str, ...], tuple[int, ...]]]:
    """The key table and the Flax shapes, verified to cover exactly the same variables."""
    table = key_table(model, attention_type)
    flax_model = build_model(model, num_classes, attention_type)
    expected = {(col, *path.split("/")): shape
                for col, tree in expected_shapes(flax_model).items()
                for path, shape in tree.items()}
    table_paths = {(e.collection,) + e.path for e in table}
    if set(expected) != table_paths:  # a bug in this file, not in the user's checkpoint
        raise AssertionError(
            f"key table out of sync with the Flax model: only in model "
            f"{sorted(set(expected) - table_paths)[:5]}, only in table "
            f"{sorted(table_paths - set(expected))[:5]}"
        )
    return table, expected


# ---------------------------------------------------------------------------
# Normalising the containers seen in the wild.

_COMPONENTS = (
    "rgb_backbone", "pose_backbone", "attention_module", "rgb_cls_head", "pose_cls_head",
)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The state dict inside a checkpoint object, ``module.`` prefixes removed.

    Accepts the trainer's ``{'model_state_dict': ...}``, mmaction's
    ``{'meta', 'state_dict'}`` and a plain ``{name: tensor}`` mapping.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}"
        )
    for container in ("model_state_dict", "state_dict"):
        if container in obj and isinstance(obj[container], Mapping):
            obj = obj[container]
            break
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ConversionError(f"state-dict keys must be strings, got {key!r}")
        name = key[len("module."):] if key.startswith("module.") else key
        if name in out:
            raise ConversionError(f"key {name!r} appears both with and without 'module.'")
        out[name] = value
    if not out:
        raise ConversionError("the checkpoint holds no tensors")
    return out


def normalize_keys(state_dict: Mapping[str, Any], model: str) -> tuple[dict[str, Any], list[str]]:
    """Rename to ``model``'s canonical torch keys; drop other EPAM components.

    Returns ``(state_dict, dropped)``: a full EPAM-Net checkpoint can feed the
    'backbone' (heads dropped) or a single stream (the other stream dropped),
    and the trainer's ``rgb_backbone.*`` / ``rgb_cls_head.*`` names of a
    single-stream run become mmaction's ``backbone.*`` / ``cls_head.*``.
    Anything else stays, to be reported as unexpected.
    """
    _check_choice("model", model, MODELS)
    keys = list(state_dict)
    single_stream_style = any(k.startswith(("backbone.", "cls_head.")) for k in keys)
    if model in ("epam", "backbone") and single_stream_style:
        raise ConversionError(
            "this is a single-stream checkpoint (backbone.* / cls_head.* keys); load it "
            "with model='rgb' or model='pose', or build the two-stream variables with "
            "epam_jax.checkpoints.from_single_streams"
        )
    if model == "epam":
        return dict(state_dict), []
    keep = {
        "backbone": ("rgb_backbone", "pose_backbone", "attention_module"),
        "rgb": ("rgb_backbone", "rgb_cls_head"),
        "pose": ("pose_backbone", "pose_cls_head"),
    }[model]
    out, dropped = {}, []
    for key, value in state_dict.items():
        component = key.split(".", 1)[0]
        if component in _COMPONENTS and component not in keep:
            dropped.append(key)
            continue
        if model in ("rgb", "pose") and component in keep:
            key = key.replace(f"{model}_backbone.", "backbone.", 1)
            key = key.replace(f"{model}_cls_head.", "cls_head.", 1)
        if key in out:
            raise ConversionError(f"key {key!r} appears twice after renaming")
        out[key] = value
    return out, dropped


def infer_attention_type(state_dict: Mapping[str, Any]) -> str:
    """Which attention the checkpoint's ``attention_module.*`` keys belong to."""
    if any(k.startswith("attention_module.conv_ch_compress") for k in state_dict):
        return SPATIAL_TEMPORAL
    return CBAM


def infer_num_classes(state_dict: Mapping[str, Any], model: str) -> int | None:
    """Classes of the checkpoint's head(s), None when it has none."""
    heads = {
        "epam": ("rgb_cls_head.fc_cls.weight", "pose_cls_head.fc_cls.weight"),
        "rgb": ("cls_head.fc_cls.weight",),
        "pose": ("cls_head.fc_cls.weight",),
        "backbone": (),
    }[model]
    counts = {k: int(np.shape(state_dict[k])[0]) for k in heads if k in state_dict}
    if len(set(counts.values())) > 1:
        raise ConversionError(f"the heads disagree on the number of classes: {counts}")
    return next(iter(counts.values()), None)


# ---------------------------------------------------------------------------
# The conversions.


def torch_to_flax(
    state_dict: Mapping[str, Any],
    model: str = "epam",
    *,
    num_classes: int | None = None,
    attention_type: str | None = None,
) -> dict:
    """A PyTorch state dict -> Flax ``{'params', 'batch_stats'}`` (numpy float32).

    ``state_dict`` uses ``model``'s canonical keys (see ``normalize_keys``);
    values are tensors or arrays. ``num_classes`` and ``attention_type``
    default to what the checkpoint holds; when given they must agree with it.
    """
    _check_choice("model", model, MODELS)
    found_classes = infer_num_classes(state_dict, model)
    if num_classes is not None and found_classes is not None and num_classes != found_classes:
        raise ConversionError(
            f"num_classes={num_classes} but the checkpoint's classification heads have "
            f"{found_classes} classes"
        )
    num_classes = num_classes or found_classes or 60
    found_attention = infer_attention_type(state_dict)
    if model in ("rgb", "pose"):
        found_attention = CBAM  # single streams have no attention module
    elif attention_type is not None and attention_type != found_attention:
        raise ConversionError(
            f"attention_type={attention_type!r} but the checkpoint holds "
            f"{found_attention!r} attention weights"
        )
    attention_type = attention_type or found_attention

    table, expected = _checked_table(model, num_classes, attention_type)
    by_key = {e.torch_key: e for e in table}
    bn_counters = {
        e.torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"
        for e in table
        if e.torch_key.endswith(".running_mean")
    }
    missing = sorted(k for k in by_key if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in by_key and k not in bn_counters)
    misshapen, flat = [], {}
    for key, entry in by_key.items():
        if key not in state_dict:
            continue
        value = _to_numpy(state_dict[key])
        if entry.perm is not None and value.ndim == len(entry.perm):
            value = value.transpose(entry.perm)
        want = expected[(entry.collection,) + entry.path]
        if value.shape != want:
            torch_shape = tuple(np.shape(state_dict[key]))
            misshapen.append(f"{key}: {torch_shape} (as Flax {value.shape}, expected {want})")
            continue
        # a copy: arrays from torch tensors share their memory, which torch may update
        flat[(entry.collection,) + entry.path] = np.array(value, dtype=np.float32, order="C")
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrongly shaped", misshapen)):
        if items:
            problems.append(f"{len(items)} {title}:\n  " + "\n  ".join(items))
    if problems:
        raise ConversionError(
            f"state dict does not fit model={model!r} (num_classes={num_classes}, "
            f"attention_type={attention_type!r}):\n" + "\n".join(problems)
        )
    return traverse_util.unflatten_dict(flat)


def iter_flax_tensors(variables: Mapping, model: str, attention_type: str | None = None
                      ) -> Iterator[tuple[str, np.ndarray]]:
    """``(torch_key, torch-layout array)`` for every tensor of ``variables``."""
    if attention_type is None:
        params = variables["params"]
        attention = params.get("attention_module", {}) if model in ("epam", "backbone") else {}
        attention_type = SPATIAL_TEMPORAL if "conv_ch_compress" in attention else CBAM
    flat = {
        (col,) + p: v
        for col in ("params", "batch_stats")
        for p, v in traverse_util.flatten_dict(dict(variables.get(col, {}))).items()
    }
    table = key_table(model, attention_type)
    paths = {(e.collection,) + e.path for e in table}
    missing = sorted("/".join(p) for p in paths - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - paths)
    if missing or unexpected:
        raise ConversionError(
            f"variables do not fit model={model!r}: missing {missing[:20]}, "
            f"unexpected {unexpected[:20]}"
        )
    for e in table:
        value = np.asarray(jax.device_get(flat[(e.collection,) + e.path]), dtype=np.float32)
        if e.perm is not None:
            value = value.transpose(np.argsort(e.perm))
        yield e.torch_key, value


def flax_to_torch(variables: Mapping, model: str = "epam", *, num_batches_tracked: int = 0
                  ) -> dict[str, Any]:
    """Flax variables -> the original's state dict (torch tensors), loadable strictly.

    ``num_batches_tracked`` (which the original never reads, its momentum being
    fixed) is set to the given count.
    """
    import torch

    out = {}
    for key, value in iter_flax_tensors(variables, model):
        out[key] = torch.from_numpy(np.ascontiguousarray(value))
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            out[counter] = torch.tensor(num_batches_tracked, dtype=torch.long)
    return out


# ---------------------------------------------------------------------------
# Files.


# The first pickle of a torch.save file from before torch 1.6 (later ones are zip archives).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_PICKLE_TYPES = {
    **dict.fromkeys(("EMPTY_DICT", "DICT"), "dict"),
    **dict.fromkeys(("EMPTY_LIST", "LIST"), "list"),
    **dict.fromkeys(("EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"), "tuple"),
    **dict.fromkeys(("EMPTY_SET", "FROZENSET"), "set"),
    **dict.fromkeys(("BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4"), "int"),
    **dict.fromkeys(("BINFLOAT", "FLOAT"), "float"),
    **dict.fromkeys(("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                     "BINSTRING", "SHORT_BINSTRING"), "str"),
    **dict.fromkeys(("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"), "bytes"),
    **dict.fromkeys(("NEWTRUE", "NEWFALSE"), "bool"),
    "NONE": "None",
}


def _torch_file_kind(path: str) -> str:
    """What the first bytes say: 'zip' (torch.save since 1.6), 'legacy' (torch.save
    before), 'tar' (the oldest torch.save) or 'pickle' (another pickle); anything else,
    and an empty file, is a ConversionError saying what the file is."""
    import pickle

    size = os.path.getsize(path)
    if size == 0:
        raise ConversionError(f"{path!r} is empty (0 bytes), not a PyTorch checkpoint")
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "legacy" if head.startswith(pickle.dumps(_TORCH_LEGACY_MAGIC, 2)) else "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    raise ConversionError(
        f"{path!r} is not a PyTorch checkpoint: not a zip archive or pickle ({size} bytes "
        f"starting {head[:12]!r}; torch.save writes a zip archive)")


def _pickle_contents(data: bytes) -> str:
    """What a pickle holds as far as ``pickletools`` tells (it parses the opcodes and
    runs nothing): the classes and functions it names, else its first object's type."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []  # the strings pushed so far: a STACK_GLOBAL takes the last two
    memo: dict[Any, Any] = {}
    last: Any = None
    first = None
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "STOP":
                break
            if name == "MEMOIZE":
                memo[len(memo)] = last
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = last
                continue
            if name in ("PROTO", "FRAME", "MARK"):
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(arg)
            else:
                first = first or name
                if name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                last = arg if isinstance(arg, str) else None
            if isinstance(last, str):
                strings.append(last)
    except Exception:  # noqa: BLE001 - the bytes read end mid-opcode, or stop being a pickle
        pass
    if names:
        unique = list(dict.fromkeys(names))
        more = f" and {len(unique) - 4} more" if len(unique) > 4 else ""
        return f"holding {', '.join(unique[:4])}{more}"
    return f"of a {_PICKLE_TYPES.get(first or '', 'value of unknown type')}"


def _refusal(err: BaseException) -> str:
    """Why torch's safe loader refused a file, without its advice to load it unsafely."""
    import re

    text = str(err)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return (f"it holds a pickled {found.group(1).rstrip('.')}, not only tensors and plain "
                "containers, and unpickling that could run code")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = ""
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            detail = detail or (lines[i + 1] if i + 1 < len(lines) else "")
            break
    if "weights_only" in detail:
        detail = ""
    return ("it holds pickled data the safe loader does not accept"
            + (f" ({detail})" if detail else "") + ", which could run code when loaded")


def _zip_problem(path: str) -> str | None:
    """Why a zip archive is not a torch.save file, or None when it looks like one."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return ("it is a truncated or damaged zip archive (no central directory; an "
                "incomplete download or copy?)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any(n.endswith("/data.pkl") for n in names):
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (f"it is a zip archive without data.pkl, not one written by torch.save (it "
                f"holds {listed or 'nothing'})")
    return None


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw state dict of a ``.pth`` file, read with ``weights_only=True``.

    A file holding any pickled object other than tensors and plain containers
    is refused; nothing in it is executed. Files that are no checkpoint (empty, not a
    zip archive or pickle, a plain pickle, a damaged archive) get one line saying what
    they are.
    """
    import pickle

    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    kind = _torch_file_kind(path)
    if kind == "pickle":
        with open(path, "rb") as f:
            data = f.read(1 << 20)
        raise ConversionError(
            f"{path!r} is not a PyTorch checkpoint: a plain Python pickle (protocol "
            f"{data[1]}, not written by torch.save) {_pickle_contents(data)}")
    if kind == "zip" and (problem := _zip_problem(path)) is not None:
        raise ConversionError(f"cannot read {path!r} as a PyTorch checkpoint: {problem}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConversionError(f"refusing to load {path!r}: {_refusal(err)}") from None
    except EOFError:
        raise ConversionError(
            f"cannot read {path!r} as a PyTorch checkpoint: it ends early, after "
            f"{os.path.getsize(path)} bytes (truncated?)") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for damaged files
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0]
        raise ConversionError(
            f"cannot read {path!r} as a PyTorch checkpoint: {type(err).__name__}: "
            f"{first[:300]}") from None
    try:
        return unwrap_state_dict(obj)
    except ConversionError as err:
        raise ConversionError(f"{path!r}: {err}") from None


def load_torch_checkpoint(
    path: str | os.PathLike,
    model: str = "epam",
    *,
    num_classes: int | None = None,
    attention_type: str | None = None,
) -> dict:
    """Read any EPAM-Net PyTorch checkpoint into Flax variables for ``model``.

    ``model`` is 'epam' (EPAMNet), 'backbone' (EPAMBackbone), 'rgb' or 'pose'
    (SingleStreamNet). Reads the trainer's DDP checkpoints, mmaction's
    single-stream ones and plain state dicts, with ``weights_only=True``.
    """
    state_dict, _ = normalize_keys(read_torch_checkpoint(path), model)
    return torch_to_flax(
        state_dict, model, num_classes=num_classes, attention_type=attention_type
    )


def count_parameters(variables: Mapping) -> dict[str, int]:
    """Trainable parameter count per top-level component, plus 'total'."""
    counts = {
        name: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
        for name, tree in variables["params"].items()
    }
    counts["total"] = sum(counts.values())
    return counts

