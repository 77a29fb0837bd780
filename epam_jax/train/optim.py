"""The paper's optimiser: SGD with momentum, weight decay, per-step cosine, clipping.

Per-stream learning rates and frozen streams partition the parameters by their
top-level module (``rgb_*``, ``pose_*``, ``attention_module``).
"""

from __future__ import annotations

from collections.abc import Mapping

import optax

FROZEN = "frozen"
GROUPS = ("rgb", "pose", "attention")


def peak_learning_rate(lr: float | None, base_lr: float, base_batch_size: int,
                       global_batch: int) -> float:
    """``lr`` when given, else the linear scaling rule ``base_lr * global_batch / base``."""
    if lr is not None:
        return float(lr)
    return base_lr * global_batch / base_batch_size


def make_schedule(peak_lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Per-step cosine annealing to 0 over ``total_steps`` (linear warmup first, if any)."""
    if total_steps <= 0:
        raise ValueError(f"expected total_steps > 0, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"expected 0 <= warmup_steps < total_steps, got {warmup_steps}")
    if warmup_steps:
        return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, 0.0)
    return optax.cosine_decay_schedule(peak_lr, total_steps)


def param_labels(params: Mapping, frozen: tuple[str, ...] = ()) -> dict[str, str]:
    """Label of every top-level module: its group ('rgb', 'pose', 'attention') or 'frozen'.

    ``frozen`` names top-level modules (e.g. 'rgb_backbone') that receive no update.
    """
    unknown = set(frozen) - set(params)
    if unknown:
        raise ValueError(f"cannot freeze {sorted(unknown)}: the model has {sorted(params)}")
    labels = {}
    for name in params:
        if name in frozen:
            labels[name] = FROZEN
        elif name.startswith("rgb_"):
            labels[name] = "rgb"
        elif name.startswith("pose_"):
            labels[name] = "pose"
        elif name == "attention_module":
            labels[name] = "attention"
        else:
            raise ValueError(f"unexpected top-level module {name!r}")
    return labels


def make_optimizer(
    params: Mapping,
    schedule: optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 3e-4,
    clip_norm: float | None = 40.0,
    lr_multipliers: Mapping[str, float] | None = None,
    frozen: tuple[str, ...] = (),
) -> optax.GradientTransformation:
    """PyTorch's SGD (decay added to the gradient before momentum) after global-norm clipping.

    ``lr_multipliers`` scale the schedule per group ('rgb', 'pose', 'attention').
    Frozen modules get a zero update and keep no optimiser state.
    """
    mults = {g: 1.0 for g in GROUPS} | dict(lr_multipliers or {})
    if set(mults) - set(GROUPS):
        raise ValueError(f"lr_multipliers keys must be in {GROUPS}, got {sorted(mults)}")
    labels = param_labels(params, frozen)

    def group(mult: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
            optax.sgd(lambda step: schedule(step) * mult, momentum=momentum or None,
                      nesterov=nesterov),
        )

    # Sorted: set order changes between processes, and with it the compiled program.
    transforms = {label: group(mults[label])
                  for label in sorted(set(labels.values()) - {FROZEN})}
    transforms[FROZEN] = optax.set_to_zero()
    clip = optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()
    return optax.chain(clip, optax.multi_transform(transforms, labels))
