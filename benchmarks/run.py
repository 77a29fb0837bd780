"""Side-by-side benchmark: the JAX EPAM-Net against the pinned PyTorch reference.

    python -m benchmarks.run [--quick] [--json PATH] [--eval-batches 1,4,16]
                             [--train-batches 2,8] [--dtypes float32,bfloat16]
                             [--torch-threads auto] [--allocator auto|default|tuned|both]
                             [--jax-runners jit,jit+options,concurrent] [--tuning default]
                             [--frameworks jax,torch,onnxruntime] [--ort-threads 0]

One run measures, on the same weights and the same clips (16x224x224 RGB and
48x56x56x17 pose heatmaps): eval throughput, train-step throughput (forward,
backward and SGD with momentum and weight decay on CE(rgb) + CE(pose)), the
first-call compile time of the JAX functions and the peak memory of each
configuration. Every configuration runs in its own process
(``benchmarks.worker``), so its ``ru_maxrss`` is its own. Throughput is the
best of several repetitions (the median is kept in the JSON); each repetition
also records how busy the rest of the machine was.

``--torch-threads auto`` times PyTorch eval at the first batch with 1 and with
2 threads and uses the faster count for the other PyTorch configurations.
The default measures the default path first: JAX eval through a plain
``jax.jit(model.apply)`` (no compiler options) of ``EPAMNet(tuning=Tuning())``
and glibc's default allocator, beside PyTorch at its best thread count. Every
opt-in is its own labelled row, at the first two eval batches only:
``jit+options`` (jitted with ``epam_jax.xla_options.compiler_options()``),
``concurrent`` (``epam_jax.concurrent_eval.ConcurrentStreams``) and, with
``--allocator both`` (the default where JAX runs on the CPU), the fastest JAX
runner and PyTorch again with the tuned allocator: glibc malloc kept from
returning memory to the kernel (``TUNED_MALLOC``) and transparent huge pages for
its heap. Both frameworks free and re-allocate buffers of tens of MB every
call, and re-faulting those pages costs about as much as the arithmetic on a
small VM. The heap is never trimmed: with a 16 GB trim threshold the JAX train
step at batch 8 (19.7 GB of buffers) gave its pages back and re-faulted them
every step (17.6 s a step against 9.2 s). ``--allocator tuned`` runs every
configuration with it, ``default`` none. Each JAX row's speedup is against
PyTorch under the same allocator. The train step always compiles with
``compiler_options()`` (its remat needs them) and dispatches synchronously on
the CPU.

On a GPU, PyTorch runs there too (``--torch-device auto``), in float32 and in
bfloat16 autocast beside JAX's two dtypes, and memory is the device's peak
(XLA's allocator statistics, ``torch.cuda.max_memory_allocated``). JAX does not
preallocate (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set): this process
itself starts JAX, which would otherwise hold 75% of the GPU for its lifetime.

With ``--frameworks jax,torch,onnxruntime`` (opt-in; needs the ``onnx`` extra) the JAX
model is also exported to ONNX once (``epam_jax.export.onnx_model``, dynamic batch, in a
process of its own) and onnxruntime's CPUExecutionProvider runs it at every eval batch on
the same clips and weights: a table of its clips/s beside JAX's default path and the best
PyTorch run, and its logits against JAX's.

Also printed: parameters and FLOPs per stream counted from the model
(``benchmarks.flops``) beside the published figures, and the heatmap
benchmark (``benchmarks.heatmaps``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.worker import FLAX_WEIGHTS, NUM_CLASSES, TORCH_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
TUNED_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(512 << 20),
}
# Transparent huge pages for the heap (glibc >= 2.35; older ones ignore it).
TUNED_GLIBC_TUNABLES = "glibc.malloc.hugetlb=1"


def tuned_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the tuned allocator settings; other glibc tunables are kept."""
    tunables = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNED_GLIBC_TUNABLES]))
    return {**env, **TUNED_MALLOC, "GLIBC_TUNABLES": tunables}


def _csv(kind):
    def parse(text: str):
        return [kind(v) for v in text.split(",") if v.strip()]

    return parse


def prepare_weights(directory: str, seed: int) -> str:
    """Write the same random weights for both frameworks; returns where they came from.

    With torch installed: the reference filled by ``randomize_`` (non-trivial
    BatchNorm statistics) and its conversion. Without: the JAX initialisation only.
    """
    from flax import traverse_util

    try:
        import torch

        from converters import torch_to_flax
        from converters.reference import build_reference, randomize_
    except ImportError:
        import jax

        from epam_jax.models import EPAMNet, init_variables

        variables = init_variables(EPAMNet(num_classes=NUM_CLASSES), jax.random.key(seed))
        source = "JAX initialisation (torch not installed)"
    else:
        reference = randomize_(build_reference("epam", num_classes=NUM_CLASSES), seed)
        torch.save(reference.state_dict(), os.path.join(directory, TORCH_WEIGHTS))
        variables = torch_to_flax(reference.state_dict(), "epam")
        source = f"converters.reference.randomize_(seed={seed}), converted"
    flat = traverse_util.flatten_dict(variables)
    np.savez(
        os.path.join(directory, FLAX_WEIGHTS),
        **{"/".join(k): np.asarray(v, np.float32) for k, v in flat.items()},
    )
    return source


def run_config(
    config: dict[str, Any],
    weights: str,
    env: dict[str, str],
    timing: dict,
    timeout: float,
    plan: bool = False,
) -> dict[str, Any]:
    """Run one configuration in a subprocess; its result dict, or an 'error'.

    ``plan``: only choose the JAX train step's remat setting (``--remat auto``).
    """
    cmd = [
        sys.executable, "-m", "benchmarks.worker",
        "--framework", config["framework"], "--mode", config["mode"],
        "--batch", str(config["batch"]), "--weights", weights,
        "--dtype", config.get("dtype", "float32"),
        "--reps", str(timing["reps"]), "--min-time", str(timing["min_time"]),
        "--max-time", str(timing["max_time"]),
    ]
    if config["framework"] == "torch":
        cmd += ["--threads", str(config.get("threads", 0)), "--device", config["device"]]
    elif config["framework"] == "onnxruntime":
        cmd += ["--threads", str(config.get("threads", 0))]
    else:
        cmd += ["--tuning", config.get("tuning_choice", "default")]
        if config.get("runner"):
            cmd += ["--runner", config["runner"]]
        if config["mode"] == "train":
            cmd += ["--remat", config.get("remat", "auto")] + (["--plan"] if plan else [])
            cmd += ["--inputs", config.get("inputs", "host")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**config, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        killed = proc.returncode in (-9, 137)
        reason = "killed (out of memory?)" if killed else " | ".join(tail[-3:])
        return {**config, "error": f"exit {proc.returncode}: {reason}", "process_s": wall,
                "output_tail": tail[-60:]}
    return {**config, **json.loads(lines[-1][len("RESULT "):]), "process_s": wall}


def _short(dtype: str) -> str:
    return "bf16" if dtype == "bfloat16" else "fp32"


def allocator_of(r: dict[str, Any]) -> str:
    """'default' or 'tuned': the allocator a result ran with."""
    return "tuned" if r.get("allocator") == "tuned" else "default"


def _runner(r: dict[str, Any]) -> str:
    return r.get("runner") or ("jit" if r["mode"] == "eval" else "jit+options")


def jax_label(r: dict[str, Any]) -> str:
    """A JAX configuration's row label: 'jax jit (default)' is the plain path (a bare
    ``jax.jit(model.apply)``, ``Tuning()``, glibc's default allocator); every opt-in is
    named."""
    runner = _runner(r)
    tuning = r.get("tuning_choice", r.get("tuning_name", "default"))
    parts = [f"jax {runner}"]
    if tuning == "devices":
        parts.append("Tuning.for_devices")
    if allocator_of(r) == "tuned":
        parts.append("tuned malloc")
    if len(parts) == 1 and runner == "jit":
        return "jax jit (default)"
    return ", ".join(parts)


def _ort_threads(r: dict[str, Any]) -> str:
    return f"{r['threads']}T" if r.get("threads") else "default threads"


def _label(r: dict[str, Any]) -> str:
    if r["framework"] == "onnxruntime":
        return f"onnxruntime cpu fp32 {_ort_threads(r)}"
    if r["framework"] == "torch":
        where = f"{r['threads']}T" if r["device"] == "cpu" else "cuda"
        malloc = ", tuned malloc" if allocator_of(r) == "tuned" else ""
        return f"torch {_short(r['dtype'])} {where}{malloc}"
    return f"{jax_label(r)} {_short(r['dtype'])}"


def _fmt_rate(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if "error" in r:
        return "failed"
    remat = r.get("remat")
    notes = [n for n, on in (("remat all", remat is True),
                             ("remat first", isinstance(remat, list)),
                             ("default malloc", "allocator_note" in r)) if on]
    if r["framework"] == "torch" and r["device"] == "cpu":
        notes.append(f"{r['threads']}T")
    return f"{r['clips_per_s']:.2f}" + (f" ({', '.join(notes)})" if notes else "")


def _speedup(jax_run: dict[str, Any] | None, torch_run: dict[str, Any] | None) -> str:
    """JAX clips/s over PyTorch's, or '-' where either is missing or failed."""
    if not jax_run or not torch_run or "error" in jax_run or "error" in torch_run:
        return "-"
    return f"{jax_run['clips_per_s'] / torch_run['clips_per_s']:.3f}x"


def _memory(r: dict[str, Any] | None) -> str:
    """GB: the device's peak where the run used a GPU, else the process's peak RSS."""
    if r is None or "error" in r:
        return "-"
    value = r.get("device_peak_bytes", r.get("peak_rss_bytes"))
    return "-" if value is None else f"{value / 2**30:.2f}"


_RUNNER_ORDER = {"jit": 0, "jit+options": 1, "concurrent": 2}


def _jax_order(r: dict[str, Any]) -> tuple:
    return (allocator_of(r) == "tuned", r.get("tuning_choice") == "devices",
            _RUNNER_ORDER.get(_runner(r), 9))


def summarize(results: list[dict[str, Any]], dtypes: list[str]) -> tuple[str, list[dict]]:
    """The side-by-side table and its rows: one row per JAX configuration (mode, batch,
    dtype, runner, tuning, allocator), beside the best PyTorch run (over thread counts)
    in the same mode, batch, dtype and allocator; speedup = JAX / that PyTorch. The
    default path ('jax jit (default)') comes first, then each opt-in."""
    rows = []
    keys = sorted({(r["mode"], r["batch"]) for r in results}, key=lambda k: (k[0] != "eval", k))
    for mode, batch in keys:
        group = [r for r in results if r["mode"] == mode and r["batch"] == batch]
        for dtype in dtypes:
            same = [r for r in group if r.get("dtype", "float32") == dtype]
            best_torch: dict[str, dict | None] = {}
            for alloc in ("default", "tuned"):
                runs = [r for r in same if r["framework"] == "torch" and allocator_of(r) == alloc]
                ok = [r for r in runs if "error" not in r]
                best_torch[alloc] = max(ok, key=lambda r: r["clips_per_s"],
                                        default=runs[0] if runs else None)
            jax_runs = sorted((r for r in same if r["framework"] == "jax"), key=_jax_order)
            for r in jax_runs:
                tr = best_torch[allocator_of(r)]
                rows.append({"mode": mode, "batch": batch, "dtype": dtype,
                             "config": jax_label(r), "jax": r, "torch": tr,
                             "speedup": _speedup(r, tr)})
            for alloc, tr in best_torch.items():  # PyTorch without a JAX row beside it
                if tr is not None and not any(allocator_of(r) == alloc for r in jax_runs):
                    rows.append({"mode": mode, "batch": batch, "dtype": dtype,
                                 "config": "-" if alloc == "default" else "- (tuned malloc)",
                                 "jax": None, "torch": tr, "speedup": "-"})
    head = ["mode", "batch", "dtype", "configuration", "jax clips/s", "torch clips/s",
            "speedup", "jax compile s", "jax GB", "torch GB"]
    lines = [head]
    for row in rows:
        jr = row["jax"]
        compile_s = f"{jr['compile_s']:.1f}" if jr and "compile_s" in jr else "-"
        lines.append([row["mode"], str(row["batch"]), _short(row["dtype"]), row["config"],
                      _fmt_rate(jr), _fmt_rate(row["torch"]), row["speedup"], compile_s,
                      _memory(jr), _memory(row["torch"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for line in lines:
        cells = [c.ljust(w) if i == 3 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        text.append("  ".join(cells))
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text), rows


def output_agreement(results: list[dict[str, Any]]) -> float | None:
    """Largest relative difference of JAX fp32 and PyTorch eval logits (first clip)."""
    worst = None
    for r in results:
        if r["framework"] != "jax" or r["mode"] != "eval" or r.get("dtype") != "float32":
            continue
        for t in results:
            if (t["framework"], t["mode"], t["batch"], t["dtype"]) == (
                "torch", "eval", r["batch"], "float32"
            ):
                if "logits" not in r or "logits" not in t:
                    continue
                a, b = np.asarray(r["logits"]), np.asarray(t["logits"])
                err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
                worst = err if worst is None else max(worst, err)
    return worst


def _eval_rows(results: list[dict[str, Any]], framework: str) -> dict[int, dict[str, Any]]:
    """Per eval batch, the fastest float32 run of ``framework`` under the default allocator
    (JAX: its default path, the plain jit), or the failed one where none succeeded."""
    rows: dict[int, dict[str, Any]] = {}
    for r in results:
        if (r["framework"], r["mode"], r.get("dtype", "float32")) != (framework, "eval",
                                                                       "float32"):
            continue
        if allocator_of(r) != "default" or (framework == "jax" and
                                            jax_label(r) != "jax jit (default)"):
            continue
        old = rows.get(r["batch"])
        if old is None or "error" in old or ("error" not in r and
                                             r["clips_per_s"] > old["clips_per_s"]):
            rows[r["batch"]] = r
    return rows


def onnxruntime_table(results: list[dict[str, Any]]) -> str | None:
    """onnxruntime's eval clips/s per batch beside JAX's default path and the best PyTorch
    run (float32, default allocator); None when onnxruntime did not run."""
    ort = _eval_rows(results, "onnxruntime")
    if not ort:
        return None
    jax_rows, torch_rows = _eval_rows(results, "jax"), _eval_rows(results, "torch")

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
        if not a or not b or "error" in a or "error" in b:
            return "-"
        return f"{a['clips_per_s'] / b['clips_per_s']:.3f}x"

    head = ["batch", "onnxruntime clips/s", "jax jit (default) clips/s", "torch clips/s",
            "ort / jax", "ort / torch", "ort GB"]
    lines = [head]
    for batch in sorted(ort):
        o, j, t = ort[batch], jax_rows.get(batch), torch_rows.get(batch)
        rate = "failed" if "error" in o else f"{o['clips_per_s']:.2f} ({_ort_threads(o)})"
        lines.append([str(batch), rate, _fmt_rate(j), _fmt_rate(t), ratio(o, j), ratio(o, t),
                      _memory(o)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def onnxruntime_agreement(results: list[dict[str, Any]]) -> float | None:
    """Largest relative difference of onnxruntime's and JAX's float32 eval logits (first
    clip) at the same batch."""
    jax_rows, worst = _eval_rows(results, "jax"), None
    for batch, o in _eval_rows(results, "onnxruntime").items():
        j = jax_rows.get(batch)
        if not j or "logits" not in o or "logits" not in j:
            continue
        a, b = np.asarray(o["logits"]), np.asarray(j["logits"])
        err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
        worst = err if worst is None else max(worst, err)
    return worst


def onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("jax2onnx", "onnx", "onnxruntime"))


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["cpu"] = platform.processor()
    import jax

    info["jax"] = jax.__version__
    info["jax_backend"] = jax.default_backend()
    info["jax_devices"] = [d.device_kind for d in jax.devices()]
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    return info


def build_parser() -> argparse.ArgumentParser:
    """The command line: what to measure, then how."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_configuration_args(parser)
    _add_measurement_args(parser)
    return parser


def _add_configuration_args(parser: argparse.ArgumentParser) -> None:
    """The configurations: batches, dtypes, frameworks, devices, runners, allocator."""
    parser.add_argument("--quick", action="store_true",
                        help="eval batch 1 and train batch 2 only, fewer repetitions")
    parser.add_argument("--eval-batches", type=_csv(int), default=[1, 4, 16])
    parser.add_argument("--train-batches", type=_csv(int), default=[2, 8])
    parser.add_argument("--dtypes", type=_csv(str), default=None,
                        help="compute dtypes: JAX's model dtype, PyTorch's autocast (on CUDA; "
                        "on CPU PyTorch runs float32 only); default float32 on CPU, which has "
                        "no fast bfloat16 arithmetic, float32,bfloat16 elsewhere")
    parser.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="'auto': CUDA where JAX runs on a GPU and torch sees one, else CPU")
    parser.add_argument("--torch-threads", default="auto",
                        help="on CPU: 'auto' (try 1 and 2 at the first eval batch), or e.g. "
                        "'1' or '1,2'")
    parser.add_argument(
        "--jax-runners",
        type=_csv(str),
        default=None,
        help="JAX eval through 'jit' (a plain jax.jit(model.apply), no compiler options: the "
        "default path), 'jit+options' (jitted with epam_jax.xla_options.compiler_options()) "
        "and/or 'concurrent' (epam_jax.concurrent_eval.ConcurrentStreams); the first runs at "
        "every eval batch, the others (opt-ins) at the first two; default all three on CPU, "
        "jit,jit+options elsewhere. The train step always compiles with compiler_options() "
        "(its remat needs them)",
    )
    parser.add_argument(
        "--tuning", choices=("default", "devices"), default="default",
        help="the JAX model's tuning: 'default' Tuning() (what EPAMNet() gets), 'devices' "
        "Tuning.for_devices(jax.devices()) (the same on CPU)",
    )
    parser.add_argument(
        "--allocator",
        choices=("auto", "default", "tuned", "both"),
        default="auto",
        help="glibc malloc for both frameworks: 'default' leaves it alone; 'tuned' sets "
        "TUNED_MALLOC for every configuration; 'both' runs every configuration with the "
        "default first, then the fastest JAX eval runner and PyTorch again with the tuned "
        "allocator at the first two eval batches (opt-in rows). 'auto': both where JAX runs "
        "on the CPU, default elsewhere",
    )
    parser.add_argument("--frameworks", type=_csv(str), default=["jax", "torch"],
                        help="any of jax, torch, onnxruntime (eval only, on the CPU: the ONNX "
                        "export of the JAX model; needs pip install 'epam-jax[onnx]')")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: its default, one per core)")
    parser.add_argument("--remat", choices=("auto", "none", "first", "all"), default="auto",
                        help="JAX train step with remat of the first stage of each stream "
                        "('first') or every stage ('all'); 'auto' as little as fits in memory")


def _add_measurement_args(parser: argparse.ArgumentParser) -> None:
    """How long each measurement runs, the extra sections and the JSON report."""
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--max-time", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flops", action="store_true")
    parser.add_argument("--no-heatmaps", action="store_true")
    parser.add_argument("--json", help="write every figure to this JSON file")


@dataclasses.dataclass
class Bench:
    """One benchmark run: its settled settings, the weights' directory and every result.

    ``measure(config)`` runs one configuration in its own process, prints its line and
    appends its result to ``results``.
    """

    args: argparse.Namespace
    timing: dict[str, float]
    envs: dict[str, dict[str, str]]  # 'default' and 'tuned' allocator environments
    torch_device: str
    torch_dtypes: list[str]
    runners: list[str]
    weights: str = ""
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def first_allocator(self) -> str:
        """The allocator of the main pass: tuned only with ``--allocator tuned``."""
        return "tuned" if self.args.allocator == "tuned" else "default"

    @property
    def opt_in_batches(self) -> list[int]:
        """Opt-in rows (other runners, the tuned allocator): the first two eval batches."""
        return self.args.eval_batches[:2]

    def jax_config(self, mode: str, batch: int, dtype: str, runner: str,
                   allocator: str) -> dict[str, Any]:
        """A JAX configuration with ``--remat`` and ``--tuning``."""
        return {"framework": "jax", "mode": mode, "batch": batch, "dtype": dtype,
                "remat": self.args.remat, "runner": runner,
                "tuning_choice": self.args.tuning, "allocator": allocator}

    def torch_config(self, mode: str, batch: int, dtype: str, threads: int,
                     allocator: str) -> dict[str, Any]:
        """A PyTorch configuration on ``torch_device``."""
        return {"framework": "torch", "mode": mode, "batch": batch, "dtype": dtype,
                "threads": threads, "device": self.torch_device, "allocator": allocator}

    def run(self, config: dict[str, Any], env: dict[str, str], plan: bool = False
            ) -> dict[str, Any]:
        """``run_config`` with this run's weights, timing and timeout."""
        return run_config(config, self.weights, env, self.timing, self.args.timeout,
                          plan=plan)

    def measure(self, config: dict[str, Any]) -> dict[str, Any]:
        """Run ``config`` (a JAX train step with ``--remat auto`` chooses its remat first),
        record the result and print its line."""
        allocator = config["allocator"]
        print(f"  {config['mode']:5s} batch {config['batch']:2d} {_label(config):30s} ...",
              end=" ", flush=True)
        plan = None
        if config["framework"] == "jax" and config["mode"] == "train" and \
                config["remat"] == "auto":
            # choose in a process of its own, with the default allocator, so the measured
            # process compiles one step and its heap holds nothing of the others
            plan = self.run(config, self.envs["default"], plan=True)
            if "error" in plan:
                self.results.append(plan)
                print(f"choosing remat: {plan['error']}")
                return plan
            plan = plan["remat_plan"]
            config = {**config, "remat": plan["choice"]}
        r = self.run(config, self.envs[allocator])
        if plan is not None:
            r["remat_plan"] = plan
        if "killed" in r.get("error", "") and allocator == "tuned" and \
                self.args.allocator == "tuned":
            # glibc holding freed memory can push a run that fits over the edge: retry once
            # with the default allocator, and say so in the result
            print("killed; again with the default allocator ...", end=" ", flush=True)
            r = {**self.run(config, self.envs["default"]), "allocator": "default",
                 "allocator_note": "default (the tuned one ran out of memory)"}
        self.results.append(r)
        _print_result(r)
        return r


def _print_result(r: dict[str, Any]) -> None:
    """The end of a configuration's line: its error, or clips/s, memory and compile time."""
    if "error" in r:
        print(r["error"])
        return
    extra = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
    device = (f", device peak {r['device_peak_bytes'] / 2**30:.2f} GB"
              if "device_peak_bytes" in r else "")
    print(f"{r['clips_per_s']:.2f} clips/s (median {r['clips_per_s_median']:.2f}), "
          f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GB{device}{extra}, "
          f"other load <= {r['other_load_max']}")


def _plain_env() -> dict[str, str]:
    """The configurations' environment: this one with the repository on PYTHONPATH."""
    # This process asks JAX for its backend; with XLA's default it would then hold 75% of a
    # GPU's memory for its lifetime and the configurations' processes would run short.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    plain_env = dict(os.environ)
    plain_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), plain_env.get("PYTHONPATH")])
    )
    return plain_env


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace
          ) -> tuple[Bench, dict[str, Any]]:
    """Apply ``--quick``, look at the machine and settle the allocator, dtypes, frameworks,
    PyTorch's device and the JAX runners (``args`` is updated); (bench, machine info)."""
    if args.quick:
        args.eval_batches, args.train_batches = args.eval_batches[:1], args.train_batches[:1]
        args.reps, args.min_time = 3, 1.0
    timing = {"reps": args.reps, "min_time": args.min_time, "max_time": args.max_time}
    plain_env = _plain_env()
    info = machine()
    if args.allocator == "auto":
        args.allocator = "both" if info["jax_backend"] == "cpu" else "default"
    envs = {"default": plain_env, "tuned": tuned_env(plain_env)}
    print(f"machine: {info.get('cpu')}, {info['cpus']} CPUs, jax {info['jax']} "
          f"({info['jax_backend']}: {', '.join(info['jax_devices'])}), torch {info['torch']}")
    if info["jax_backend"] == "cpu":
        print("no GPU visible to JAX: GPU figures are not measured in this run")
    if args.dtypes is None:
        args.dtypes = ["float32"] if info["jax_backend"] == "cpu" else ["float32", "bfloat16"]
    _check_frameworks(parser, args, info)
    torch_device = _torch_device(args, info)
    torch_dtypes = args.dtypes if torch_device == "cuda" else ["float32"]
    runners = _jax_runners(parser, args, info)
    return Bench(args, timing, envs, torch_device, torch_dtypes, runners), info


def _check_frameworks(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      info: dict[str, Any]) -> None:
    """Refuse unknown ``--frameworks``; drop (and say so) those not installed."""
    if not set(args.frameworks) <= {"jax", "torch", "onnxruntime"}:
        parser.error(f"--frameworks takes jax, torch and onnxruntime, got {args.frameworks}")
    if "onnxruntime" in args.frameworks and not onnxruntime_available():
        args.frameworks = [f for f in args.frameworks if f != "onnxruntime"]
        print("jax2onnx/onnxruntime are not installed (pip install 'epam-jax[onnx]'): no "
              "onnxruntime rows")
    if info["torch"] is None and "torch" in args.frameworks:
        args.frameworks = [f for f in args.frameworks if f != "torch"]
        print("torch is not installed: JAX only")


def _torch_device(args: argparse.Namespace, info: dict[str, Any]) -> str:
    """'cuda' or 'cpu' for PyTorch (``--torch-device auto``: CUDA beside JAX on a GPU)."""
    torch_device = args.torch_device
    if torch_device == "auto":
        on_gpu = info["jax_backend"] == "gpu" and info.get("torch_cuda")
        torch_device = "cuda" if on_gpu else "cpu"
    if torch_device == "cpu" and info["jax_backend"] != "cpu" and "torch" in args.frameworks:
        print("note: PyTorch runs on the CPU and JAX on the GPU; speedups compare unlike devices")
    return torch_device


def _jax_runners(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 info: dict[str, Any]) -> list[str]:
    """``--jax-runners``, by default all three on the CPU and no 'concurrent' elsewhere."""
    runners = args.jax_runners
    if runners is None:
        runners = ["jit", "jit+options", "concurrent"] if info["jax_backend"] == "cpu" \
            else ["jit", "jit+options"]
    if not runners or not set(runners) <= {"jit", "jit+options", "concurrent"}:
        parser.error(f"--jax-runners takes 'jit', 'jit+options' and 'concurrent', got {runners}")
    return runners


def export_onnx(bench: Bench) -> dict[str, Any] | None:
    """Export the JAX model to ONNX once (onnxruntime rows only); its result. A failed
    export is recorded as a failed eval and drops onnxruntime from the frameworks."""
    args = bench.args
    if "onnxruntime" not in args.frameworks or not args.eval_batches:
        return None
    print("  onnx  export of the JAX model (epam_jax.export.onnx_model) ...", end=" ",
          flush=True)
    onnx_export = bench.run({"framework": "onnxruntime", "mode": "export", "batch": 1},
                            bench.envs["default"])
    if "error" in onnx_export:
        print(onnx_export["error"])
        bench.results.append({**onnx_export, "mode": "eval"})
        args.frameworks = [f for f in args.frameworks if f != "onnxruntime"]
    else:
        print(f"{onnx_export['export_s']:.1f} s, {onnx_export['bytes'] / 2**20:.1f} MiB")
    return onnx_export


def _torch_threads(bench: Bench) -> tuple[list[int], bool]:
    """PyTorch's thread counts to run, and whether to keep the fastest after the first
    batch (``--torch-threads auto``). On CUDA: PyTorch's own count (the GPU works)."""
    if bench.torch_device == "cuda":
        return [0], False
    if bench.args.torch_threads == "auto":
        return ([1, 2] if (os.cpu_count() or 1) > 1 else [1]), True
    return _csv(int)(bench.args.torch_threads), False


def measure_all(bench: Bench) -> list[int]:
    """Every eval, then every train batch, with the main pass's allocator; returns the
    PyTorch thread counts left for the opt-in rows."""
    torch_threads, auto = _torch_threads(bench)
    for mode, batches in (("eval", bench.args.eval_batches),
                          ("train", bench.args.train_batches)):
        for batch in batches:
            torch_threads = _measure_batch(bench, mode, batch, torch_threads, auto)
    return torch_threads


def _measure_batch(bench: Bench, mode: str, batch: int, torch_threads: list[int],
                   auto: bool) -> list[int]:
    """JAX (each dtype and runner), PyTorch (each dtype and thread count) and, in eval,
    onnxruntime at one batch; returns the thread counts for the next batches."""
    args, allocator = bench.args, bench.first_allocator
    if "jax" in args.frameworks:
        for dtype in args.dtypes:
            if mode == "train":
                chosen = ["jit+options"]
            else:
                chosen = bench.runners if batch in bench.opt_in_batches else bench.runners[:1]
            for runner in chosen:
                bench.measure(bench.jax_config(mode, batch, dtype, runner, allocator))
    if "torch" in args.frameworks:
        for dtype in bench.torch_dtypes:
            for threads in torch_threads:
                bench.measure(bench.torch_config(mode, batch, dtype, threads, allocator))
        if auto and len(torch_threads) > 1:  # the last results are this batch's torch runs
            torch_threads = _fastest_threads(bench.results, torch_threads)
    if "onnxruntime" in args.frameworks and mode == "eval":
        bench.measure({"framework": "onnxruntime", "mode": "eval", "batch": batch,
                       "dtype": "float32", "threads": args.ort_threads, "device": "cpu",
                       "allocator": allocator})
    return torch_threads


def _fastest_threads(results: list[dict[str, Any]], torch_threads: list[int]) -> list[int]:
    """The thread count of the fastest of the last ``len(torch_threads)`` results."""
    tried = [r for r in results[-len(torch_threads):] if "error" not in r]
    if not tried:
        return torch_threads
    best = max(tried, key=lambda r: r["clips_per_s"])
    print(f"  torch: using {best['threads']} thread(s) from here on")
    return [best["threads"]]


def measure_tuned_allocator(bench: Bench, torch_threads: list[int]) -> None:
    """With ``--allocator both``: the fastest JAX eval runner and PyTorch again under the
    tuned allocator at the opt-in batches."""
    args = bench.args
    if args.allocator != "both" or not bench.opt_in_batches:
        return
    print("  opt-in: the tuned allocator (TUNED_MALLOC) for the fastest JAX eval runner "
          "and PyTorch")
    for batch in bench.opt_in_batches:
        for dtype in args.dtypes:
            if "jax" in args.frameworks:
                done = [r for r in bench.results if r["framework"] == "jax"
                        and r["mode"] == "eval" and r["batch"] == batch
                        and r["dtype"] == dtype and "error" not in r]
                if done:
                    best = max(done, key=lambda r: r["clips_per_s"])
                    bench.measure(bench.jax_config("eval", batch, dtype, best["runner"],
                                                   "tuned"))
            if "torch" in args.frameworks and dtype in bench.torch_dtypes:
                for threads in torch_threads:
                    bench.measure(bench.torch_config("eval", batch, dtype, threads, "tuned"))


def print_comparison(bench: Bench, info: dict[str, Any]) -> float | None:
    """The side-by-side table and the JAX/PyTorch logits agreement (returned)."""
    table, _ = summarize(bench.results, bench.args.dtypes)
    print()
    print("Throughput in clips/s (best of the repetitions); speedup = JAX / best PyTorch in "
          f"the same dtype and allocator; PyTorch on {bench.torch_device}; GB: "
          + ("device peak" if info["jax_backend"] != "cpu" else "peak RSS"))
    print(table)
    agreement = output_agreement(bench.results)
    if agreement is not None:
        print(f"eval logits, JAX fp32 vs PyTorch on the same clips: max relative difference "
              f"{agreement:.1e}")
    return agreement


def print_onnxruntime(results: list[dict[str, Any]]) -> float | None:
    """onnxruntime's table and its logits agreement with JAX (returned), where it ran."""
    ort_table = onnxruntime_table(results)
    ort_agreement = onnxruntime_agreement(results)
    if ort_table is not None:
        print()
        print("onnxruntime (CPUExecutionProvider, the ONNX export of the same weights) beside "
              "JAX's default path and the best PyTorch run, eval fp32, clips/s; GB: peak RSS")
        print(ort_table)
    if ort_agreement is not None:
        print(f"eval logits, onnxruntime vs JAX fp32 on the same clips: max relative "
              f"difference {ort_agreement:.1e}")
    return ort_agreement


def flops_section() -> dict[str, Any]:
    """Print parameters and FLOPs per stream; their report entry."""
    from benchmarks import flops

    counted, xla = flops.count(), flops.xla_cost()
    print()
    print("Parameters and FLOPs per clip, counted from the model (FLOP = 2 MAC):")
    print(flops.table(counted, xla))
    return {"counted": counted, "xla_gflops": xla, "claims": flops.CLAIMS}


def heatmaps_section() -> dict[str, Any] | None:
    """Run and print the heatmap benchmark; its report entry, None where unavailable."""
    try:
        from benchmarks import heatmaps
    except ImportError as exc:
        print(f"\nheatmap benchmark unavailable: {exc}")
        return None
    hm = heatmaps.run()
    print()
    print(f"Heatmaps (batch {hm['batch']}, {hm['persons']} persons, {hm['frames']} "
          f"frames): numpy {hm['numpy_clips_per_s']:.1f} clips/s, JAX "
          f"{hm['jax_clips_per_s']:.1f} clips/s on {hm['device']}, "
          f"max |diff| {hm['max_abs_diff']:.1e}")
    return hm


def main(argv: list[str] | None = None) -> None:
    """Measure every configuration, print the tables and write ``--json``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    bench, info = setup(parser, args)
    with tempfile.TemporaryDirectory(prefix="epam_bench_") as weights:
        bench.weights = weights
        source = prepare_weights(weights, args.seed)
        print(f"weights: {source}; allocator: {args.allocator}")
        onnx_export = export_onnx(bench)
        torch_threads = measure_all(bench)
        measure_tuned_allocator(bench, torch_threads)
    agreement = print_comparison(bench, info)
    ort_agreement = print_onnxruntime(bench.results)
    tuned = bench.envs["tuned"]
    report: dict[str, Any] = {
        "machine": info,
        "settings": {**vars(args), "weights": source,
                     "allocator_env": {k: tuned[k] for k in (*TUNED_MALLOC, "GLIBC_TUNABLES")
                                       if tuned.get(k) != os.environ.get(k)}},
        "results": bench.results,
        "logits_max_rel_diff": agreement,
        "onnx_export": onnx_export,
        "onnxruntime_logits_max_rel_diff": ort_agreement,
    }
    if not args.no_flops:
        report["flops"] = flops_section()
    if not args.no_heatmaps and (hm := heatmaps_section()) is not None:
        report["heatmaps"] = hm
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
