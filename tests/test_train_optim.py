"""epam_jax.train.optim: the schedule and PyTorch's SGD with gradient clipping and
per-stream learning rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from epam_jax.train import (
    make_optimizer,
    make_schedule,
    param_labels,
)


def test_cosine_schedule_per_step_with_optional_warmup() -> None:
    s = make_schedule(0.1, 100)
    assert float(s(0)) == pytest.approx(0.1)
    assert float(s(50)) == pytest.approx(0.05)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-9)
    w = make_schedule(0.1, 100, warmup_steps=10)
    assert float(w(0)) == 0.0 and float(w(5)) == pytest.approx(0.05)
    assert float(w(10)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_schedule(0.1, 10, warmup_steps=10)


def _params(rng: np.random.Generator) -> dict:
    names = ("rgb_backbone", "rgb_cls_head", "pose_backbone", "pose_cls_head",
             "attention_module")
    return {n: {"w": rng.standard_normal((3, 2)).astype(np.float32)} for n in names}


def test_optimizer_is_pytorch_sgd_with_clipping_and_stream_rates() -> None:
    """clip_grad_norm_(40) then SGD(momentum 0.9, weight_decay): buf = 0.9 buf + g + wd p,
    p -= lr * mult * buf; frozen modules never move."""
    rng = np.random.default_rng(0)
    params = _params(rng)
    sched = make_schedule(0.5, 4)
    mults = {"rgb": 0.1, "pose": 2.0, "attention": 1.0}
    tx = make_optimizer(params, sched, weight_decay=1e-2, clip_norm=3.0, lr_multipliers=mults,
                        frozen=("pose_backbone",))
    group = param_labels(params, ("pose_backbone",))
    opt_state = tx.init(params)
    p = jax.tree_util.tree_map(jnp.asarray, params)
    ref = {k: v["w"].astype(np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in ref.items()}
    for step in range(4):
        grads = {k: {"w": rng.standard_normal((3, 2)).astype(np.float32) * 5} for k in params}
        updates, opt_state = tx.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        g = {k: v["w"].astype(np.float64) for k, v in grads.items()}
        norm = np.sqrt(sum((x**2).sum() for x in g.values()))
        scale = min(1.0, 3.0 / norm)
        lr = 0.5 * 0.5 * (1 + np.cos(np.pi * step / 4))
        for k in ref:
            if group[k] == "frozen":
                continue
            buf[k] = 0.9 * buf[k] + g[k] * scale + 1e-2 * ref[k]
            ref[k] = ref[k] - lr * mults[group[k]] * buf[k]
    for k in ref:
        np.testing.assert_allclose(np.asarray(p[k]["w"]), ref[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["pose_backbone"]["w"]),
                                  params["pose_backbone"]["w"])
    with pytest.raises(ValueError, match="cannot freeze"):
        param_labels(params, ("depth_backbone",))
