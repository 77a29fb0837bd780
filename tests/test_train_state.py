"""epam_jax.train.state: the initial checkpoint must fit the model being trained."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from epam_jax.checkpoints import save_variables
from epam_jax.models import SingleStreamNet, variable_shapes
from epam_jax.train import (
    initial_variables,
    training_model,
)


def _zero_variables(model) -> dict:
    shapes = variable_shapes(model)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_initial_checkpoint_of_another_model_or_class_count_is_refused(tmp_path) -> None:
    five = save_variables(tmp_path / "pose5", _zero_variables(
        SingleStreamNet(stream="pose", num_classes=5)))
    model = training_model("pose", 6)
    with pytest.raises(ValueError, match="trained for 5 classes, expected 6"):
        initial_variables(model, "pose", jax.random.PRNGKey(0), checkpoint=str(five))
    with pytest.raises(ValueError, match="holds a 'pose' checkpoint, expected 'rgb'"):
        initial_variables(training_model("rgb", 5), "rgb", jax.random.PRNGKey(0),
                          checkpoint=str(five))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        initial_variables(model, "pose", jax.random.PRNGKey(0), checkpoint=str(tmp_path / "x"))
    restored = initial_variables(training_model("pose", 5), "pose", jax.random.PRNGKey(0),
                                 checkpoint=str(five))
    assert restored["params"]["pose_cls_head"]["fc_cls"]["bias"].shape == (5,)
    with pytest.raises(ValueError, match="freeze_rgb"):
        training_model("pose", 5, freeze_rgb=True)
