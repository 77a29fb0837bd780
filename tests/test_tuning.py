"""Tuning: chosen outside the model code, from devices; one variable tree for every formulation."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import relative_error

from epam_jax import EPAMNet, Tuning
from epam_jax.layers import _batch_norm, batch_norm_train
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


def test_scanned_stages_compile_each_block_once():
    """With ``scan_blocks`` the program holds one pair of blocks per stage, not every block:
    the 41 blocks' 1x1x1 convolutions are matrix products, 7 first blocks + 7 scanned pairs."""
    rgb, pose = jnp.zeros((1, 16, 32, 32, 3)), jnp.zeros((1, 16, 8, 8, 17))

    def products(tuning):
        model = EPAMNet(tuning=tuning)
        jaxpr = str(jax.make_jaxpr(model.apply)(variable_shapes(model), rgb, pose))
        return jaxpr.count("dot_general[")

    scanned, unrolled = products(Tuning()), products(Tuning(scan_blocks=False))
    assert scanned <= 0.5 * unrolled, (scanned, unrolled)


@pytest.mark.parametrize("relu", [False, True])
def test_cross_replica_batch_norm_gradient_equals_autodiff(relu):
    """``batch_norm_train`` over replicas (``axis_name``): the hand-written backward pass
    against autodiff through the replica means, on 3 replicas of unequal data."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(0.2, 1.5, (3, 2, 2, 3, 3, 5)) * np.arange(1, 4)[:, None, None,
                                                                               None, None, None],
                    jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 1, 5), jnp.float32)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def loss(norm):
        def one(x, g):
            y, mean, var = norm(x, scale, bias, 1e-5, relu, jnp.float32, "r")
            return jnp.sum(y * g), (mean, var)
        return jax.vmap(jax.value_and_grad(one, has_aux=True), axis_name="r")

    (value, stats), grad = loss(batch_norm_train)(x, g)
    (value_ref, stats_ref), grad_ref = loss(_batch_norm)(x, g)
    assert relative_error(value_ref, value) <= 1e-6
    for a, b in zip(stats, stats_ref, strict=True):
        assert relative_error(b, a) <= 1e-6
        np.testing.assert_allclose(a[0], a[2], rtol=1e-6)  # every replica sees global statistics
    assert relative_error(grad_ref, grad) <= 1e-5


def test_readme_names_the_tuning():
    readme = (PACKAGE.parent / "README.md").read_text()
    assert re.search(r"Tuning\.for_devices\(", readme)
