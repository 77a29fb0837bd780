"""One training step and one evaluation step, shared by jit and pmap.

``axis_name`` is None under ``jax.jit`` (a sharded global batch: means and
BatchNorm statistics are already global) and the pmap axis under ``jax.pmap``
(gradients, metrics and BatchNorm statistics reduced over it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.train.state import TrainState

Batch = dict[str, jax.Array]


def model_inputs(batch: Batch, mode: str, inputs: DeviceInputs | None = None
                 ) -> tuple[jax.Array, ...]:
    """The model's positional inputs for ``mode`` from a loader batch, finished on the
    device by ``inputs`` (heatmaps from keypoints, uint8 frames normalised)."""
    batch = (inputs or DeviceInputs())(batch)
    if mode == "epam":
        return batch["rgb"], batch["heatmap"]
    return (batch["rgb"],) if mode == "rgb" else (batch["heatmap"],)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> jax.Array:
    """Mean cross-entropy in float32, optionally with smoothed one-hot targets."""
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def stream_logits(outputs: Any, mode: str) -> dict[str, jax.Array]:
    """{'fused', and for EPAM-Net 'rgb', 'pose'} float32 scores."""
    if mode == "epam":
        rgb, pose = (x.astype(jnp.float32) for x in outputs[:2])
        return {"fused": rgb + pose, "rgb": rgb, "pose": pose}
    return {"fused": outputs.astype(jnp.float32)}


def loss_and_grads(
    state: TrainState,
    batch: Batch,
    *,
    mode: str,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    inputs: DeviceInputs | None = None,
) -> tuple[jax.Array, Any, jax.Array, Any]:
    """(loss, gradients, fused logits, new batch_stats) of one training batch on this
    device: loss CE(rgb) + CE(pose) (one term in single-stream modes)."""
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, lax.axis_index(axis_name))
    labels = batch["label"]
    x = model_inputs(batch, mode, inputs)

    def loss_fn(params):
        outputs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            *x,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        scores = stream_logits(outputs, mode)
        heads = ("rgb", "pose") if mode == "epam" else ("fused",)
        loss = sum(cross_entropy(scores[h], labels, label_smoothing) for h in heads)
        return loss, (scores["fused"], updates["batch_stats"])

    (loss, (fused, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    return loss, grads, fused, batch_stats


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    mode: str,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    inputs: DeviceInputs | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser update from ``loss_and_grads``.

    Returns the new state and summable metrics: 'loss_sum', 'correct', 'count',
    'grad_norm_sum' (each step contributes once).
    """
    loss, grads, fused, batch_stats = loss_and_grads(
        state, batch, mode=mode, label_smoothing=label_smoothing, axis_name=axis_name,
        inputs=inputs)
    labels = batch["label"]
    correct = jnp.sum(jnp.argmax(fused, -1) == labels)
    count = jnp.asarray(labels.shape[0], jnp.int32)
    if axis_name is not None:
        grads = lax.pmean(grads, axis_name)
        loss = lax.pmean(loss, axis_name)
        correct, count = lax.psum((correct, count), axis_name)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        "loss_sum": loss,
        "correct": correct.astype(jnp.int32),
        "count": count,
        "grad_norm_sum": optax.global_norm(grads),
    }
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    mode: str,
    axis_name: str | None = None,
    inputs: DeviceInputs | None = None,
) -> dict[str, jax.Array]:
    """Per-clip float32 logits of one batch, with the batch's bookkeeping.

    Keys: the stream logits (B, C) ('rgb' and 'pose' for EPAM-Net, 'fused' for one
    stream) and 'label', 'mask', 'index', 'view' passed through, so the host can file
    every clip under its sample (``epam_jax.metrics.ScoreTable``). Under pmap the
    outputs are gathered over ``axis_name``: every device holds the whole batch.
    """
    outputs = state.apply_fn(state.variables, *model_inputs(batch, mode, inputs), train=False)
    logits = stream_logits(outputs, mode)
    out = {k: v for k, v in logits.items() if mode != "epam" or k != "fused"}
    index = batch["index"] if "index" in batch else jnp.arange(batch["label"].shape[0])
    out |= {"label": batch["label"], "mask": batch["mask"], "index": index,
            "view": batch["view"] if "view" in batch else jnp.zeros_like(index)}
    if axis_name is not None:
        out = lax.all_gather(out, axis_name, tiled=True)
    return out
