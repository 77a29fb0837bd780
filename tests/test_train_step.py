"""epam_jax.train.step: the loss, and training in bfloat16 with float32 parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ncthw_to_ndhwc, random_clips

from epam_jax.models import (
    EPAMNet,
    SingleStreamNet,
    variable_shapes,
)
from epam_jax.train import (
    cross_entropy,
)


def test_cross_entropy_with_label_smoothing() -> None:
    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], jnp.bfloat16)
    labels = jnp.asarray([0, 1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    target = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 1]]
    expected = -(target * np.asarray(logp)).sum(1).mean()
    assert float(cross_entropy(logits, labels, 0.1)) == pytest.approx(expected, rel=1e-6)
    plain = -np.asarray(logp)[[0, 1], [0, 1]].mean()
    assert float(cross_entropy(logits, labels)) == pytest.approx(plain, rel=1e-6)
    assert cross_entropy(logits, labels).dtype == jnp.float32


def test_bfloat16_training_keeps_parameters_and_statistics_in_float32():
    net = SingleStreamNet(stream="pose", num_classes=5, dtype=jnp.bfloat16)
    shapes = variable_shapes(net)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variable_shapes(
        EPAMNet(dtype=jnp.bfloat16))))

    variables = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    _, pose = random_clips(2, 64, t_pose=16, seed=6)

    def loss_fn(params):
        logits, updates = net.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            ncthw_to_ndhwc(pose), train=True, mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([1, 3])).mean(), (
            logits, updates
        )

    (loss, (logits, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"]
    )
    assert logits.dtype == loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    stats = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert all(s.dtype == jnp.float32 for s in stats)
    assert all(np.all(np.isfinite(np.asarray(s))) for s in stats)
    moved = [not np.allclose(s, 0.5) for s in stats]
    assert all(moved)
