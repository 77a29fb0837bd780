"""One benchmark configuration, run in its own process; prints one ``RESULT {json}`` line.

    python -m benchmarks.worker --framework jax --mode eval --batch 4 --weights DIR
    python -m benchmarks.worker --framework onnxruntime --mode export --batch 1 --weights DIR

A fresh process per configuration keeps the peak-RSS figure (``ru_maxrss``) and
the allocator state of one configuration out of the others. Both frameworks
read the same weights from ``DIR`` (written by ``benchmarks.run``) and make the
same clips from the same seed, so their outputs can be compared. onnxruntime runs the
ONNX export of the JAX model (``epam_jax.export``, written once into ``DIR`` by
``--mode export``) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

RGB_FRAMES, POSE_FRAMES, RGB_SIDE, POSE_SIDE = 16, 48, 224, 56
NUM_CLASSES = 60
LR, MOMENTUM, WEIGHT_DECAY = 0.001, 0.9, 3e-4
TORCH_WEIGHTS = "reference.pt"
FLAX_WEIGHTS = "variables.npz"
ONNX_MODEL = "epam.onnx"
# The rest of the available memory is for the arguments, the compiler's leftovers and the
# allocator's slack (measured: peak RSS = temporaries + 0.4 GB at train batch 8).
REMAT_AUTO_SHARE = 0.75


def make_clips(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rgb, pose, labels)`` in PyTorch layout: normalised-looking RGB, heatmaps in [0, 1)."""
    rng = np.random.default_rng(seed)
    rgb = rng.standard_normal((batch, 3, RGB_FRAMES, RGB_SIDE, RGB_SIDE), dtype=np.float32)
    pose = rng.random((batch, 17, POSE_FRAMES, POSE_SIDE, POSE_SIDE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch)
    return rgb, pose, labels


def make_device_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, keypoints)`` as the loader ships them with device inputs: uint8 NDHWC frames
    and (B, 2, T, 17, 3) keypoints in heatmap pixels with scores in [0.3, 1)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (batch, RGB_FRAMES, RGB_SIDE, RGB_SIDE, 3), dtype=np.uint8)
    kp = np.empty((batch, 2, POSE_FRAMES, 17, 3), np.float32)
    kp[..., :2] = rng.uniform(0.2 * POSE_SIDE, 0.8 * POSE_SIDE, kp[..., :2].shape)
    kp[..., 2] = rng.uniform(0.3, 1.0, kp.shape[:-1])
    return rgb, kp


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(
    fn: Callable[[], Any], reps: int, min_time: float, max_time: float
) -> dict[str, Any]:
    """Time ``fn`` at least ``reps`` times and ``min_time`` seconds (at most ``max_time``).

    Besides the times, records for every repetition the share of the machine's
    CPUs that other processes used meanwhile, so a reader can tell a quiet
    measurement from a contended one.
    """
    times, other = [], []
    start = time.perf_counter()
    while True:
        busy0, own0, t0 = _cpu_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        fn()
        t1 = time.perf_counter()
        busy1, own1 = _cpu_busy_seconds(), _own_cpu_seconds()
        times.append(t1 - t0)
        if busy0 is not None and busy1 is not None:
            foreign = max(0.0, (busy1 - busy0) - (own1 - own0))
            other.append(foreign / ((os.cpu_count() or 1) * (t1 - t0)))
        elapsed = t1 - start
        if len(times) >= reps and elapsed >= min_time:
            break
        if elapsed >= max_time and len(times) >= 2:
            break
    return {
        "times_s": [round(t, 5) for t in times],
        "best_s": min(times),
        "median_s": statistics.median(times),
        "other_load_max": round(max(other), 3) if other else None,
        "other_load_mean": round(statistics.fmean(other), 3) if other else None,
    }


def _xla_bytes(compiled: Any, *kinds: str) -> int | None:
    """Bytes XLA assigned to a compiled function's ``kinds`` ('argument', 'output',
    'temp'), or None where the backend does not report them."""
    try:
        m = compiled.memory_analysis()
        return int(sum(getattr(m, f"{kind}_size_in_bytes") for kind in kinds))
    except Exception:  # not every backend reports it
        return None


def _available_bytes() -> int:
    """Memory available to JAX's buffers: the accelerator's allocator limit, else the
    host's (Linux MemAvailable; else all of it)."""
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# ---------------------------------------------------------------------------
# JAX


def _load_flax(weights: str) -> dict:
    from flax import traverse_util

    with np.load(os.path.join(weights, FLAX_WEIGHTS)) as f:
        flat = {tuple(k.split("/")): f[k] for k in f.files}
    return traverse_util.unflatten_dict(flat)


def optimizer() -> Any:
    """SGD with momentum and weight decay, as the PyTorch side's ``torch.optim.SGD``."""
    import optax

    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, MOMENTUM))


def train_step(state: tuple, rgb: Any, pose: Any, labels: Any, rng: Any, *, model: Any,
               tx: Any, inputs: Any = None) -> tuple[tuple, Any]:
    """One JAX train step on ``state = (params, batch_stats, opt_state)``: forward, backward
    of CE(rgb) + CE(pose), ``tx`` update; returns the new state and the loss. With
    ``inputs`` (a DeviceInputs) ``rgb`` is uint8 and ``pose`` keypoints, finished in the step."""
    import jax
    import optax

    if inputs is not None:
        finished = inputs({"rgb": rgb, "keypoint": pose})
        rgb, pose = finished["rgb"], finished["heatmap"]

    def loss_fn(params, batch_stats):
        (rgb_logits, pose_logits), new = model.apply(
            {"params": params, "batch_stats": batch_stats}, rgb, pose, train=True,
            rngs={"dropout": rng}, mutable=["batch_stats"],
        )
        ce = optax.softmax_cross_entropy_with_integer_labels
        loss = ce(rgb_logits, labels).mean() + ce(pose_logits, labels).mean()
        return loss, new["batch_stats"]

    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss


def run_jax(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from epam_jax import Tuning
    from epam_jax.models import REMAT_SETTINGS, EPAMNet, parse_remat
    from epam_jax.xla_options import compiler_options

    cpu = jax.devices()[0].platform == "cpu"
    runner = args.runner or ("jit" if args.mode == "eval" else "jit+options")
    if args.mode == "train" and cpu:
        # Every call is timed to completion anyway. Dispatched asynchronously, a train step
        # can return and the next one allocate its temporaries before the worker thread has
        # freed the previous step's; glibc's heap then grows to hold both and keeps them
        # (train batch 8 with 12.5 GB of temporaries was killed for memory). Synchronous
        # dispatch frees them before the call returns. Eval keeps JAX's default.
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    dtype = jnp.dtype(args.dtype)
    remat = False if args.remat == "auto" else parse_remat(args.remat)
    tuning = Tuning() if args.tuning == "default" else Tuning.for_devices(jax.devices())
    model = EPAMNet(num_classes=NUM_CLASSES, dtype=dtype, remat=remat, tuning=tuning)
    variables = jax.device_put(_load_flax(args.weights))
    rgb_np, pose_np, labels_np = make_clips(args.batch, args.seed)
    inputs = None
    if args.inputs == "device":
        if args.mode != "train":
            raise SystemExit("--inputs device is for --mode train")
        from epam_jax.data import DeviceInputs

        inputs = DeviceInputs()
        rgb, pose = (jax.device_put(x) for x in make_device_inputs(args.batch, args.seed))
    else:
        rgb = jax.device_put(rgb_np.transpose(0, 2, 3, 4, 1))
        pose = jax.device_put(pose_np.transpose(0, 2, 3, 4, 1))
    labels = jax.device_put(labels_np)
    out: dict[str, Any] = {"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                           "runner": runner, "tuning": repr(tuning),
                           "tuning_choice": args.tuning, "inputs": args.inputs,
                           "input_bytes_per_clip": (rgb.nbytes + pose.nbytes) // args.batch}
    # 'jit': jax.jit with no compiler options, what a user's plain jax.jit(model.apply) gets
    options = compiler_options() if runner == "jit+options" else None

    if args.mode == "eval":
        if runner == "concurrent":
            from epam_jax.concurrent_eval import ConcurrentStreams

            compiled = ConcurrentStreams(model)  # compiles on its first call, timed below
        else:
            forward = jax.jit(lambda v, r, p: model.apply(v, r, p), compiler_options=options)
            t0 = time.perf_counter()
            compiled = forward.lower(variables, rgb, pose).compile()
            out["compile_s"] = time.perf_counter() - t0
            out["xla_buffer_bytes"] = _xla_bytes(compiled, "argument", "output", "temp")
        t0 = time.perf_counter()
        logits = jax.block_until_ready(compiled(variables, rgb, pose))
        out["first_run_s"] = time.perf_counter() - t0
        out.setdefault("compile_s", out["first_run_s"])
        out["logits"] = [np.asarray(x[0], np.float64).round(6).tolist() for x in logits]

        def call() -> None:
            jax.block_until_ready(compiled(variables, rgb, pose))

    else:
        if runner == "concurrent":
            raise SystemExit("--runner concurrent is for --mode eval")
        if runner == "jit+options":
            # the train step's remat ('first', 'all') relies on these options
            out["compiler_options"] = "epam_jax.xla_options.compiler_options() (train)"
        tx = optimizer()
        params = variables["params"]
        state = (params, variables["batch_stats"], tx.init(params))
        rng = jax.random.key(args.seed)

        def compile_step(model):
            step = jax.jit(
                partial(train_step, model=model, tx=tx, inputs=inputs),
                donate_argnums=(0,),
                compiler_options=options,
            )
            t0 = time.perf_counter()
            compiled = step.lower(state, rgb, pose, labels, rng).compile()
            return compiled, time.perf_counter() - t0

        if args.remat == "auto":
            # The plain step, else recomputing the first stages, else every stage: the
            # first whose temporaries take at most REMAT_AUTO_SHARE of the available memory.
            available, tried = _available_bytes(), []
            for choice in REMAT_SETTINGS:
                model = model.clone(remat=parse_remat(choice))
                compiled, out["compile_s"] = compile_step(model)
                tried.append(_xla_bytes(compiled, "temp"))
                if tried[-1] is None or tried[-1] <= REMAT_AUTO_SHARE * available:
                    break
            out["remat_plan"] = {"choice": choice, "temp_bytes_tried": tried,
                                 "available_bytes": available}
            if args.plan:
                return out
        else:
            compiled, out["compile_s"] = compile_step(model)
        out["remat"] = model.remat
        out["xla_buffer_bytes"] = _xla_bytes(compiled, "argument", "output", "temp")
        t0 = time.perf_counter()
        state, loss = compiled(state, rgb, pose, labels, rng)
        out["loss"] = float(jax.block_until_ready(loss))
        out["first_run_s"] = time.perf_counter() - t0
        holder = [state]

        def call() -> None:
            new_state, loss = compiled(holder[0], rgb, pose, labels, rng)
            holder[0] = new_state
            jax.block_until_ready(loss)

    out.update(measure(call, args.reps, args.min_time, args.max_time))
    stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


# ---------------------------------------------------------------------------
# PyTorch


def run_torch(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib

    import torch
    import torch.nn.functional as F

    from converters.reference import build_reference

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch build sees no CUDA device")
    if args.dtype not in ("float32", "bfloat16") or (args.dtype == "bfloat16" and not cuda):
        raise SystemExit(f"PyTorch runs float32, or bfloat16 autocast on CUDA; got {args.dtype} "
                         f"on {args.device}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    # cuDNN picks the fastest algorithm per shape, as a tuned PyTorch pipeline would.
    torch.backends.cudnn.benchmark = cuda
    model = build_reference("epam", num_classes=NUM_CLASSES)
    state = torch.load(os.path.join(args.weights, TORCH_WEIGHTS), weights_only=True)
    model.load_state_dict(state)
    model.to(device)
    rgb_np, pose_np, labels_np = make_clips(args.batch, args.seed)
    rgb, pose = torch.from_numpy(rgb_np).to(device), torch.from_numpy(pose_np).to(device)
    labels = torch.from_numpy(labels_np).to(device)
    out: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                           "device_name": torch.cuda.get_device_name() if cuda else "cpu"}

    def autocast():
        if args.dtype == "bfloat16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if args.mode == "eval":
        model.eval()

        def call() -> Any:
            with torch.inference_mode(), autocast():
                result = model(rgb, pose)
            sync()
            return result

    else:
        model.train()
        opt = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

        def call() -> Any:
            opt.zero_grad(set_to_none=True)
            with autocast():
                rgb_logits, pose_logits = model(rgb, pose)
                loss = F.cross_entropy(rgb_logits.float(), labels) + F.cross_entropy(
                    pose_logits.float(), labels
                )
            loss.backward()
            opt.step()
            sync()
            return loss

    t0 = time.perf_counter()
    first = call()
    out["first_run_s"] = time.perf_counter() - t0
    if args.mode == "eval":
        out["logits"] = [x[0].double().cpu().numpy().round(6).tolist() for x in first]
    else:
        out["loss"] = float(first)
    out.update(measure(call, args.reps, args.min_time, args.max_time))
    if cuda:
        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


# ---------------------------------------------------------------------------
# onnxruntime


def export_onnx(args: argparse.Namespace) -> dict[str, Any]:
    """Write the ONNX export of the benchmark's weights (dynamic batch) into the weights
    directory: ``epam_jax.export.onnx_model`` of EPAMNet with the two heads' logits."""
    import jax

    from epam_jax.checkpoints import LoadedModel
    from epam_jax.cli import atomic_output
    from epam_jax.export import PORTABLE, onnx_model
    from epam_jax.models import EPAMNet

    variables = jax.tree_util.tree_map(np.asarray, _load_flax(args.weights))
    loaded = LoadedModel(EPAMNet(num_classes=NUM_CLASSES), variables,
                         {"model": "epam", "num_classes": NUM_CLASSES})
    t0 = time.perf_counter()
    model = onnx_model(loaded, ("rgb_logits", "pose_logits"), "multiply", RGB_SIDE)
    data = model.SerializeToString()
    with atomic_output(os.path.join(args.weights, ONNX_MODEL)) as tmp:
        tmp.write_bytes(data)
    return {"export_s": time.perf_counter() - t0, "bytes": len(data),
            "tuning": repr(PORTABLE)}


def run_onnxruntime(args: argparse.Namespace) -> dict[str, Any]:
    """Eval of the exported model with onnxruntime's CPUExecutionProvider on the clips the
    other frameworks see (NDHWC)."""
    import onnxruntime as ort

    if args.mode != "eval":
        raise SystemExit("onnxruntime runs --mode eval (or export)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if args.threads > 0:
        options.intra_op_num_threads = args.threads
    t0 = time.perf_counter()
    session = ort.InferenceSession(os.path.join(args.weights, ONNX_MODEL), options,
                                   providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "threads": args.threads,
                           "device": "cpu", "compile_s": time.perf_counter() - t0}
    rgb_np, pose_np, _ = make_clips(args.batch, args.seed)
    feeds = {"rgb": np.ascontiguousarray(rgb_np.transpose(0, 2, 3, 4, 1)),
             "heatmap": np.ascontiguousarray(pose_np.transpose(0, 2, 3, 4, 1))}
    t0 = time.perf_counter()
    logits = session.run(["rgb_logits", "pose_logits"], feeds)
    out["first_run_s"] = time.perf_counter() - t0
    out["logits"] = [np.asarray(x[0], np.float64).round(6).tolist() for x in logits]
    out.update(measure(lambda: session.run(None, feeds), args.reps, args.min_time,
                       args.max_time))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", choices=("jax", "torch", "onnxruntime"), required=True)
    parser.add_argument("--mode", choices=("eval", "train", "export"), required=True,
                        help="'export' (onnxruntime only): write the ONNX model into --weights")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--weights", required=True, help="directory written by benchmarks.run")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype: JAX's model dtype; PyTorch's autocast (CUDA only)")
    parser.add_argument(
        "--remat", choices=("auto", "none", "first", "all"), default="auto",
        help="JAX train step: recompute the first stage of each stream ('first') or every "
        "stage ('all') in the backward pass; 'auto' as little as fits in memory",
    )
    parser.add_argument(
        "--runner",
        choices=("jit", "jit+options", "concurrent"),
        default=None,
        help="JAX: 'jit' is a plain jax.jit(model.apply) with no compiler options (eval's "
        "default); 'jit+options' the same jitted with epam_jax.xla_options.compiler_options() "
        "(train's default: its remat needs them); 'concurrent' (eval only) "
        "epam_jax.concurrent_eval.ConcurrentStreams, the two streams from two host threads "
        "(its compile time includes the first run)",
    )
    parser.add_argument(
        "--tuning", choices=("default", "devices"), default="default",
        help="JAX: the model's tuning, 'default' Tuning() or 'devices' "
        "Tuning.for_devices(jax.devices())",
    )
    parser.add_argument(
        "--inputs", choices=("host", "device"), default="host",
        help="JAX train step: 'host' feeds float32 frames and heatmaps, 'device' uint8 frames "
        "and keypoints finished inside the step (epam_jax.data.DeviceInputs)",
    )
    parser.add_argument(
        "--plan", action="store_true",
        help="with --remat auto: only choose the remat setting and print it (benchmarks.run "
        "then measures that setting in a fresh process)",
    )
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch / onnxruntime intra-op threads (0: the library's default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where PyTorch runs (JAX runs on its default backend)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--max-time", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.plan and (args.framework, args.mode, args.remat) != ("jax", "train", "auto"):
        parser.error("--plan is for --framework jax --mode train --remat auto")
    if args.mode == "export" and args.framework != "onnxruntime":
        parser.error("--mode export is for --framework onnxruntime")
    if args.mode == "export":
        print("RESULT " + json.dumps(export_onnx(args)), flush=True)
        return
    runners = {"jax": run_jax, "torch": run_torch, "onnxruntime": run_onnxruntime}
    result = runners[args.framework](args)
    if args.plan:
        print("RESULT " + json.dumps(result), flush=True)
        return
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["clips_per_s"] = args.batch / result["best_s"]
    result["clips_per_s_median"] = args.batch / result["median_s"]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
