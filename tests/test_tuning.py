"""Tuning: chosen outside the model code, from devices; one variable tree for every formulation."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from epam_jax import EPAMNet, Tuning
from epam_jax.models import variable_shapes
from epam_jax.streams import X3DStage
from epam_jax.tuning import PLATFORM_TUNINGS

PACKAGE = Path(__file__).resolve().parents[1] / "epam_jax"
FORMULATIONS = [
    Tuning(),
    PLATFORM_TUNINGS["gpu"],
    Tuning(scan_blocks=False, barriers=True),
    Tuning(convolutions="xla", scan_blocks=False, eval_chunk=0),
]


def test_model_code_never_reads_the_default_backend():
    """The formulation comes from the model's ``tuning``, never from the process's backend."""
    hits = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if "default_backend" in line and p.name != "xla_options.py"]
    assert not hits, hits


def test_for_platform_and_devices():
    assert Tuning.for_platform("cpu") == Tuning()
    assert Tuning.for_platform("cuda") == Tuning.for_platform("rocm") == PLATFORM_TUNINGS["gpu"]
    assert PLATFORM_TUNINGS["gpu"].convolutions == "xla"
    assert not PLATFORM_TUNINGS["gpu"].custom_gradients
    cpu = jax.devices("cpu")
    assert Tuning.for_devices(cpu[:1]) == Tuning()
    if len(cpu) > 1:  # a batch split over devices runs whole
        assert Tuning.for_devices(cpu) == Tuning(eval_chunk=0)
    with pytest.raises(ValueError, match="no tuning for platform 'metal'"):
        Tuning.for_platform("metal")
    with pytest.raises(ValueError, match="devices of one platform, got none"):
        Tuning.for_devices([])


@pytest.mark.parametrize("changes, message", [
    ({"convolutions": "cudnn"}, r"convolutions must be one of \('matmul', 'xla'\)"),
    ({"scan_blocks": 1}, "scan_blocks must be a bool"),
    ({"eval_channel_multiple": 0}, "eval_channel_multiple must be an int >= 1"),
    ({"kernel_grad_chunk_bytes": -1}, "kernel_grad_chunk_bytes must be an int >= 0"),
    ({"eval_chunk": 1.5}, "eval_chunk must be an int >= 0"),
])
def test_bad_tunings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        Tuning(**changes)
    with pytest.raises(ValueError, match=message):
        Tuning().replace(**changes)
    with pytest.raises(TypeError, match="tuning must be an epam_jax.Tuning"):
        jax.eval_shape(EPAMNet(tuning="cpu").init, jax.random.key(0),
                       jnp.zeros((1, 16, 32, 32, 3)), jnp.zeros((1, 16, 8, 8, 17)))


def test_every_formulation_has_the_same_variables():
    """Same names, shapes and initial values: one checkpoint runs under every tuning."""
    def shapes(tuning):
        tree = variable_shapes(EPAMNet(tuning=tuning))
        return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)

    for tuning in FORMULATIONS[1:]:
        assert shapes(tuning) == shapes(Tuning())
    # initialisation runs the blocks unrolled whatever the tuning: a stage of 5 blocks
    x = jnp.zeros((1, 4, 8, 8, 24))
    reference = jax.jit(X3DStage(5, 54, 24).init)(jax.random.key(3), x)
    for tuning in FORMULATIONS[1:]:
        values = jax.jit(X3DStage(5, 54, 24, tuning=tuning).init)(jax.random.key(3), x)
        for a, b in zip(jax.tree_util.tree_leaves(values),
                        jax.tree_util.tree_leaves(reference), strict=True):
            np.testing.assert_array_equal(a, b)


def test_readme_names_the_tuning():
    readme = (PACKAGE.parent / "README.md").read_text()
    assert re.search(r"Tuning\.for_devices\(", readme)
