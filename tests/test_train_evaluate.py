"""epam_jax.train.evaluate: every sample counted once, however the batches are padded."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from epam_jax.metrics import flat_metrics, table_metrics
from epam_jax.train import (
    collect_scores,
    eval_step,
)


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
