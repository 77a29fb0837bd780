"""Training EPAM-Net and its single streams: optax, orbax, grain, jit or pmap.

``train_and_evaluate(config, workdir)`` runs a whole training; the pieces
(optimiser, train state, steps, parallelism, metrics, checkpoints) are usable alone.
"""

from epam_jax.train.checkpointing import Checkpoints
from epam_jax.train.evaluate import collect_scores, evaluate
from epam_jax.train.loop import NonFiniteLossError, export_model, train_and_evaluate
from epam_jax.train.optim import make_optimizer, make_schedule, param_labels, peak_learning_rate
from epam_jax.train.parallel import DataParallel, initialize_distributed
from epam_jax.train.state import (
    MODES,
    EvalState,
    TrainState,
    create_train_state,
    frozen_modules,
    initial_variables,
    training_model,
)
from epam_jax.train.step import (
    cross_entropy,
    eval_step,
    loss_and_grads,
    model_inputs,
    train_step,
)

__all__ = [
    "MODES",
    "Checkpoints",
    "DataParallel",
    "EvalState",
    "NonFiniteLossError",
    "TrainState",
    "collect_scores",
    "create_train_state",
    "cross_entropy",
    "eval_step",
    "loss_and_grads",
    "evaluate",
    "export_model",
    "frozen_modules",
    "initial_variables",
    "initialize_distributed",
    "make_optimizer",
    "make_schedule",
    "model_inputs",
    "param_labels",
    "peak_learning_rate",
    "train_and_evaluate",
    "train_step",
    "training_model",
]
