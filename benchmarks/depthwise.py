"""Depthwise (1, k, k) convolution: the model's implementation against XLA's grouped ones.

    python -m benchmarks.depthwise [--batch 1] [--dtypes float32,bfloat16] [--json PATH]

Every depthwise call of EPAM-Net's eval forward is found by tracing the model
(its input shape, kernel size and stride; ``jax.eval_shape``, nothing is
computed). Each distinct call is then timed on JAX's default backend, forward
and forward + backward, written three ways:

- ``shifted``: ``epam_jax.layers.depthwise_conv`` (nine shifted multiply-adds
  over the NDHWC tensor, with its custom backward pass);
- ``grouped3d``: ``lax.conv_general_dilated`` on NDHWC with a (1, k, k) kernel
  and ``feature_group_count = C``;
- ``grouped2d``: the same on frames folded into the batch (NHWC, (k, k) kernel).

The totals weight each call by how often the model makes it, so they read as
"milliseconds of depthwise convolution in one forward (and backward) at this
batch". They are what a per-backend choice of implementation rests on.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.flops import clip_inputs
from epam_jax.layers import Conv, depthwise_conv
from epam_jax.models import EPAMNet


def depthwise_calls(model: EPAMNet | None = None) -> Counter:
    """``{(input shape at batch 1, kernel size, stride): count}`` over one eval forward."""
    model = model or EPAMNet()
    rgb, pose = clip_inputs()
    variables = jax.eval_shape(model.init, jax.random.key(0), rgb, pose)
    calls: Counter = Counter()

    def record(next_fn, args, kwargs, context):
        module = context.module
        if isinstance(module, Conv) and module.kind == "depthwise" and \
                context.method_name == "__call__":
            calls[(tuple(args[0].shape), module.kernel_size, module.stride)] += 1
        return next_fn(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, r, p: model.apply(v, r, p), variables, rgb, pose)
    return calls


def _grouped3d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    k = kernel.shape[1]
    return lax.conv_general_dilated(
        x, kernel, (1, stride, stride), [(0, 0), (k // 2, k // 2), (k // 2, k // 2)],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=x.shape[-1],
    )


def _grouped2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    n, t, h, w, c = x.shape
    k = kernel.shape[1]
    y = lax.conv_general_dilated(
        x.reshape(n * t, h, w, c), kernel[0], (stride, stride), [(k // 2, k // 2)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
    )
    return y.reshape(n, t, *y.shape[1:])


VARIANTS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "shifted": depthwise_conv,
    "grouped3d": _grouped3d,
    "grouped2d": _grouped2d,
}


def _time(fn: Callable[[], Any], min_time: float) -> float:
    """Median seconds per call over back-to-back calls (dispatch overlapped)."""
    jax.block_until_ready(fn())
    samples = []
    start = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - start < min_time:
        calls = 10 if jax.default_backend() != "cpu" else 1
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / calls)
        if len(samples) >= 200:
            break
    return float(np.median(samples))


def _measure(name: str, x: jax.Array, kernel: jax.Array, g: jax.Array, stride: int,
             min_time: float) -> tuple[dict[str, float], np.ndarray]:
    """Forward and forward + backward milliseconds of one variant, and its output."""
    fn = VARIANTS[name]

    def forward(a, b):
        return fn(a, b, stride)

    def backward(a, b, g):  # g an argument: as a constant XLA would fold the padding of it
        _, pullback = jax.vjp(forward, a, b)
        return pullback(g)

    fwd, bwd = jax.jit(forward), jax.jit(backward)
    y = np.asarray(fwd(x, kernel), np.float32)
    return {
        "forward": 1e3 * _time(lambda: fwd(x, kernel), min_time),
        "train": 1e3 * _time(lambda: bwd(x, kernel, g), min_time),
    }, y


def run(batch: int, dtypes: list[str], min_time: float) -> dict[str, Any]:
    calls = depthwise_calls()
    rng = np.random.default_rng(0)
    rows = []
    for (shape, k, stride), count in sorted(calls.items()):
        shape = (batch, *shape[1:])
        for dtype in dtypes:
            x = jnp.asarray(rng.standard_normal(shape), dtype)
            kernel = jnp.asarray(rng.standard_normal((1, k, k, 1, shape[-1])), dtype)
            out = jax.eval_shape(partial(depthwise_conv, stride=stride), x, kernel)
            g = jnp.asarray(rng.standard_normal(out.shape), dtype)
            row = {"shape": shape, "kernel": k, "stride": stride, "count": count,
                   "dtype": dtype, "ms": {}}
            ref = None
            for name in VARIANTS:
                row["ms"][name], y = _measure(name, x, kernel, g, stride, min_time)
                ref = y if ref is None else ref
                row["ms"][name]["rel_diff"] = float(
                    np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
                )
            rows.append(row)
    totals = {
        dtype: {
            name: {
                mode: sum(r["count"] * r["ms"][name][mode] for r in rows if r["dtype"] == dtype)
                for mode in ("forward", "train")
            }
            for name in VARIANTS
        }
        for dtype in dtypes
    }
    return {"batch": batch, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "rows": rows, "totals": totals}


def table(result: dict[str, Any]) -> str:
    lines = [f"depthwise convolutions at batch {result['batch']} on {result['device']} "
             "(ms per call, forward / forward+backward; total weighted by calls per clip)"]
    for r in result["rows"]:
        cells = "  ".join(f"{n} {v['forward']:7.3f}/{v['train']:7.3f}" for n, v in r["ms"].items())
        diff = max(v["rel_diff"] for v in r["ms"].values())
        lines.append(f"  {str(r['shape']):24s} k{r['kernel']} s{r['stride']} x{r['count']:<2d} "
                     f"{r['dtype']:8s} {cells}  max rel diff {diff:.1e}")
    for dtype, per in result["totals"].items():
        cells = "  ".join(f"{n} {v['forward']:8.2f}/{v['train']:8.2f}" for n, v in per.items())
        lines.append(f"  total {dtype:8s} {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated; default float32 on CPU, float32,bfloat16 elsewhere")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--json", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    dtypes = (args.dtypes.split(",") if args.dtypes else
              ["float32"] if jax.default_backend() == "cpu" else ["float32", "bfloat16"])
    result = run(args.batch, dtypes, args.min_time)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
