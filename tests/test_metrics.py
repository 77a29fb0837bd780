"""epam_jax.metrics: accuracies and the score table against plain loops."""

from __future__ import annotations

import numpy as np
import pytest

from epam_jax.metrics import ScoreTable, accuracy_metrics, flat_metrics, softmax, table_metrics


def loop_metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    top1 = top5 = 0
    hits: dict[int, list[bool]] = {}
    for s, y in zip(scores, labels, strict=True):
        order = sorted(range(len(s)), key=lambda k: -s[k])
        top1 += order[0] == y
        top5 += y in order[:5]
        hits.setdefault(int(y), []).append(order[0] == y)
    mean_class = float(np.mean([np.mean(h) for h in hits.values()]))
    return 100 * top1 / len(labels), 100 * top5 / len(labels), 100 * mean_class


def test_accuracy_metrics_equal_plain_loops() -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((57, 9))
    labels = rng.integers(0, 8, 57)  # class 8 never occurs: not in the mean
    m = accuracy_metrics(scores, labels, 9)
    assert (m["top1"], m["top5"], m["mean_class"]) == pytest.approx(loop_metrics(scores, labels))
    assert m["confusion"].sum() == 57 and m["confusion"].shape == (9, 9)
    for i, j in [(0, 0), (3, 5), (7, 1)]:
        assert m["confusion"][i, j] == np.sum((labels == i) & (scores.argmax(1) == j))
    assert np.isnan(m["per_class"][8]) and m["class_count"][8] == 0
    assert np.nanmean(m["per_class"]) == pytest.approx(m["mean_class"])
    three = accuracy_metrics(scores[:, :3], labels % 3, 3)
    assert three["top5"] == 100.0  # top-5 of 3 classes is top-3
    with pytest.raises(ValueError, match="labels must lie"):
        accuracy_metrics(scores, labels + 5, 9)
    with pytest.raises(ValueError, match="no samples"):
        accuracy_metrics(scores[:0], labels[:0], 9)


def test_score_table_views_averages_and_fusions() -> None:
    rng = np.random.default_rng(1)
    n, v, c = 11, 4, 6
    rgb, pose = rng.standard_normal((2, n, v, c)).astype(np.float32)
    labels = rng.integers(0, c, n)
    table = ScoreTable(n, v)
    pairs = [(i, j) for i in range(n) for j in range(v)]
    rng.shuffle(pairs)
    for start in range(0, len(pairs), 5):  # batches in any order, the last one padded
        chunk = pairs[start:start + 5]
        pad = 5 - len(chunk)
        idx = np.array([p[0] for p in chunk] + [0] * pad)
        view = np.array([p[1] for p in chunk] + [0] * pad)
        table.add({"rgb": rgb[idx, view], "pose": pose[idx, view], "label": labels[idx],
                   "index": idx, "view": view, "mask": np.r_[np.ones(len(chunk)),
                                                             np.zeros(pad)]})
    by_score = table.stream_scores("score")
    np.testing.assert_allclose(by_score["rgb"], rgb.mean(1), rtol=1e-6)
    by_prob = table.stream_scores("prob")
    np.testing.assert_allclose(by_prob["pose"], softmax(pose).mean(1), rtol=1e-6)
    metrics = table_metrics(table, c, "prob")
    fused = softmax(rgb).mean(1) + softmax(pose).mean(1)
    assert metrics["fused"]["top1"] == pytest.approx(accuracy_metrics(fused, labels)["top1"])
    two_one = 2 * softmax(rgb).mean(1) + softmax(pose).mean(1)
    assert metrics["rgb:pose=2:1"]["mean_class"] == pytest.approx(
        accuracy_metrics(two_one, labels)["mean_class"])
    flat = flat_metrics(metrics)
    assert flat["num_samples"] == n and set(flat) >= {"fused/top1", "rgb/mean_class_acc"}

    half = ScoreTable(n, v)
    half.add({"rgb": rgb[:, 0], "pose": pose[:, 0], "label": labels, "index": np.arange(n),
              "view": np.zeros(n, int), "mask": np.ones(n)})
    with pytest.raises(ValueError, match="never evaluated"):
        half.stream_scores()
    with pytest.raises(ValueError, match="twice"):
        half.add({"rgb": rgb[:1, 0], "pose": pose[:1, 0], "label": labels[:1],
                  "index": np.zeros(1, int), "view": np.zeros(1, int), "mask": np.ones(1)})
