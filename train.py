"""Train EPAM-Net or one of its streams.

    python train.py --config configs/demo.py --workdir runs/demo
    python train.py --config configs/default.py --workdir runs/ntu60 \\
        --config.data.annotations=ntu60_2d.pkl --config.optimizer.lr=0.003

The training itself is ``epam_jax.train.train_and_evaluate``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the model go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from epam_jax.train import train_and_evaluate
    from epam_jax.train.checkpointing import CheckpointWriteError
    from epam_jax.train.lock import WorkdirLockError

    try:
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (CheckpointWriteError, WorkdirLockError) as err:  # one line, no traceback
        raise SystemExit(f"error: {err}") from None
    if result.get("preempted"):
        print(result["message"], flush=True)
        return
    top1 = result.get("fused/top1")
    if top1 is not None:
        print(f"final validation top-1: {top1:.1f}%")
    print(f"checkpoint: {result['model_dir']}")
    if "attention_picture" in result:
        print(f"attention picture: {result['attention_picture']}")


if __name__ == "__main__":
    app.run(main)
