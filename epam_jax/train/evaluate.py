"""Validation metrics: top-1, top-5 and mean class accuracy, fused and per stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


class Accumulator:
    """Sums the per-batch counts of ``eval_step`` (already summed over hosts/devices)."""

    def __init__(self) -> None:
        self.totals: dict[str, np.ndarray] = {}

    def add(self, counts: dict[str, Any]) -> None:
        for key, value in counts.items():
            value = np.asarray(value, np.float64)
            self.totals[key] = self.totals.get(key, 0.0) + value

    def summary(self) -> dict[str, float]:
        """'{score}/top1', '{score}/top5', '{score}/mean_class_acc' in percent, 'num_samples'.

        Mean class accuracy averages over the classes present in the set.
        """
        if "class_count" not in self.totals:
            raise ValueError("no batches were evaluated")
        class_count = self.totals["class_count"]
        n = float(class_count.sum())
        out = {"num_samples": n}
        present = class_count > 0
        for key, value in self.totals.items():
            name, _, metric = key.rpartition("/")
            if metric in ("top1", "top5"):
                out[key] = 100.0 * float(value) / max(n, 1.0)
            elif metric == "class_correct":
                acc = value[present] / class_count[present]
                out[f"{name}/mean_class_acc"] = 100.0 * float(acc.mean()) if acc.size else 0.0
        return out


def evaluate(eval_fn: Callable[[dict], dict], batches: Iterable[dict],
             fetch: Callable[[Any], Any] | None = None) -> dict[str, float]:
    """Run ``eval_fn`` over every batch and summarise (padding is masked by the step)."""
    fetch = fetch or (lambda tree: {k: np.asarray(v) for k, v in tree.items()})
    acc = Accumulator()
    for batch in batches:
        acc.add(fetch(eval_fn(batch)))
    return acc.summary()
