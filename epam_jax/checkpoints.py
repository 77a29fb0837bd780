"""Model variables on disk: an orbax checkpoint plus a small JSON description.

A directory written by ``save_variables`` holds ``variables/`` (orbax, the
``{'params', 'batch_stats'}`` tree) and ``epam_model.json`` (which model, how
many classes, which attention), so a loader can refuse a checkpoint of
another model or class count with a clear message instead of a shape error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "epam_model.json"
VARIABLES_DIR = "variables"


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


def save_variables(path: str | os.PathLike, variables: Mapping, **extra: Any) -> Path:
    """Write ``variables`` to the directory ``path`` (created; must not hold a checkpoint)."""
    path = Path(path).absolute()
    if (path / VARIABLES_DIR).exists():
        raise FileExistsError(f"{path} already holds a checkpoint; choose a new directory")
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"cannot write to {path}")
    meta = describe(variables) | extra
    tree = {col: jax.device_get(dict(variables[col])) for col in ("params", "batch_stats")}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / VARIABLES_DIR, tree)
    checkpointer.wait_until_finished()
    # The description goes last: a directory without it is an unfinished write.
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path / META_FILE)
    return path


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a checkpoint directory."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete epam-jax checkpoint (no {META_FILE}); it may be an "
            f"interrupted write"
        )
    return json.loads(meta_file.read_text())


def load_variables(
    path: str | os.PathLike,
    *,
    expect_model: str | None = None,
    expect_num_classes: int | None = None,
) -> dict:
    """Read variables written by ``save_variables`` (numpy arrays, on the host).

    ``expect_model`` / ``expect_num_classes`` make a mismatch a clear error.
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
    restored = ocp.StandardCheckpointer().restore(path / VARIABLES_DIR)
    return {col: dict(restored[col]) for col in ("params", "batch_stats")}
