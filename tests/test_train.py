"""Training library, cheap parts: optimiser vs PyTorch's SGD, metrics, config, errors."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from epam_jax.checkpoints import save_variables
from epam_jax.metrics import flat_metrics, table_metrics
from epam_jax.models import SingleStreamNet, variable_shapes
from epam_jax.train import (
    collect_scores,
    cross_entropy,
    eval_step,
    initial_variables,
    make_optimizer,
    make_schedule,
    param_labels,
    peak_learning_rate,
    training_model,
)

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str):
    sys.path.insert(0, str(ROOT))
    try:
        module = __import__(f"configs.{name}", fromlist=["get_config"])
    finally:
        sys.path.remove(str(ROOT))
    return module.get_config()


def test_default_config_is_the_paper_recipe() -> None:
    c = load_config("default")
    o = c.optimizer
    assert (o.momentum, o.weight_decay, o.grad_clip_norm) == (0.9, 3e-4, 40.0)
    assert c.batch_size == 24 and c.mode == "epam" and c.parallel == "jit"
    assert peak_learning_rate(o.lr, o.base_lr, o.base_batch_size, c.batch_size) == pytest.approx(
        0.0015)
    assert peak_learning_rate(0.2, o.base_lr, o.base_batch_size, 64) == 0.2
    with pytest.raises(AttributeError):
        c.optimizer.no_such_key = 1  # locked: typos are errors


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


def test_evaluation_counts_every_sample_once_despite_padding() -> None:
    """eval_step on known scores (the 'model' returns its inputs) over padded batches,
    filed by ScoreTable, gives the numpy top-1, top-5 and mean class accuracy of the real
    samples; a sample seen twice or never is an error."""
    rng = np.random.default_rng(1)
    n, c, batch = 23, 7, 5
    rgb, pose = rng.standard_normal((2, n, c)).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int32)
    state = types.SimpleNamespace(variables={}, apply_fn=lambda v, r, p, train: (r, p))
    pad = -n % batch
    batches = []
    for start in range(0, n + pad, batch):
        idx = np.arange(start, start + batch)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)  # padding repeats a real sample, masked out
        batches.append({"rgb": rgb[idx], "heatmap": pose[idx], "label": labels[idx],
                        "mask": mask, "index": idx.astype(np.int32)})
    step = jax.jit(lambda b: eval_step(state, b, mode="epam"))
    table = collect_scores(step, batches, n, fetch=jax.device_get)
    got = flat_metrics(table_metrics(table, c))
    assert got["num_samples"] == n
    for name, scores in (("fused", rgb + pose), ("rgb", rgb), ("pose", pose)):
        top1 = scores.argmax(1) == labels
        top5 = (np.argsort(-scores, 1)[:, :5] == labels[:, None]).any(1)
        per_class = [top1[labels == k].mean() for k in range(c) if (labels == k).any()]
        assert got[f"{name}/top1"] == pytest.approx(100 * top1.mean())
        assert got[f"{name}/top5"] == pytest.approx(100 * top5.mean())
        assert got[f"{name}/mean_class_acc"] == pytest.approx(100 * np.mean(per_class))
    with pytest.raises(ValueError, match="evaluated twice"):
        collect_scores(step, batches + batches[:1], n, fetch=jax.device_get)
    with pytest.raises(ValueError, match="never evaluated"):
        collect_scores(step, batches[1:], n, fetch=jax.device_get)


def _zero_variables(model) -> dict:
    shapes = variable_shapes(model)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_initial_checkpoint_of_another_model_or_class_count_is_refused(tmp_path) -> None:
    five = save_variables(tmp_path / "pose5", _zero_variables(
        SingleStreamNet(stream="pose", num_classes=5)))
    model = training_model("pose", 6)
    with pytest.raises(ValueError, match="trained for 5 classes, expected 6"):
        initial_variables(model, "pose", jax.random.PRNGKey(0), checkpoint=str(five))
    with pytest.raises(ValueError, match="holds a 'pose' checkpoint, expected 'rgb'"):
        initial_variables(training_model("rgb", 5), "rgb", jax.random.PRNGKey(0),
                          checkpoint=str(five))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        initial_variables(model, "pose", jax.random.PRNGKey(0), checkpoint=str(tmp_path / "x"))
    restored = initial_variables(training_model("pose", 5), "pose", jax.random.PRNGKey(0),
                                 checkpoint=str(five))
    assert restored["params"]["pose_cls_head"]["fc_cls"]["bias"].shape == (5,)
    with pytest.raises(ValueError, match="freeze_rgb"):
        training_model("pose", 5, freeze_rgb=True)


def _train_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
           "--workdir", str(tmp_path / "w"), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_train_py_reports_unknown_keys_and_missing_data(tmp_path) -> None:
    done = _train_py(tmp_path, "--config.optimizer.lrr=0.1")
    assert done.returncode != 0 and "lrr" in done.stderr
    done = _train_py(tmp_path, f"--config.data.annotations={tmp_path / 'none.pkl'}")
    assert done.returncode != 0
    assert "FileNotFoundError" in done.stderr and "none.pkl' not found" in done.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
