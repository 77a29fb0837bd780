"""Validation over a whole loader: per-clip logits -> ``epam_jax.metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from epam_jax.metrics import ScoreTable, flat_metrics, table_metrics


def collect_scores(eval_fn: Callable[[dict], dict], batches: Iterable[dict], num_samples: int,
                   num_views: int = 1, fetch: Callable[[Any], Any] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> ScoreTable:
    """Run ``eval_fn`` (an ``eval_step``) over every batch; the filled, complete table.

    ``on_batch(clips)`` is told how many real clips each batch held (progress bars).
    """
    fetch = fetch or (lambda tree: {k: np.asarray(v) for k, v in tree.items()})
    table = ScoreTable(num_samples, num_views)
    for batch in batches:
        outputs = fetch(eval_fn(batch))
        table.add(outputs)
        if on_batch is not None:
            on_batch(int((np.asarray(outputs["mask"]) > 0).sum()))
    table.check_complete()
    return table


def evaluate(eval_fn: Callable[[dict], dict], batches: Iterable[dict], num_samples: int,
             num_classes: int, fetch: Callable[[Any], Any] | None = None) -> dict[str, float]:
    """'{score}/top1', '{score}/top5', '{score}/mean_class_acc' (percent) of the fused
    score and each stream, and 'num_samples', over every sample exactly once."""
    table = collect_scores(eval_fn, batches, num_samples, fetch=fetch)
    return flat_metrics(table_metrics(table, num_classes))
