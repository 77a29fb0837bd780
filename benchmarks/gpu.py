"""One prepared GPU benchmark (H100/H200): the plain JAX path beside PyTorch, in <= 8 minutes.

    python -m benchmarks.gpu [--budget-s 420] [--out DIR]
    python -m benchmarks.gpu --smoke --out /tmp/gpu-smoke   # tiny, runs on a CPU too

Measured, each configuration in its own process (``benchmarks.worker``), on the
same random weights and clips (16x224x224 RGB + 48x56x56x17 pose):

* JAX eval through a plain ``jax.jit(model.apply)`` (no compiler options) of
  ``EPAMNet(tuning=Tuning.for_devices(jax.devices()))``, float32 and bfloat16
  (model dtype; the parameters stay float32), at batch 1, 16 and 64;
* the JAX train step (forward, backward, SGD with momentum and weight decay on
  CE(rgb) + CE(pose)), plain jit, at batch 8 and 32 in both dtypes;
* one row of the default ``Tuning()`` (eval, batch 64, bfloat16): the default
  compiles and runs on a GPU;
* PyTorch (the pinned reference) on CUDA, float32 and bfloat16 autocast, at the
  same batches, where torch sees a CUDA device; else the reason is recorded.

A failure (an XLA abort kills only its worker) is recorded and the rest go on;
past ``--budget-s`` seconds the remaining configurations are recorded as
skipped, and a running one is stopped at the deadline. A plain-jit JAX
configuration that fails is measured once more jitted with
``compiler_options()`` (a row of its own; ``--no-fallback``: not). The JSON is rewritten
after every configuration: ``benchmarks/results/<device>-<date>/gpu.json``
unless ``--out DIR``. ``--smoke``: eval at batch 1 only, few repetitions (and
PyTorch float32 on the CPU where there is no CUDA), to try the script anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.run import ROOT, machine, output_agreement, prepare_weights, run_config

DTYPES = ("float32", "bfloat16")
EVAL_BATCHES, TRAIN_BATCHES = (1, 16, 64), (8, 32)
DEFAULT_TUNING_ROW = {"mode": "eval", "batch": 64, "dtype": "bfloat16"}


def slug(device_kind: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'cpu' -> 'cpu'."""
    name = re.sub(r"^nvidia\s+", "", device_kind.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "device"


def plan(smoke: bool, torch_device: str | None) -> list[dict[str, Any]]:
    """The configurations in the order they run (the most wanted first)."""
    eval_batches, train_batches = ((1,), ()) if smoke else (EVAL_BATCHES, TRAIN_BATCHES)
    configs: list[dict[str, Any]] = []

    def add(mode: str, batch: int) -> None:
        for dtype in DTYPES:
            configs.append({"framework": "jax", "mode": mode, "batch": batch, "dtype": dtype,
                            "runner": "jit", "tuning_choice": "devices", "remat": "auto"})
            if torch_device is not None and (torch_device == "cuda" or dtype == "float32"):
                configs.append({"framework": "torch", "mode": mode, "batch": batch,
                                "dtype": dtype, "threads": 0, "device": torch_device})

    for batch in eval_batches:
        add("eval", batch)
    for batch in train_batches:
        add("train", batch)
        # what training runs by default: uint8 frames and keypoints, heatmaps on the device
        configs.append({"framework": "jax", "mode": "train", "batch": batch,
                        "dtype": DTYPES[-1], "runner": "jit", "tuning_choice": "devices",
                        "remat": "auto", "inputs": "device"})
    row = {**DEFAULT_TUNING_ROW, "batch": 1} if smoke else DEFAULT_TUNING_ROW
    configs.append({"framework": "jax", **row, "runner": "jit", "tuning_choice": "default"})
    return configs


def label(r: dict[str, Any]) -> str:
    if r["framework"] == "torch":
        return f"torch {r['device']}" + (" autocast" if r["dtype"] == "bfloat16" else "")
    tuning = "Tuning()" if r.get("tuning_choice") == "default" else "Tuning.for_devices"
    device = ", device inputs" if r.get("inputs") == "device" else ""
    return f"jax {r.get('runner', 'jit')}, {tuning}{device}"


def _rate(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return "skipped"
    if "error" in r:
        return "failed"
    return f"{r['clips_per_s']:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    """One line per JAX configuration beside PyTorch in the same mode, batch and dtype."""
    def ok(r):
        return r is not None and "clips_per_s" in r and "error" not in r

    head = ["mode", "batch", "dtype", "configuration", "jax clips/s", "compile s", "torch clips/s",
            "jax/torch", "jax GB", "torch GB"]
    lines = [head]
    for r in (r for r in results if r["framework"] == "jax"):
        t = next((t for t in results if t["framework"] == "torch" and
                  (t["mode"], t["batch"], t["dtype"]) == (r["mode"], r["batch"], r["dtype"])),
                 None)
        ratio = f"{r['clips_per_s'] / t['clips_per_s']:.2f}x" if ok(r) and ok(t) else "-"

        def gb(x):
            value = x.get("device_peak_bytes", x.get("peak_rss_bytes")) if ok(x) else None
            return "-" if value is None else f"{value / 2**30:.2f}"

        compile_s = f"{r['compile_s']:.1f}" if ok(r) and "compile_s" in r else "-"
        lines.append([r["mode"], str(r["batch"]), "bf16" if r["dtype"] == "bfloat16" else "fp32",
                      label(r), _rate(r), compile_s, _rate(t), ratio, gb(r), gb(t)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i == 3 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def torch_status(smoke: bool) -> tuple[str | None, str | None]:
    """(where PyTorch runs or None, why not / a note)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not importable: {exc}"
    if torch.cuda.is_available():
        return "cuda", None
    why = f"torch {torch.__version__} sees no CUDA device"
    return ("cpu", why + "; --smoke: PyTorch float32 on the CPU") if smoke else (None, why)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="past this many seconds, skip the remaining configurations")
    parser.add_argument("--smoke", action="store_true",
                        help="eval at batch 1 only, few repetitions (runs on a CPU)")
    parser.add_argument("--out", help="directory for gpu.json (default "
                        "benchmarks/results/<device>-<date>)")
    parser.add_argument("--no-fallback", action="store_true",
                        help="where a plain-jit JAX configuration fails, do not measure it "
                        "again jitted with epam_jax.xla_options.compiler_options()")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.smoke else 5
    args.timing = ({"reps": args.reps, "min_time": 0.0, "max_time": 5.0} if args.smoke
                   else {"reps": args.reps, "min_time": 1.0, "max_time": 8.0})
    return args


def main(argv: list[str] | None = None) -> None:
    start = time.monotonic()
    args = parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    info = machine()
    device = info["jax_devices"][0]
    out_dir = Path(args.out) if args.out else (
        ROOT / "benchmarks" / "results" / f"{slug(device)}-{datetime.date.today().isoformat()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "gpu.json"
    torch_device, torch_note = torch_status(args.smoke)
    configs = plan(args.smoke, torch_device)
    print(f"{device} ({info['jax_backend']}), jax {info['jax']}, torch {info['torch']}; "
          f"{len(configs)} configurations, budget {args.budget_s:.0f} s")
    if torch_note:
        print(f"PyTorch: {torch_note}")
    if info["jax_backend"] == "cpu" and not args.smoke:
        print("warning: JAX sees no GPU", file=sys.stderr)
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"machine": info, "settings": {**vars(args), "torch": torch_note},
                              "results": results}

    def save() -> None:
        report["logits_max_rel_diff"] = output_agreement(
            [r for r in results if "logits" in r and r.get("tuning_choice") != "default"])
        out_path.write_text(json.dumps(report, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="epam_gpu_") as weights:
        report["settings"]["weights"] = prepare_weights(weights, args.seed)
        deadline = start + args.budget_s
        for config in configs:
            left = deadline - time.monotonic()
            name = f"{config['mode']:5s} batch {config['batch']:2d} {config['dtype']:8s} " \
                   f"{label(config)}"
            if left <= 1:
                results.append({**config, "skipped": f"budget of {args.budget_s:.0f} s spent"})
                print(f"  {name}: skipped (budget)")
                save()
                continue
            print(f"  {name} ...", end=" ", flush=True)
            try:
                r = run_config(config, weights, env, args.timing, timeout=min(left, 300.0))
            except Exception as exc:  # keep the rest whatever happens to one
                r = {**config, "error": f"{type(exc).__name__}: {exc}"}
            results.append(r)
            if "error" in r:
                print(r["error"])
                if config["framework"] == "jax" and config["runner"] == "jit" and \
                        not args.no_fallback and deadline - time.monotonic() > 1:
                    # e.g. XLA's Triton GEMM abort: the same with compiler_options(), labelled
                    config = {**config, "runner": "jit+options", "fallback_for": "jit"}
                    print(f"  {name}, again with compiler_options() ...", end=" ", flush=True)
                    r = run_config(config, weights, env, args.timing,
                                   timeout=min(deadline - time.monotonic(), 300.0))
                    results.append(r)
                    print(r.get("error") or f"{r['clips_per_s']:.2f} clips/s")
            else:
                extra = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
                print(f"{r['clips_per_s']:.2f} clips/s (median {r['clips_per_s_median']:.2f})"
                      f"{extra}")
            save()
    report["wall_s"] = round(time.monotonic() - start, 1)
    save()
    print()
    print("clips/s, best of the repetitions; jax/torch: JAX over PyTorch in the same mode, "
          "batch and dtype; GB: device peak (GPU) else peak RSS")
    print(table(results))
    if report["logits_max_rel_diff"] is not None:
        print(f"eval logits, JAX fp32 vs PyTorch fp32: max relative difference "
              f"{report['logits_max_rel_diff']:.1e}")
    print(f"wrote {out_path} ({report['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
