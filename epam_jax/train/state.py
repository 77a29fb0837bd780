"""Train state, models and initial variables for the three training modes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from epam_jax.models import EPAMNet, SingleStreamNet, init_variables, parse_remat
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


def build_model(
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
    """EPAMNet for mode 'epam', else the single stream ``mode`` with its head.

    ``tuning``: the models' formulation (default ``Tuning()``, for CPU).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    common = dict(num_classes=num_classes, dropout_ratio=dropout_ratio, remat=parse_remat(remat),
                  bn_axis_name=bn_axis_name, dtype=DTYPES[dtype], tuning=tuning or Tuning())
    if mode == "epam":
        return EPAMNet(attention_type=attention_type, freeze_rgb=freeze_rgb,
                       freeze_pose=freeze_pose, **common)
    if freeze_rgb or freeze_pose:
        raise ValueError(f"freeze_rgb/freeze_pose apply to mode 'epam', not {mode!r}")
    return SingleStreamNet(stream=mode, **common)


def frozen_modules(model: nn.Module) -> tuple[str, ...]:
    """Top-level modules the optimiser must leave alone."""
    frozen = []
    if getattr(model, "freeze_rgb", False):
        frozen.append("rgb_backbone")
    if getattr(model, "freeze_pose", False):
        frozen.append("pose_backbone")
    return tuple(frozen)


def _is_pytorch_file(path: str) -> bool:
    return os.path.isfile(path)


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
        if _is_pytorch_file(checkpoint):
            import converters

            variables = converters.load_torch_checkpoint(
                checkpoint, mode, num_classes=num_classes,
                attention_type=getattr(model, "attention_type", None))
        else:
            from epam_jax.checkpoints import load_variables

            variables = load_variables(checkpoint, expect_model=mode,
                                       expect_num_classes=num_classes)
    elif rgb_checkpoint or pose_checkpoint:
        if mode != "epam":
            raise ValueError(f"init.rgb/init.pose start mode 'epam', not {mode!r}; "
                             f"use init.checkpoint")
        import converters

        variables = converters.from_single_stream_checkpoints(
            rgb_checkpoint or None, pose_checkpoint or None, model="epam",
            num_classes=num_classes, attention_type=model.attention_type, rng=rng)
    else:
        return jax.device_get(init_variables(model, rng))
    _check_like(variables, model)
    return variables


def _check_like(variables: Mapping, model: nn.Module) -> None:
    """Raise unless ``variables`` has exactly the tree and shapes ``model`` builds."""
    from epam_jax.models import variable_shapes

    expected = variable_shapes(model)
    want = {jax.tree_util.keystr(k): v.shape
            for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(k): np.shape(v)
           for k, v in jax.tree_util.tree_leaves_with_path(
               {c: variables[c] for c in ("params", "batch_stats")})}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:5]
        raise ValueError(f"initial checkpoint does not fit the model; first differences: {diff}")


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
