"""Parameters and multiply-accumulates of EPAM-Net, counted from the Flax model itself.

    python -m benchmarks.flops

Parameters are summed over the variable tree per component. MACs come from
every ``Conv`` and ``Dense`` call of one clip's eval forward, traced abstractly
(``jax.eval_shape``, nothing is computed): output positions times kernel size,
so a depthwise (1, 3, 3) conv on C channels counts 9 * C per position and a
1x1x1 conv cin * cout. The attention's 7-tap temporal Conv1d, BatchNorms,
pooling and activations are left out, as FLOP counters of the original do.
FLOPs = 2 * MACs. XLA's own estimate (``cost_analysis`` of the lowered eval
forward, which also counts elementwise work) is given beside it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from epam_jax.layers import Conv
from epam_jax.models import EPAMNet, make_stream

CLAIMS = {
    "spec (measured on the original)": {
        "params": 2_538_717,
        "gflops": 15.24,
        "rgb_gflops": 8.52,
        "pose_gflops": 6.71,
        "rgb_params": 1_980_030,
        "pose_params": 519_580,
    },
    "seed README (inaccurate)": {"params": 4_900_000, "gflops": 8.0},
}


def clip_inputs(batch: int = 1) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Abstract full-size inputs: RGB (N, 16, 224, 224, 3) and pose (N, 48, 56, 56, 17)."""
    return (
        jax.ShapeDtypeStruct((batch, 16, 224, 224, 3), jnp.float32),
        jax.ShapeDtypeStruct((batch, 48, 56, 56, 17), jnp.float32),
    )


def count(model: EPAMNet | None = None) -> dict[str, Any]:
    """Parameters and MACs per component for one clip (batch 1)."""
    model = model or EPAMNet()
    rgb, pose = clip_inputs()
    shapes = jax.eval_shape(model.init, jax.random.key(0), rgb, pose)
    params = {
        name: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
        for name, tree in shapes["params"].items()
    }

    def is_layer(module: nn.Module, method: str) -> bool:
        return method == "__call__" and isinstance(module, (Conv, nn.Dense))

    def forward(variables, rgb, pose):
        return model.apply(
            variables, rgb, pose, capture_intermediates=is_layer, mutable=["intermediates"]
        )

    _, state = jax.eval_shape(forward, shapes, rgb, pose)
    kernels = {
        path[:-1]: leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
        if path[-1].key == "kernel"
    }
    macs: dict[str, int] = defaultdict(int)
    for path, out in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        keys = tuple(p.key for p in path if hasattr(p, "key"))[:-1]  # drop '__call__'
        kernel = kernels[tuple(jax.tree_util.DictKey(k) for k in keys)]
        positions = int(np.prod(out.shape[:-1]))
        macs[keys[0]] += positions * int(np.prod(kernel))
    macs = dict(macs)
    heads = ("rgb_cls_head", "pose_cls_head")
    result = {
        "params": params,
        "params_total": sum(params.values()),
        "macs": macs,
        "macs_total": sum(macs.values()),
        "heads_params": sum(params.get(h, 0) for h in heads),
    }
    result["gflops"] = {k: 2 * v / 1e9 for k, v in macs.items()}
    result["gflops_total"] = 2 * result["macs_total"] / 1e9
    return result


def _xla_gflops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) / 1e9


def xla_cost(model: EPAMNet | None = None) -> dict[str, float]:
    """XLA's flop estimate of the lowered (unoptimised) eval forward, per stream, in GFLOP."""
    model = model or EPAMNet()
    rgb, pose = clip_inputs()
    shapes = jax.eval_shape(model.init, jax.random.key(0), rgb, pose)
    out = {}
    for stream, clip in (("rgb", rgb), ("pose", pose)):
        name = f"{stream}_backbone"
        module = make_stream(stream, dtype=model.dtype, remat=False, bn_axis_name=None)
        sub = {col: shapes[col][name] for col in ("params", "batch_stats")}
        out[name] = _xla_gflops(module.apply, sub, clip)
    out["total"] = _xla_gflops(lambda v, r, p: model.apply(v, r, p), shapes, rgb, pose)
    return out


def table(counted: dict[str, Any], xla: dict[str, float] | None = None) -> str:
    """A text table of the counts next to the published figures."""
    spec = CLAIMS["spec (measured on the original)"]
    seed = CLAIMS["seed README (inaccurate)"]
    rows = [("component", "params", "MMAC", "GFLOP", "XLA GFLOP", "spec params", "spec GFLOP")]
    names = ("rgb_backbone", "pose_backbone", "attention_module", "rgb_cls_head", "pose_cls_head")
    spec_by = {
        "rgb_backbone": (spec["rgb_params"], spec["rgb_gflops"]),
        "pose_backbone": (spec["pose_params"], spec["pose_gflops"]),
    }
    for name in names:
        if name not in counted["params"]:
            continue
        macs = counted["macs"].get(name, 0)
        sp, sf = spec_by.get(name, ("", ""))
        xf = f"{xla[name]:.2f}" if xla and name in xla else ""
        rows.append(
            (name, f"{counted['params'][name]:,}", f"{macs / 1e6:,.2f}", f"{2 * macs / 1e9:.2f}",
             xf, f"{sp:,}" if sp else "", f"{sf}" if sf else "")
        )
    xt = f"{xla['total']:.2f}" if xla else ""
    rows.append(
        ("total", f"{counted['params_total']:,}", f"{counted['macs_total'] / 1e6:,.2f}",
         f"{counted['gflops_total']:.2f}", xt, f"{spec['params']:,}", f"{spec['gflops']}")
    )
    rows.append(("seed README claim", f"~{seed['params']:,}", "", f"~{seed['gflops']}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-xla", action="store_true", help="skip XLA's cost analysis")
    parser.add_argument("--json", help="also write the counts to this JSON file")
    args = parser.parse_args(argv)
    counted = count()
    xla = None if args.no_xla else xla_cost()
    print("one clip: RGB 16x224x224, pose 48x56x56x17, 60 classes")
    print(table(counted, xla))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counted": counted, "xla_gflops": xla, "claims": CLAIMS}, f, indent=2)


if __name__ == "__main__":
    main()
