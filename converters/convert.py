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
from epam_jax.models import EPAMBackbone, EPAMNet, SingleStreamNet, variable_shapes
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


def build_model(model: str, num_classes: int = 60, attention_type: str = CBAM, **kw):
    """The Flax module whose variables ``model``'s checkpoints hold."""
    _check_choice("model", model, MODELS)
    if model == "epam":
        return EPAMNet(num_classes=num_classes, attention_type=attention_type, **kw)
    if model == "backbone":
        return EPAMBackbone(num_classes=num_classes, attention_type=attention_type, **kw)
    return SingleStreamNet(stream=model, num_classes=num_classes, **kw)


def _check_choice(what: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def _checked_table(
    model: str, num_classes: int, attention_type: str
) -> tuple[list[Entry], dict[tuple[str, ...], tuple[int, ...]]]:
    """The key table and the Flax shapes, verified to cover exactly the same variables."""
    table = key_table(model, attention_type)
    shapes = variable_shapes(build_model(model, num_classes, attention_type))
    expected = {
        (col,) + path: tuple(v.shape)
        for col in ("params", "batch_stats")
        for path, v in traverse_util.flatten_dict(dict(shapes.get(col, {}))).items()
    }
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
            "converters.from_single_stream_checkpoints"
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


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw state dict of a ``.pth`` file, read with ``weights_only=True``.

    A file holding any pickled object other than tensors and plain containers
    is refused; nothing in it is executed.
    """
    import pickle

    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln), first[0] if first
                      else "")
        raise ConversionError(
            f"refusing to load {path!r}: it holds pickled objects other than tensors and "
            f"plain containers, which could run code when loaded ({detail.strip()})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise ConversionError(f"cannot read {path!r} as a PyTorch checkpoint: {err}") from None
    return unwrap_state_dict(obj)


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


def from_single_stream_checkpoints(
    rgb_pretrained: str | os.PathLike | None,
    pose_pretrained: str | os.PathLike | None,
    *,
    model: str = "backbone",
    num_classes: int | None = None,
    attention_type: str = CBAM,
    rng: jax.Array | None = None,
) -> dict:
    """Two-stream variables from the two single-stream pretrained checkpoints.

    The seed's ``rgb_pretrained`` / ``pose_pretrained``: each stream (and for
    ``model='epam'`` its head) comes from its checkpoint, a PyTorch ``.pth`` or
    an epam-jax checkpoint directory; what no checkpoint provides (always the
    attention; a stream given as None) is initialised from ``rng`` as the
    original initialises it. Only the missing components are initialised.
    """
    from epam_jax.checkpoints import load_variables
    from epam_jax.models import dummy_inputs, make_attention

    _check_choice("model", model, ("backbone", "epam"))
    _check_choice("attention_type", attention_type, ATTENTION_TYPES)
    rng = jax.random.key(0) if rng is None else rng
    rng_rgb, rng_pose, rng_att = jax.random.split(rng, 3)
    parts = {}
    for stream, path in (("rgb", rgb_pretrained), ("pose", pose_pretrained)):
        if path is not None and os.path.isdir(path):
            parts[stream] = load_variables(path, expect_model=stream)
        elif path is not None:
            parts[stream] = load_torch_checkpoint(path, stream, num_classes=num_classes)
    classes = {int(np.shape(v["params"][f"{s}_cls_head"]["fc_cls"]["bias"])[0])
               for s, v in parts.items()}
    if model == "epam":
        if num_classes is not None:
            classes.add(num_classes)
        if len(classes) > 1:
            raise ConversionError(
                f"the checkpoints' heads disagree on the number of classes: {sorted(classes)}"
            )
    num_classes = num_classes or (classes.pop() if classes else 60)
    for stream, key in (("rgb", rng_rgb), ("pose", rng_pose)):
        if stream not in parts:
            net = SingleStreamNet(stream=stream, num_classes=num_classes)
            parts[stream] = jax.jit(net.init)(key, *dummy_inputs(net))
    attention = make_attention(attention_type, dtype=np.float32, bn_axis_name=None)
    pose_features = np.zeros((1, 16, 7, 7, X3DTemporalShiftPose().head_channels), np.float32)
    parts["attention"] = {"params": {}, "batch_stats": {}}
    for col, tree in jax.jit(attention.init)(rng_att, pose_features).items():
        parts["attention"][col] = {"attention_module": tree}
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for part in parts.values():
        for col in variables:
            for name, tree in part.get(col, {}).items():
                if not (model == "backbone" and name.endswith("_cls_head")):
                    variables[col][name] = jax.device_get(tree)
    return variables


def count_parameters(variables: Mapping) -> dict[str, int]:
    """Trainable parameter count per top-level component, plus 'total'."""
    counts = {
        name: int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))
        for name, tree in variables["params"].items()
    }
    counts["total"] = sum(counts.values())
    return counts

