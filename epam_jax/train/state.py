"""Train state, models and initial variables for the three training modes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from epam_jax.checkpoints import build_model, check_variables, from_single_streams, load_model
from epam_jax.models import init_variables, parse_remat
from epam_jax.tuning import Tuning

MODES = ("epam", "rgb", "pose")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainState(train_state.TrainState):
    """flax TrainState plus BatchNorm statistics and the base dropout key (uint32[2])."""

    batch_stats: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


@flax.struct.dataclass
class EvalState:
    """What ``eval_step`` needs of a train state: the model's apply and its variables."""

    apply_fn: Any = flax.struct.field(pytree_node=False)
    params: Any
    batch_stats: Any

    @classmethod
    def create(cls, model: nn.Module, variables: Mapping) -> EvalState:
        return cls(apply_fn=model.apply, params=dict(variables["params"]),
                   batch_stats=dict(variables["batch_stats"]))

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def training_model(
    mode: str,
    num_classes: int,
    *,
    dropout_ratio: float = 0.5,
    attention_type: str = "CBAM_spatial_efficient_temporal",
    freeze_rgb: bool = False,
    freeze_pose: bool = False,
    remat: bool | str | tuple[str, ...] = False,
    dtype: str = "float32",
    bn_axis_name: str | None = None,
    tuning: Tuning | None = None,
) -> nn.Module:
    """EPAMNet for mode 'epam', else the single stream ``mode`` with its head, with the
    training options (``checkpoints.build_model`` builds it).

    ``tuning``: the models' formulation (default ``Tuning()``, for CPU).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    options = dict(dropout_ratio=dropout_ratio, remat=parse_remat(remat),
                   bn_axis_name=bn_axis_name, dtype=DTYPES[dtype], tuning=tuning or Tuning())
    if mode == "epam":
        options |= dict(freeze_rgb=freeze_rgb, freeze_pose=freeze_pose)
    elif freeze_rgb or freeze_pose:
        raise ValueError(f"freeze_rgb/freeze_pose apply to mode 'epam', not {mode!r}")
    return build_model(mode, num_classes, attention_type, **options)


def frozen_modules(model: nn.Module) -> tuple[str, ...]:
    """Top-level modules the optimiser must leave alone."""
    frozen = []
    if getattr(model, "freeze_rgb", False):
        frozen.append("rgb_backbone")
    if getattr(model, "freeze_pose", False):
        frozen.append("pose_backbone")
    return tuple(frozen)


def initial_variables(
    model: nn.Module,
    mode: str,
    rng: jax.Array,
    *,
    checkpoint: str = "",
    rgb_checkpoint: str = "",
    pose_checkpoint: str = "",
) -> dict:
    """Variables to start from: fresh, a whole-model checkpoint, or two single streams.

    Paths are epam-jax checkpoint directories (``save_variables``) or PyTorch files.
    """
    num_classes = model.num_classes
    if checkpoint and (rgb_checkpoint or pose_checkpoint):
        raise ValueError("give init.checkpoint or init.rgb/init.pose, not both")
    for path in (checkpoint, rgb_checkpoint, pose_checkpoint):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"initial checkpoint {path!r} does not exist")
    if checkpoint:
        variables = load_model(checkpoint, models=(mode,), num_classes=num_classes,
                               attention_type=getattr(model, "attention_type", None)).variables
    elif rgb_checkpoint or pose_checkpoint:
        if mode != "epam":
            raise ValueError(f"init.rgb/init.pose start mode 'epam', not {mode!r}; "
                             f"use init.checkpoint")
        variables = from_single_streams(
            rgb_checkpoint or None, pose_checkpoint or None, model="epam",
            num_classes=num_classes, attention_type=model.attention_type, rng=rng)
    else:
        return jax.device_get(init_variables(model, rng))
    check_variables(model, variables, f"initial checkpoint {checkpoint or 'init.rgb/init.pose'}")
    return variables


def create_train_state(
    model: nn.Module, variables: Mapping, tx: optax.GradientTransformation, seed: int
) -> TrainState:
    """A TrainState at step 0 from host variables."""
    params = jax.tree_util.tree_map(jnp.asarray, dict(variables["params"]))
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        batch_stats=jax.tree_util.tree_map(jnp.asarray, dict(variables["batch_stats"])),
        tx=tx,
        rng=jax.random.PRNGKey(seed),
    ).replace(step=jnp.zeros((), jnp.int32))  # as restored: one compiled step for both
