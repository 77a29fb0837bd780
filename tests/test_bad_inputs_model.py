"""Bad model inputs through the Python API: integer frames, NaN and infinity.

Eager ``apply`` calls and the host-side forward of ``forward.make_forward`` refuse them
with one line naming the input; under ``jax.jit`` the values are unknown while tracing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_variables

from epam_jax.checkpoints import LoadedModel
from epam_jax.forward import make_forward
from epam_jax.models import EPAMBackbone

RGB_SHAPE = (1, 4, 32, 32, 3)
POSE_SHAPE = (1, 12, 8, 8, 17)


@pytest.fixture(scope="module")
def backbone():
    """The backbone and random variables (shapes traced, nothing compiled: every call
    below is refused before the model computes)."""
    model = EPAMBackbone()
    return model, random_variables(model)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, bool])
def test_apply_refuses_integer_frames(backbone, dtype):
    model, variables = backbone
    with pytest.raises(ValueError, match=f"rgb clip must be floating point.*got {np.dtype(dtype)}"):
        model.apply(variables, np.zeros(RGB_SHAPE, dtype), np.zeros(POSE_SHAPE, np.float32))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["rgb", "pose"])
def test_eager_apply_refuses_non_finite(backbone, value, which):
    model, variables = backbone
    rgb, pose = np.zeros(RGB_SHAPE, np.float32), np.zeros(POSE_SHAPE, np.float32)
    bad = rgb if which == "rgb" else pose
    bad[0, 1, 2, 3, 0] = value
    what = "rgb clip" if which == "rgb" else "pose heatmaps"
    with pytest.raises(ValueError, match=rf"{what} holds 1 NaN or infinite values \(first at "
                                         r"index \(0, 1, 2, 3, 0\)\)"):
        model.apply(variables, jnp.asarray(rgb), pose)


def test_make_forward_refuses_bad_batches(backbone):
    model, variables = backbone
    loaded = LoadedModel(model, jax.device_get(variables), {"model": "backbone"})
    forward, devices = make_forward(loaded)
    rgb = np.zeros((devices,) + RGB_SHAPE[1:], np.float32)
    heat = np.zeros((devices,) + POSE_SHAPE[1:], np.float32)
    with pytest.raises(ValueError, match=r"batch\['rgb'\] must be float32 .*got int8"):
        forward({"rgb": rgb.astype(np.int8), "heatmap": heat})
    with pytest.raises(ValueError, match=r"batch\['heatmap'\] must be float32 .*got uint8"):
        forward({"rgb": rgb, "heatmap": heat.astype(np.uint8)})
    heat[0, 5, 1, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"batch\['heatmap'\] holds 1 NaN or infinite"):
        forward({"rgb": rgb, "heatmap": heat})
