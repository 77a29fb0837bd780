"""Training checkpoints with orbax: the train state plus each host's grain iterator state.

A step directory is written under a temporary name and renamed when complete
(orbax's atomic finalize), so a save cut short by a crash is never listed and
never restored. The last ``keep`` steps and the ``keep_best`` best by ``best_metric``
(validation top-1 of the fused score by default) are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

STATE, DATA = "state", "data"
BEST_METRIC = "fused/top1"


def _train_tree(state: Any) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


class Checkpoints:
    """An orbax CheckpointManager for TrainState + data iterator."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, best_metric: str = BEST_METRIC) -> None:
        if keep < 1:
            raise ValueError(f"expected keep >= 1, got {keep}")
        policies: list[Any] = [cm.LatestN(keep)]
        if keep_best > 0:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any,
             metrics: dict[str, float] | None = None) -> None:
        """Save ``state`` (replicated arrays) and ``data_iterator``'s position at ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(**{
                STATE: ocp.args.StandardSave(_train_tree(state)),
                DATA: grain.checkpoint.CheckpointSave(data_iterator),
            }),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, state: Any, data_iterator: Any | None = None) -> Any:
        """``state`` (as a template: shapes and shardings) with the values of ``step``;
        ``data_iterator`` is moved to the saved position in place."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _train_tree(state))
        items: dict[str, Any] = {STATE: ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        tree = restored[STATE]
        return state.replace(**tree)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
