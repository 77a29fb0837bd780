"""epam_jax.data.datasets: the per-dataset recipes and their use in the training config."""

from __future__ import annotations

import pytest

from epam_jax.data.datasets import RECIPES, get_recipe


def test_recipes() -> None:
    assert {r: RECIPES[r].num_classes for r in RECIPES} == {
        "ntu60_xsub": 60, "ntu60_xview": 60, "ntu120_xsub": 120, "ntu120_xset": 120,
        "pkummd_xsub": 51, "pkummd_xview": 51, "toyota_cs": 31, "toyota_cv2": 31}
    toyota = get_recipe("Toyota/CS")
    assert toyota.headline == "mean_class" and toyota.best_metric == "fused/mean_class_acc"
    names = toyota.class_names()
    assert names[0] == "Cook.Cleandishes" and names[30] == "WatchTV" and len(names) == 31
    assert get_recipe("ntu60_xsub").class_names()[0] == "A1 drink water"
    assert get_recipe("ntu120_xset").val_split == "xset_val"
    assert get_recipe("pkummd_xview").class_names()[50] == "class 50"
    assert get_recipe("ntu60_xsub").reported == 96.1
    with pytest.raises(ValueError, match="unknown dataset recipe"):
        get_recipe("kinetics")


def test_training_config_takes_a_recipe() -> None:
    from configs import default

    c = default.get_config("ntu120_xset")
    assert (c.data.num_classes, c.data.train_split, c.data.val_split) == (
        120, "xset_train", "xset_val")
    assert default.get_config("toyota_cv2").best_metric == "fused/mean_class_acc"
    assert default.get_config().data.recipe == "ntu60_xsub"
