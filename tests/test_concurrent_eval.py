"""ConcurrentStreams: the two streams from two host threads give the jitted apply's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables

from epam_jax import EPAMBackbone, EPAMNet
from epam_jax.concurrent_eval import ConcurrentStreams
from epam_jax.tuning import Tuning
from epam_jax.xla_options import compiler_options

RNG = np.random.default_rng(7)
# batch 3 with eval_chunk 2: one scanned step and a remainder clip; pose stride 3
RGB = jnp.asarray(RNG.standard_normal((3, 4, 32, 32, 3)), jnp.float32)
POSE = jnp.asarray(RNG.random((3, 12, 8, 8, 17)), jnp.float32)


@pytest.fixture(scope="module")
def variables():
    return random_variables(EPAMNet(num_classes=5), seed=11)


@pytest.mark.parametrize(
    "model, attention",
    [(EPAMNet(num_classes=5, tuning=Tuning(eval_chunk=2)), True),
     (EPAMBackbone(fusion="residual", tuning=Tuning(eval_chunk=0)), False)],
    ids=["net-chunked-attention", "backbone-residual"],
)
def test_outputs_equal_the_jitted_apply(model, attention, variables):
    if isinstance(model, EPAMBackbone):  # the same tree without the heads
        variables = {c: {k: v for k, v in t.items() if not k.endswith("_cls_head")}
                     for c, t in variables.items()}
    expected = jax.jit(
        lambda v, r, p: model.apply(v, r, p, return_attention=attention),
        compiler_options=compiler_options(),
    )(variables, RGB, POSE)
    runner = ConcurrentStreams(model, return_attention=attention)
    for _ in range(2):  # the second call reuses the compiled programs and the cached stride
        got = runner(variables, RGB, POSE)
        assert len(got) == len(expected) == 2 + attention
        for a, b in zip(got, expected, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    runner.close()


def test_bad_inputs_are_named_before_any_work(variables):
    model = EPAMNet(num_classes=5)
    runner = ConcurrentStreams(model)
    with pytest.raises(ValueError, match="batch sizes differ"):
        runner(variables, RGB, POSE[:2])
    with pytest.raises(ValueError, match="integer multiple of rgb frames"):
        runner(variables, RGB, POSE[:, :10])
    with pytest.raises(ValueError, match="'rgb_backbone' and 'pose_backbone'"):
        runner({"params": variables["params"]["rgb_backbone"]}, RGB, POSE)
    with pytest.raises(ValueError, match="fusion must be one of"):
        ConcurrentStreams(EPAMBackbone(fusion="sum"))
    with pytest.raises(TypeError, match="EPAMNet or EPAMBackbone"):
        ConcurrentStreams(object())
    with pytest.raises(ValueError, match="stream must be one of"):
        model.apply(variables, RGB, "depth", method=EPAMNet.stream_features)
