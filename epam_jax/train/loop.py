"""``train_and_evaluate(config, workdir)``: the whole training run.

Layout of ``workdir``: ``checkpoints/`` (orbax, resumable), ``model/`` (the best
or final variables, ``epam_jax.checkpoints.save_variables``), ``metrics.jsonl``,
``tensorboard/`` and, when asked, ``attention.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from epam_jax.data.device_inputs import DeviceInputs
from epam_jax.data.pipeline import ClipConfig
from epam_jax.models import variable_shapes
from epam_jax.train.checkpointing import (
    BEST_METRIC,
    Checkpoints,
    disk_write_guard,
    tree_nbytes,
)
from epam_jax.train.evaluate import evaluate
from epam_jax.train.faults import Preemption, StepWatchdog
from epam_jax.train.lock import WorkdirLock, WorkdirLockError
from epam_jax.train.optim import make_optimizer, make_schedule, peak_learning_rate
from epam_jax.train.parallel import DataParallel, initialize_distributed
from epam_jax.train.state import (
    create_train_state,
    frozen_modules,
    initial_variables,
    training_model,
)
from epam_jax.tuning import Tuning


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def clip_config(config: Any) -> ClipConfig:
    """The loader's ClipConfig for ``config.mode`` and ``config.data``: keypoints and
    uint8 frames finished on the device unless ``data.device_inputs`` is False."""
    d = config.data
    uses_rgb = config.mode in ("epam", "rgb")
    clip = ClipConfig(
        clip_len=d.clip_len,
        rgb_stride=d.rgb_stride,
        rgb=uses_rgb,
        rgb_size=(d.rgb_size, d.rgb_size),
        pose="heatmap" if config.mode in ("epam", "pose") else None,
        heatmap_size=(d.heatmap_size, d.heatmap_size),
        sigma=d.sigma,
        flip_prob=d.flip_prob,
        video_root=_video_root(config) if uses_rgb else None,
        video_ext=d.video_ext,
        require_prepared=d.require_prepared,
    )
    return clip.device_inputs() if d.device_inputs else clip


def _video_root(config: Any) -> str:
    root = config.data.video_root or str(Path(config.data.annotations).parent / "videos")
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"video folder {root!r} not found: set --config.data.video_root to the folder "
            f"holding the videos")
    return root


def check_dataset(config: Any) -> Path:
    """The annotation file, or a FileNotFoundError saying how to get one."""
    path = config.data.annotations
    if not path:
        raise FileNotFoundError(
            "no dataset: set --config.data.annotations to a PoseC3D annotation pickle "
            "(python -m epam_jax.data.synthetic OUT makes a synthetic one)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"dataset annotations {path!r} not found")
    return Path(path)


def make_loaders(config: Any, local_batch: int, local_eval_batch: int) -> tuple[Any, Any]:
    """(train, val) ClipLoaders over this host's shard."""
    from epam_jax.data.loader import ClipLoader

    annotations = check_dataset(config)
    clip = clip_config(config)
    d = config.data
    common = dict(num_classes=d.num_classes, seed=config.seed, worker_count=d.worker_count,
                  read_threads=d.read_threads, prefetch=d.prefetch)
    train = ClipLoader(annotations, clip, local_batch, True, split=d.train_split or None,
                       **common)
    val = ClipLoader(annotations, clip, local_eval_batch, False, split=d.val_split or None,
                     **common)
    return train, val


class InputWait:
    """The share of wall time the loop spends waiting for the loader's next batch.

    ``next(it)`` is timed; ``share()`` gives the waiting share since the last call.
    ``warning(share)`` returns a message once, the first time the share has stayed above
    ``threshold`` for ``patience`` windows in a row (the first window, which holds the
    compile, never counts).
    """

    def __init__(self, threshold: float = 0.2, patience: int = 3) -> None:
        self.threshold = threshold
        self.patience = patience
        self._waited = 0.0
        self._start = time.perf_counter()
        self._windows = 0
        self._above = 0
        self._warned = False

    def next(self, iterator: Any) -> Any:
        t = time.perf_counter()
        try:
            return next(iterator)
        finally:
            self._waited += time.perf_counter() - t

    def share(self) -> float:
        now = time.perf_counter()
        share = self._waited / max(now - self._start, 1e-9)
        self._waited, self._start = 0.0, now
        self._windows += 1
        return min(share, 1.0)

    def restart(self) -> None:
        """Start a new window without measuring (after evaluation or a save)."""
        self._waited, self._start = 0.0, time.perf_counter()

    def warning(self, share: float) -> str | None:
        if self._windows <= 1 or self._warned:
            return None
        self._above = self._above + 1 if share > self.threshold else 0
        if self._above < self.patience:
            return None
        self._warned = True
        return (f"input-bound: {100 * share:.0f}% of the wall time waits for the next batch "
                f"(over {100 * self.threshold:.0f}% for {self.patience} log windows); raise "
                "--config.data.worker_count, keep --config.data.device_inputs=True, or read "
                "prepared videos (python -m benchmarks.loader measures one worker)")


class MetricWriter:
    """JSON lines and TensorBoard events, written by the first process only.

    ``start_step``: the step the run starts after (the checkpoint it resumed from, 0 for
    a fresh run). Rows of later steps were written by an interrupted run and are redone
    now, so they are dropped from ``metrics.jsonl`` (rewritten atomically) and hidden in
    TensorBoard (``purge_step``), leaving one row per step and kind.
    """

    FILE = "metrics.jsonl"

    def __init__(self, workdir: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            path = workdir / self.FILE
            if path.exists():
                truncate_metrics(path, start_step)
            self._jsonl = open(path, "a")  # noqa: SIM115
            events = workdir / "tensorboard"
            purge = start_step + 1 if events.is_dir() and any(events.iterdir()) else None
            # file names hold the second they were made: the suffix keeps a run restarted
            # within the same second from overwriting the last one's file, in step order
            self._tb = SummaryWriter(str(events), purge_step=purge,
                                     filename_suffix=f".from{start_step:09d}")

    def write(self, step: int, kind: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tb.add_scalar(f"{kind}/{key}", float(value), step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the rows of ``path`` (JSON lines) with step <= ``last_step``, rewriting it
    atomically; return how many were dropped. A line that does not parse (the end of a
    row cut off by a kill) is dropped too."""
    from epam_jax.cli import atomic_output

    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            step = None
        if step is not None and step <= last_step:
            kept.append(line + "\n")
        elif line.strip():
            dropped += 1
    if dropped:
        with atomic_output(path) as tmp:
            tmp.write_text("".join(kept))
    return dropped


def _check_best_metric(config: Any) -> None:
    scores = ("fused", "rgb", "pose") if config.mode == "epam" else ("fused",)
    known = [f"{s}/{m}" for s in scores for m in ("top1", "top5", "mean_class_acc")]
    if config.best_metric not in known:
        raise ValueError(f"best_metric {config.best_metric!r} is not a validation metric of "
                         f"mode {config.mode!r}; expected one of {known}")


def _steps(config: Any, steps_per_epoch: int) -> tuple[int, int, int]:
    total = config.num_train_steps if config.num_train_steps > 0 else (
        config.num_epochs * steps_per_epoch)
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    ckpt_every = (config.checkpoint_every_steps if config.checkpoint_every_steps > 0
                  else eval_every)
    if total <= 0:
        raise ValueError(f"nothing to train: {total} steps")
    return total, eval_every, ckpt_every


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Train ``config.mode`` on ``config.data``, evaluate, checkpoint, export.

    Returns the final validation metrics plus 'model_dir' (the exported variables),
    'step' and, when written, 'attention_picture'. After SIGTERM (preemption) every
    process saves the same step and it returns {'preempted': True, 'step', 'message'}:
    rerunning the same command resumes exactly.
    """
    dist = config.distributed
    initialize_distributed(dist.coordinator_address, dist.num_processes
                           if dist.num_processes > 0 else None,
                           dist.process_id if dist.process_id >= 0 else None, auto=dist.auto,
                           heartbeat_timeout_seconds=config.faults.heartbeat_timeout_s)
    workdir = Path(workdir).absolute()
    check_dataset(config)
    _check_best_metric(config)
    dp = DataParallel(config.parallel)
    local_batch = dp.check_batch_size(config.batch_size)
    local_eval_batch = dp.check_batch_size(config.eval_batch_size, "eval_batch_size")
    workdir.mkdir(parents=True, exist_ok=True)
    run_lock = lock_workdir(workdir)
    try:
        return _train(config, workdir, dp, local_batch, local_eval_batch)
    finally:
        run_lock.release()


def lock_workdir(workdir: Path) -> WorkdirLock:
    """Process 0 takes ``workdir``'s lock at once or every process raises
    WorkdirInUseError naming the run that holds it (a killed run's lock is gone)."""
    from jax.experimental import multihost_utils

    run_lock = WorkdirLock(workdir, enabled=jax.process_index() == 0)
    refused: WorkdirLockError | None = None
    try:
        run_lock.acquire()
    except WorkdirLockError as err:
        refused = err
    if jax.process_count() > 1:  # the others stop too instead of waiting in a collective
        ok = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
        if not int(ok) and refused is None:
            raise WorkdirLockError(f"process 0 could not lock {workdir}; see its log")
    if refused is not None:
        raise refused
    return run_lock


def _train(config: Any, workdir: Path, dp: DataParallel, local_batch: int,
           local_eval_batch: int) -> dict[str, Any]:
    """Set the run up, train it to the last step or a preemption, then export."""
    run, state, start = _setup(config, workdir, dp, local_batch, local_eval_batch)
    # SIGTERM: finish the step, all processes save the same one, exit 0 (resumable).
    preemption = Preemption(start_step=start).install()
    try:
        state, val_metrics, stopped_at = _train_steps(run, state, start, preemption)
    finally:  # after an exception the watchdog stays armed: this wait is bounded too
        preemption.restore()
        run.log.close()
        run.ckpts.wait()
    if stopped_at is not None:
        run.ckpts.close()
        message = preemption.message(run.ckpts.directory)
        return {"preempted": True, "step": stopped_at, "message": message}
    return _finish(run, state, val_metrics, workdir)


def _check_finite(fetched: list[tuple[int, Any]], ckpts: Checkpoints) -> None:
    """NonFiniteLossError at the first fetched step whose loss or gradient norm is not
    finite, naming the last good checkpoint (once the saves in flight are done)."""
    for s, mt in fetched:
        if not (math.isfinite(float(mt["loss_sum"]))
                and math.isfinite(float(mt["grad_norm_sum"]))):
            ckpts.wait()
            last = ckpts.latest_step()
            where = (f"the last good checkpoint is step {last} in {ckpts.directory}"
                     if last is not None else "no checkpoint was saved before it")
            raise NonFiniteLossError(
                f"non-finite loss ({float(mt['loss_sum'])}) or gradient norm at step "
                f"{s}; stopping (try a lower --config.optimizer.lr); {where}")


class TrainLog:
    """The log window: the training metrics since the last 'train' row.

    ``add`` keeps each step's metrics on the device; ``flush(step)`` fetches them, stops
    on a non-finite loss, writes one 'train' row (means, accuracy, learning rate, clips/s,
    input-wait share) and starts the next window. Owns the MetricWriter, the progress bar
    and the InputWait (``wait.next`` takes the next batch).
    """

    def __init__(self, config: Any, workdir: Path, start: int, total_steps: int,
                 schedule: Any, fetch: Any, ckpts: Checkpoints) -> None:
        self.primary = jax.process_index() == 0
        self.wait = InputWait(config.input_wait_warning)
        self.writer = MetricWriter(workdir, self.primary, start_step=start)
        self.bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                        disable=not (self.primary and config.progress_bar))
        self.schedule, self.fetch, self.ckpts = schedule, fetch, ckpts
        self.batch_size = config.batch_size
        self.pending: list[tuple[int, Any]] = []
        self.start_window()

    def start_window(self) -> None:
        """Start a new window: its clips/s count from now."""
        self.window_start, self.window_clips = time.perf_counter(), 0

    def add(self, step: int, metrics: Any) -> None:
        """Keep ``step``'s metrics for the next flush and advance the bar."""
        self.pending.append((step, metrics))
        self.window_clips += self.batch_size
        self.bar.update(1)

    def flush(self, step: int) -> None:
        """Write the window's 'train' row at ``step`` (nothing when it is empty); raises
        NonFiniteLossError before a non-finite state can be saved."""
        if not self.pending:
            return
        fetched = [(s, self.fetch(mt)) for s, mt in self.pending]
        self.pending.clear()
        _check_finite(fetched, self.ckpts)
        summary = self._summary(step, fetched)
        self.writer.write(step, "train", summary)
        self.bar.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['accuracy']:.1f}",
                             clips_s=f"{summary['clips_per_second']:.1f}",
                             wait=f"{100 * summary['input_wait']:.0f}%", refresh=False)
        message = self.wait.warning(summary["input_wait"])
        if message and self.primary:
            logging.warning(message)
            self.bar.write(f"warning: {message}", file=sys.stderr)
        self.start_window()

    def _summary(self, step: int, fetched: list[tuple[int, Any]]) -> dict[str, float]:
        """The 'train' row of the fetched steps, ending at ``step``."""
        elapsed = time.perf_counter() - self.window_start
        count = sum(int(mt["count"]) for _, mt in fetched)
        return {
            "loss": float(np.mean([mt["loss_sum"] for _, mt in fetched])),
            "accuracy": 100.0 * sum(int(mt["correct"]) for _, mt in fetched) / max(count, 1),
            "grad_norm": float(np.mean([mt["grad_norm_sum"] for _, mt in fetched])),
            "learning_rate": float(self.schedule(step - 1)),
            "clips_per_second": self.window_clips / max(elapsed, 1e-9),
            "input_wait": self.wait.share(),
        }

    def write_val(self, step: int, metrics: Mapping[str, float]) -> None:
        """The 'val' row at ``step`` and its line above the bar."""
        self.writer.write(step, "val", metrics)
        self.bar.write(f"step {step}: " + _format_metrics(metrics))

    def restart(self) -> None:
        """Start a new window without a row: evaluation and save time are not clips/s."""
        self.window_start = time.perf_counter()
        self.wait.restart()

    def close(self) -> None:
        """Close the progress bar and the metric files."""
        self.bar.close()
        self.writer.close()


@dataclasses.dataclass
class _Run:
    """What the training steps work with, built once by ``_setup``."""

    config: Any
    dp: DataParallel
    ckpts: Checkpoints
    train_iter: Any
    val_loader: Any
    train_fn: Any
    eval_fn: Any
    log: TrainLog
    total_steps: int
    eval_every: int
    ckpt_every: int


def _setup(config: Any, workdir: Path, dp: DataParallel, local_batch: int,
           local_eval_batch: int) -> tuple[_Run, Any, int]:
    """The model, loaders, train state (resumed when asked), step functions and log;
    returns (run, the state on the devices, the step the run starts after)."""
    model = _build_model(config, dp)
    train_loader, val_loader = make_loaders(config, local_batch, local_eval_batch)
    total_steps, eval_every, ckpt_every = _steps(config, len(train_loader))
    o = config.optimizer
    peak_lr = peak_learning_rate(o.lr, o.base_lr, o.base_batch_size, config.batch_size)
    schedule = make_schedule(peak_lr, total_steps, o.warmup_steps)
    ckpts = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints,
                        keep_best=config.keep_best_checkpoints,
                        best_metric=config.best_metric)
    latest = _step_to_resume(config, ckpts)
    # a resumed run restores into the state's shapes: no initial weights are computed
    state = _initial_state(config, model, schedule, dp, abstract=latest is not None)
    train_iter = iter(train_loader)
    state, start = _resume(ckpts, latest, state, train_iter)
    inputs = DeviceInputs.of(clip_config(config))
    train_fn = dp.train_step(mode=config.mode, label_smoothing=o.label_smoothing,
                             inputs=inputs)
    eval_fn = dp.eval_step(mode=config.mode, inputs=inputs)
    log = TrainLog(config, workdir, start, total_steps, schedule, dp.fetch, ckpts)
    state = dp.put_state(state)
    log.start_window()  # the first window's clips/s start after the state's transfer
    run = _Run(config, dp, ckpts, train_iter, val_loader, train_fn, eval_fn, log,
               total_steps, eval_every, ckpt_every)
    return run, state, start


def _build_model(config: Any, dp: DataParallel) -> Any:
    """``config.mode``'s model with ``config.model``'s options, batch norm over ``dp``."""
    m = config.model
    return training_model(config.mode, config.data.num_classes,
                          dropout_ratio=m.dropout_ratio, attention_type=m.attention_type,
                          freeze_rgb=m.freeze_rgb, freeze_pose=m.freeze_pose, remat=m.remat,
                          dtype=m.dtype, bn_axis_name=dp.bn_axis_name, tuning=dp.tuning)


def _initial_state(config: Any, model: Any, schedule: Any, dp: DataParallel, *,
                   abstract: bool = False) -> Any:
    """The replicated train state of ``config.init``'s weights (or ``config.seed``'s),
    with SGD on ``schedule`` (per-stream rates, frozen modules left alone).

    ``abstract``: only its shapes and placement (``jax.ShapeDtypeStruct`` leaves), the
    template a checkpoint is restored into; nothing is initialised or loaded.
    """
    o = config.optimizer
    if abstract:
        variables = variable_shapes(model)
    else:
        variables = initial_variables(model, config.mode, jax.random.PRNGKey(config.seed),
                                      checkpoint=config.init.checkpoint,
                                      rgb_checkpoint=config.init.rgb,
                                      pose_checkpoint=config.init.pose)
    tx = make_optimizer(variables["params"], schedule, momentum=o.momentum,
                        nesterov=o.nesterov, weight_decay=o.weight_decay,
                        clip_norm=o.grad_clip_norm,
                        lr_multipliers={"rgb": o.rgb_lr_mult, "pose": o.pose_lr_mult,
                                        "attention": o.attention_lr_mult},
                        frozen=frozen_modules(model))
    if not abstract:
        return jax.device_put(create_train_state(model, variables, tx, config.seed),
                              dp.replicated)
    shapes = jax.eval_shape(partial(create_train_state, model, tx=tx, seed=config.seed),
                            variables)
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dp.replicated), shapes)


def _step_to_resume(config: Any, ckpts: Checkpoints) -> int | None:
    """The latest checkpoint's step with ``config.resume``, None where there is none;
    FileExistsError where checkpoints exist but resuming was not asked for."""
    latest = ckpts.latest_step()
    if latest is not None and not config.resume:
        raise FileExistsError(
            f"{ckpts.directory} holds checkpoints (latest step {latest}); "
            f"pass --config.resume=True to continue or choose a new workdir")
    return latest


def _resume(ckpts: Checkpoints, latest: int | None, state: Any, train_iter: Any
            ) -> tuple[Any, int]:
    """(state, step) of checkpoint ``latest`` (the loader's position too), else (state, 0)."""
    if latest is None:
        return state, 0
    state = ckpts.restore(latest, state, train_iter)
    if jax.process_index() == 0:
        print(f"resumed from {ckpts.directory / str(latest)}", flush=True)
    return state, latest


def _train_steps(run: _Run, state: Any, start: int, preemption: Preemption
                 ) -> tuple[Any, dict[str, float], int | None]:
    """Steps ``start + 1`` to the last under the step watchdog, validating and saving
    when due. Returns (state, the last validation metrics, the step a preemption
    stopped the run at or None)."""
    f = run.config.faults
    val_metrics: dict[str, float] = {}
    stopped_at = None
    with StepWatchdog(f.step_timeout_s if f.step_timeout_s > 0 else float("inf"),
                      lost_after_s=f.lost_after_s,
                      checkpoint_dir=run.ckpts.directory) as watchdog:
        for step in range(start + 1, run.total_steps + 1):
            batch = run.log.wait.next(run.train_iter)
            state, metrics = run.train_fn(state, run.dp.put_batch(batch))
            watchdog.beat(step, metrics)
            preempted = preemption.reached(step)  # every step, on every process
            run.log.add(step, metrics)
            validated = _evaluate_and_checkpoint(run, state, step, preempted, watchdog)
            if validated is not None:
                val_metrics = validated
            if preempted:
                stopped_at = step
                break
        with watchdog.phase("checkpoint save", f.save_timeout_s or None):
            run.ckpts.wait()
    return state, val_metrics, stopped_at


def _evaluate_and_checkpoint(run: _Run, state: Any, step: int, preempted: bool,
                             watchdog: StepWatchdog) -> dict[str, float] | None:
    """After ``step``: the log row, validation and checkpoint that are due (a preempted
    step saves without validating). Returns the validation metrics when it validated."""
    is_eval = (step % run.eval_every == 0 or step == run.total_steps) and not preempted
    is_ckpt = is_eval or step % run.ckpt_every == 0 or preempted
    if is_ckpt or step % run.config.log_every_steps == 0:
        run.log.flush(step)  # raises before a non-finite state is saved
    val_metrics = None
    if is_eval:
        with watchdog.phase("validation"):
            val_metrics = _validate(run.eval_fn, run.dp, state, run.val_loader, run.config)
        run.log.write_val(step, val_metrics)
    if is_ckpt:
        with watchdog.phase("checkpoint save", run.config.faults.save_timeout_s or None):
            run.ckpts.save(step, run.dp.get_state(state), run.train_iter, val_metrics)
        run.log.restart()
    return val_metrics


def _finish(run: _Run, state: Any, val_metrics: dict[str, float], workdir: Path
            ) -> dict[str, Any]:
    """Export the best (``config.export_best``) or final variables to ``workdir/model``
    and, when asked, draw the attention picture; the result of ``train_and_evaluate``."""
    config, ckpts = run.config, run.ckpts
    if not val_metrics:  # nothing left to train (a finished run resumed): evaluate it
        val_metrics = _validate(run.eval_fn, run.dp, state, run.val_loader, config)
    final_step = ckpts.latest_step()
    export_step = ckpts.best_step() if config.export_best and ckpts.best_step() else final_step
    final_state = run.dp.get_state(state)
    if export_step != final_step:
        final_state = ckpts.restore(export_step, final_state)
        export_metrics = _metrics_of(ckpts, export_step)
    else:
        export_metrics = val_metrics
    model_dir = export_model(workdir / "model", final_state, config, export_step,
                             export_metrics)
    ckpts.close()
    result: dict[str, Any] = dict(val_metrics, step=final_step, model_dir=str(model_dir),
                                  export_step=export_step)
    if config.attention_picture and config.mode == "epam" and jax.process_index() == 0:
        result["attention_picture"] = str(write_attention_picture(
            config, jax.device_get(final_state.variables), run.val_loader,
            workdir / "attention.png"))
    return result


def _eval_batch(eval_fn: Any, dp: DataParallel, state: Any, batch: dict) -> Any:
    return eval_fn(state, dp.put_batch(batch))


def _validate(eval_fn: Any, dp: DataParallel, state: Any, val_loader: Any, config: Any
              ) -> dict[str, float]:
    return evaluate(partial(_eval_batch, eval_fn, dp, state), iter(val_loader),
                    val_loader.num_samples, config.data.num_classes, dp.fetch)


def _metrics_of(ckpts: Checkpoints, step: int) -> dict[str, float]:
    return dict(ckpts.manager.metrics(step) or {})


def _format_metrics(metrics: Mapping[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("top1", "top5", "mean_class_acc"))]
    return "  ".join(f"{k} {metrics[k]:.1f}%" for k in keys)


def export_model(path: Path, state: Any, config: Any, step: int,
                 metrics: Mapping[str, float]) -> Path:
    """Write the state's variables with ``save_variables`` (replacing an older export).

    The description records the clip geometry of ``clip_config(config)`` (frames, sizes,
    sigma, normalisation), so that predict / extract / evaluate / stream run the model on
    clips like the ones it was trained on."""
    from jax.experimental import multihost_utils

    from epam_jax.checkpoints import clip_geometry, model_description, save_variables

    if jax.process_index() == 0 and path.exists():
        shutil.rmtree(path)
    multihost_utils.sync_global_devices("epam_jax export: old model removed")
    variables = jax.device_get(state.variables)
    geometry = clip_geometry(clip_config(config))
    extra = {"step": int(step), "mode": config.mode,
             "val_top1": float(metrics.get(BEST_METRIC, float("nan"))),
             "val_metric": config.best_metric,
             "val_value": float(metrics.get(config.best_metric, float("nan")))}
    if jax.process_count() == 1:
        with disk_write_guard(path, "the exported model", needed_bytes=tree_nbytes(variables)):
            return save_variables(path, variables, geometry=geometry, **extra)
    # Several hosts: the orbax write is collective, the description is written once.
    import orbax.checkpoint as ocp

    from epam_jax.checkpoints import COLLECTIONS, VARIABLES_DIR, write_description

    path = path.absolute()
    meta = model_description(variables, geometry, **extra)
    checkpointer = ocp.StandardCheckpointer()
    with disk_write_guard(path, "the exported model"):
        checkpointer.save(path / VARIABLES_DIR, {c: dict(variables[c]) for c in COLLECTIONS})
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        write_description(path, variables, meta)
    multihost_utils.sync_global_devices("epam_jax export: model written")
    return path


def write_attention_picture(config: Any, variables: Mapping, val_loader: Any,
                            png_path: Path) -> Path:
    """The attention maps of the first validation clip over its frames."""
    from epam_jax.viz import denormalize_rgb, save_attention_pictures

    batch = next(iter(val_loader))
    m = config.model
    model = training_model("epam", config.data.num_classes, attention_type=m.attention_type,
                           dtype=m.dtype, tuning=Tuning.for_devices(jax.local_devices()[:1]))
    first = DeviceInputs.of(clip_config(config))(
        {k: v[:1] for k, v in batch.items() if k in ("rgb", "heatmap", "keypoint")})
    rgb, pose = first["rgb"], first["heatmap"]
    rgb_logits, pose_logits, attention = jax.jit(
        lambda v, r, p: model.apply(v, r, p, train=False, return_attention=True))(
            variables, rgb, pose)
    predicted = int(np.argmax(np.asarray(rgb_logits + pose_logits)[0]))
    title = f"label {int(batch['label'][0])}, predicted {predicted}"
    frames = batch["rgb"][0]
    frames = frames if frames.dtype == np.uint8 else denormalize_rgb(frames)
    paths = save_attention_pictures(frames,
                                    np.asarray(attention[0, ..., 0]), png_path, title=title)
    return Path(paths[0])
