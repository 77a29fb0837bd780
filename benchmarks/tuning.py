"""Formulations side by side in one process: ``EPAMNet`` eval under several ``Tuning``s.

    python -m benchmarks.tuning [--batch 1] [--reps 10] [--train]
                                [--tunings default,unrolled,unrolled+barriers,accelerator]

Each formulation is jitted plainly (``unrolled+barriers`` with ``compiler_options()``,
the only way its barriers survive), on the same random weights and clips; calls are
interleaved (one of each, then again) so a busy machine slows all alike. Prints the
best and median time a call, the compile time, XLA's temporary buffer and the largest
difference from the first formulation's outputs. ``--train`` times the train step
(forward, backward, SGD with momentum and weight decay; jitted with ``compiler_options()`` as the
training library does; ``benchmarks.worker.train_step``) instead.
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from typing import Any

import numpy as np

FORMULATIONS = ("default", "unrolled", "unrolled+barriers", "accelerator", "whole-batch")


def tuning_of(name: str) -> tuple[Any, bool]:
    """``(Tuning, needs compiler_options)`` for a formulation's name."""
    from epam_jax.tuning import PLATFORM_TUNINGS, Tuning

    table = {
        "default": (Tuning(), False),
        "unrolled": (Tuning(scan_blocks=False), False),
        "unrolled+barriers": (Tuning(scan_blocks=False, barriers=True), True),
        "accelerator": (PLATFORM_TUNINGS["gpu"], False),
        "whole-batch": (Tuning(eval_chunk=0), False),
    }
    if name not in table:
        raise SystemExit(f"unknown formulation {name!r}; known: {', '.join(FORMULATIONS)}")
    return table[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--train", action="store_true", help="time the train step")
    parser.add_argument("--tunings", default="default,unrolled,unrolled+barriers")
    args = parser.parse_args(argv)
    names = [n for n in args.tunings.split(",") if n]
    specs = [tuning_of(n) for n in names]

    import jax
    import jax.numpy as jnp

    from benchmarks.worker import make_clips, optimizer, train_step
    from epam_jax import EPAMNet
    from epam_jax.models import init_variables
    from epam_jax.xla_options import compiler_options

    if args.train:  # every call is timed to completion; free its buffers before the next
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    rgb_np, pose_np, labels = make_clips(args.batch)
    rgb = jnp.asarray(rgb_np.transpose(0, 2, 3, 4, 1))
    pose = jnp.asarray(pose_np.transpose(0, 2, 3, 4, 1))
    variables = init_variables(EPAMNet(), jax.random.key(0))
    noise = jax.random.split(jax.random.key(1), len(jax.tree_util.tree_leaves(variables)))
    leaves, tree = jax.tree_util.tree_flatten(variables)  # non-trivial statistics and gammas
    leaves = [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, noise, strict=True)]
    variables = jax.tree_util.tree_unflatten(tree, leaves)
    tx = optimizer()
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
    rng = jax.random.key(0)

    def make(tuning: Any) -> Any:
        model = EPAMNet(tuning=tuning)
        if not args.train:
            return lambda state, rgb, pose, labels, rng: model.apply(
                {"params": state[0], "batch_stats": state[1]}, rgb, pose)
        return partial(train_step, model=model, tx=tx)

    inputs = (state, rgb, pose, jnp.asarray(labels), rng)
    compiled, reference = {}, None
    for name, (tuning, options) in zip(names, specs, strict=True):
        jitted = jax.jit(make(tuning), compiler_options=compiler_options() if options or
                         args.train else None)
        t0 = time.perf_counter()
        program = jitted.lower(*inputs).compile()
        compile_s = time.perf_counter() - t0
        out = jax.block_until_ready(program(*inputs))
        first = out[-1] if args.train else out
        reference = first if reference is None else reference
        diff = max(float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))
                   for a, b in zip(jax.tree_util.tree_leaves(first),
                                   jax.tree_util.tree_leaves(reference), strict=True))
        temp = program.memory_analysis().temp_size_in_bytes / 2**20
        print(f"{name:>18}: compile {compile_s:5.1f} s, temporaries {temp:7.0f} MB, "
              f"max |diff| vs {names[0]} {diff:.1e}", flush=True)
        compiled[name] = program
    times: dict[str, list[float]] = {n: [] for n in compiled}
    for _ in range(args.reps):
        for name, program in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(program(*inputs))
            times[name].append(time.perf_counter() - t0)
    what = "train step" if args.train else "eval"
    print(f"{what}, batch {args.batch}, {args.reps} interleaved calls each")
    for name, t in times.items():
        t = np.asarray(t)
        print(f"{name:>18}: best {t.min() * 1e3:7.0f} ms  median {np.median(t) * 1e3:7.0f} ms  "
              f"{args.batch / t.min():6.2f} clips/s")


if __name__ == "__main__":
    main()
