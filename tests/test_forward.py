"""epam_jax.forward: the batched, sharded forward pass the tools share refuses bad batches."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import POSE_SHAPE, RGB_SHAPE

from epam_jax.checkpoints import LoadedModel
from epam_jax.forward import make_forward


def test_make_forward_refuses_bad_batches(small_backbone):
    model, variables = small_backbone
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
