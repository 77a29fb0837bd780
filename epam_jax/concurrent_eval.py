"""Eval with EPAM-Net's two streams running at the same time, for CPUs.

The RGB and pose streams share nothing until the attention: their features
can be computed side by side. XLA runs one jitted program's operations one
after another, each spread over every core, and loses some of each core to the
hand-offs between them. ``ConcurrentStreams`` compiles each stream on its own
and runs them from two host threads, so one stream's operations fill the gaps
the other leaves; the attention, fusion and heads follow in a third small
program. Outputs equal ``jax.jit(model.apply)(variables, rgb, pose)`` (same
operations, same order within each stream).

Measured faster than the jitted apply on a 2-core CPU, at batch 1 and 4 (figures
in docs/performance.md). Meant for CPUs: on a GPU one program already keeps the
device busy, and the batch is better split over devices.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax

from epam_jax.models import FUSIONS, EPAMBackbone, EPAMNet
from epam_jax.xla_options import compiler_options

_BACKBONES = ("rgb_backbone", "pose_backbone")


def _split(variables: Any) -> tuple[dict, dict, dict]:
    """Each program's share of the variables: the RGB stream's, the pose stream's, the rest.

    Each jitted call flattens only the leaves it uses (flattening the whole tree
    three times a clip costs measurable Python time, see docs/performance.md).
    """
    try:
        rgb = {c: {"rgb_backbone": t["rgb_backbone"]} for c, t in variables.items()}
        pose = {c: {"pose_backbone": t["pose_backbone"]} for c, t in variables.items()}
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(
            "variables must be EPAM-Net's {'params': ..., 'batch_stats': ...} with "
            f"'rgb_backbone' and 'pose_backbone' in each collection ({exc!r})"
        ) from None
    rest = {c: {k: v for k, v in t.items() if k not in _BACKBONES} for c, t in variables.items()}
    return rgb, pose, rest


class ConcurrentStreams:
    """``runner(variables, rgb, pose)``: ``model.apply(variables, rgb, pose)`` in eval.

    ``model`` is an ``EPAMNet`` or ``EPAMBackbone``; ``return_attention`` as in
    their ``__call__``. Arrays come back as JAX arrays, like the jitted apply's.
    """

    def __init__(self, model: EPAMNet | EPAMBackbone, *, return_attention: bool = False):
        if not isinstance(model, (EPAMNet, EPAMBackbone)):
            raise TypeError(f"model must be an EPAMNet or EPAMBackbone, got {type(model)}")
        if isinstance(model, EPAMBackbone) and model.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {model.fusion!r}")
        self.model = model
        options = compiler_options()

        def stream(name):
            def run(variables, x):
                return model.apply(variables, x, name, method=type(model).stream_features)

            return jax.jit(run, compiler_options=options)

        def head(variables, rgb_feats, pose_feats, stride):
            return model.apply(variables, rgb_feats, pose_feats, stride,
                               return_attention=return_attention,
                               method=type(model).from_features)

        self._rgb, self._pose = stream("rgb"), stream("pose")
        self._head = jax.jit(head, static_argnums=3, compiler_options=options)
        self._strides: dict[tuple, int] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="epam-rgb-stream")

    def _stride(self, variables: Any, rgb: jax.Array, pose: jax.Array) -> int:
        """The pose-to-RGB frame stride, after the model's checks of the pair (cached)."""
        key = (rgb.shape, pose.shape)
        if key not in self._strides:
            self._strides[key] = self.model.apply(
                variables, rgb, pose, method=lambda m, r, p: m.check_inputs(r, p)
            )
        return self._strides[key]

    def __call__(self, variables: Any, rgb: jax.Array, pose: jax.Array) -> Any:
        stride = self._stride(variables, rgb, pose)
        rgb_vars, pose_vars, head_vars = _split(variables)
        rgb_job = self._pool.submit(lambda: jax.block_until_ready(self._rgb(rgb_vars, rgb)))
        pose_feats = jax.block_until_ready(self._pose(pose_vars, pose))
        return self._head(head_vars, rgb_job.result(), pose_feats, stride)

    def close(self) -> None:
        """Stop the helper thread now (it also ends when the runner is collected)."""
        self._pool.shutdown(wait=True)
