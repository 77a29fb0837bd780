"""Classification metrics of a whole evaluation set, shared by training and ``evaluate``.

Evaluation batches carry per-clip logits of each stream plus the sample's index, view
and mask (``epam_jax.train.step.eval_step``); a ``ScoreTable`` files them by (sample,
view), refusing a view seen twice or never, so every video counts exactly once however
the set was split over devices, hosts and padded batches. Metrics are computed once, in
numpy, from the complete table: top-1, top-5 and mean class accuracy (over the classes
present in the set), per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AVERAGES = ("score", "prob")
# name -> (rgb weight, pose weight); "fused" is the official score rgb_logits + pose_logits.
FUSIONS: dict[str, tuple[float, float]] = {
    "fused": (1.0, 1.0),
    "rgb:pose=2:1": (2.0, 1.0),
    "rgb:pose=1:2": (1.0, 2.0),
}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int | None = None
                     ) -> dict[str, Any]:
    """Metrics of scores (N, C) against integer labels (N,).

    'top1', 'top5' and 'mean_class' in percent (top-5 is top-min(5, C)); 'per_class' (C,)
    accuracy in percent, NaN for classes absent from ``labels``; 'class_count' (C,);
    'confusion' (C, C) int64, rows true class, columns prediction; 'num_samples'.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"expected scores (N, C) and labels (N,), got {scores.shape} and "
                         f"{labels.shape}")
    num_classes = scores.shape[1] if num_classes is None else num_classes
    if scores.shape[1] != num_classes:
        raise ValueError(f"expected {num_classes} classes of scores, got {scores.shape[1]}")
    if labels.size == 0:
        raise ValueError("no samples were evaluated")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    pred = scores.argmax(1)
    k = min(5, num_classes)
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hit1 = pred == labels
    hit5 = (topk == labels[:, None]).any(1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    count = confusion.sum(1)
    present = count > 0
    per_class = np.full(num_classes, np.nan)
    per_class[present] = 100.0 * np.diag(confusion)[present] / count[present]
    return {
        "top1": 100.0 * float(hit1.mean()),
        "top5": 100.0 * float(hit5.mean()),
        "mean_class": float(np.mean(per_class[present])),
        "per_class": per_class,
        "class_count": count,
        "confusion": confusion,
        "num_samples": int(labels.size),
    }


class ScoreTable:
    """Per-(sample, view) logits of each stream, filled from evaluation batches.

    ``add`` takes one batch of ``eval_step`` outputs (numpy, the whole global batch):
    stream logits (B, C) under their names ('rgb', 'pose' or 'fused'), 'label', 'mask',
    'index' and optionally 'view'. Rows with mask 0 (padding) are ignored; a (sample,
    view) given twice is an error, and ``check_complete`` names any never given.
    """

    def __init__(self, num_samples: int, num_views: int = 1) -> None:
        if num_samples <= 0 or num_views <= 0:
            raise ValueError(f"expected num_samples and num_views > 0, got {num_samples}, "
                             f"{num_views}")
        self.num_samples, self.num_views = num_samples, num_views
        self.labels = np.full(num_samples, -1, np.int64)
        self.seen = np.zeros((num_samples, num_views), bool)
        self.logits: dict[str, np.ndarray] = {}

    def add(self, outputs: Mapping[str, Any]) -> None:
        mask = np.asarray(outputs["mask"]) > 0
        index = np.asarray(outputs["index"]).astype(np.int64)[mask]
        view = (np.asarray(outputs["view"]).astype(np.int64)[mask] if "view" in outputs
                else np.zeros_like(index))
        label = np.asarray(outputs["label"]).astype(np.int64)[mask]
        if index.size == 0:
            return
        if index.min() < 0 or index.max() >= self.num_samples or view.max() >= self.num_views:
            raise ValueError("evaluation batch names a sample or view outside the set")
        if self.seen[index, view].any() or len(set(zip(index.tolist(), view.tolist(),
                                                       strict=True))) != index.size:
            raise ValueError("a (sample, view) was evaluated twice")
        known = self.labels[index]
        if np.any((known >= 0) & (known != label)):
            raise ValueError("two views of one sample carry different labels")
        self.seen[index, view] = True
        self.labels[index] = label
        for name, value in outputs.items():
            if name in ("label", "mask", "index", "view"):
                continue
            value = np.asarray(value, np.float32)[mask]
            if name not in self.logits:
                self.logits[name] = np.full(
                    (self.num_samples, self.num_views, value.shape[-1]), np.nan, np.float32)
            self.logits[name][index, view] = value

    def check_complete(self) -> None:
        missing = np.argwhere(~self.seen)
        if missing.size:
            raise ValueError(f"{len(missing)} of {self.seen.size} (sample, view) pairs were "
                             f"never evaluated, e.g. {missing[:3].tolist()}")

    def stream_scores(self, average: str = "score") -> dict[str, np.ndarray]:
        """Per stream (N, C): the mean over views of the logits ('score') or of their
        softmax ('prob'). With one view and 'score' these are the model's logits."""
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        self.check_complete()
        f = softmax if average == "prob" else (lambda x: np.asarray(x, np.float64))
        return {name: f(value).mean(axis=1) for name, value in self.logits.items()}


def fused_scores(streams: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores metrics are reported for: each stream, and for two streams the
    fusions of ``FUSIONS`` (weighted sums of the stream scores)."""
    if "rgb" not in streams or "pose" not in streams:
        return dict(streams)
    out = {name: w_rgb * streams["rgb"] + w_pose * streams["pose"]
           for name, (w_rgb, w_pose) in FUSIONS.items()}
    return out | {"rgb": streams["rgb"], "pose": streams["pose"]}


def table_metrics(table: ScoreTable, num_classes: int, average: str = "score"
                  ) -> dict[str, dict[str, Any]]:
    """``accuracy_metrics`` of every score ``fused_scores`` names."""
    scores = fused_scores(table.stream_scores(average))
    return {name: accuracy_metrics(s, table.labels, num_classes) for name, s in scores.items()}


def flat_metrics(metrics: Mapping[str, Mapping[str, Any]],
                 names: Sequence[str] = ("fused", "rgb", "pose")) -> dict[str, float]:
    """Scalars for logs and checkpoints: '{name}/top1', '{name}/top5',
    '{name}/mean_class_acc' and 'num_samples'."""
    out: dict[str, float] = {}
    for name in names:
        if name in metrics:
            m = metrics[name]
            out |= {f"{name}/top1": m["top1"], f"{name}/top5": m["top5"],
                    f"{name}/mean_class_acc": m["mean_class"]}
            out["num_samples"] = float(m["num_samples"])
    return out
