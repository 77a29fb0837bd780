"""The datasets the paper reports on, as recipes that training and ``evaluate`` share.

A recipe names a dataset and protocol (``ntu60_xsub``, ``toyota_cv2``, ...): its class
count, the split names of its PoseC3D annotation file, the metric the paper headlines,
its class names, how its raw videos are named (for ``epam_jax.prepare``) and the
figure the paper reports (spec sec. 7, 1 clip).

    python train.py --config configs/default.py:ntu120_xset ...
    python -m epam_jax.evaluate --dataset ntu120_xset ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from epam_jax.data.ntu_classes import class_names

TOYOTA_CLASSES: tuple[str, ...] = (
    "Cook.Cleandishes", "Cook.Cleanup", "Cook.Cut", "Cook.Stir", "Cook.Usestove",
    "Cutbread", "Drink.Frombottle", "Drink.Fromcan", "Drink.Fromcup", "Drink.Fromglass",
    "Eat.Attable", "Eat.Snack", "Enter", "Getup", "Laydown", "Leave",
    "Makecoffee.Pourgrains", "Makecoffee.Pourwater", "Maketea.Boilwater",
    "Maketea.Insertteabag", "Pour.Frombottle", "Pour.Fromcan", "Pour.Fromkettle",
    "Readbook", "Sitdown", "Takepills", "Uselaptop", "Usetablet", "Usetelephone", "Walk",
    "WatchTV",
)  # fmt: skip

HEADLINES = ("top1", "mean_class")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One dataset under one protocol."""

    name: str  # e.g. 'ntu60_xsub'
    dataset: str  # human-readable
    num_classes: int
    train_split: str
    val_split: str
    headline: str  # 'top1' or 'mean_class' (of the fused score)
    reported: float  # the paper's figure for the headline metric, percent, 1 clip
    annotations: str  # the usual annotation file name
    raw_video_pattern: str  # raw video file name from frame_dir, for prepare
    names: tuple[str, ...] | None = None  # None: NTU names for 60/120, else 'class i'

    def __post_init__(self) -> None:
        if self.headline not in HEADLINES:
            raise ValueError(f"headline must be one of {HEADLINES}, got {self.headline!r}")

    def class_names(self, names_file: str | Path | None = None) -> list[str]:
        """The class names: a names file (one per line) wins, else the recipe's own."""
        names: Sequence[str] | None = self.names
        if names_file is not None:
            names = read_names(names_file)
        return class_names(self.num_classes, names)

    @property
    def best_metric(self) -> str:
        """The validation metric checkpoints are ranked by."""
        return "fused/top1" if self.headline == "top1" else "fused/mean_class_acc"


def read_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _ntu(classes: int, protocol: str, reported: float) -> Recipe:
    return Recipe(
        name=f"ntu{classes}_{protocol}", dataset=f"NTU RGB+D {classes} {protocol}",
        num_classes=classes, train_split=f"{protocol}_train", val_split=f"{protocol}_val",
        headline="top1", reported=reported, annotations=f"ntu{classes}_2d.pkl",
        raw_video_pattern="{frame_dir}_rgb.avi")


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _ntu(60, "xsub", 96.1),
    _ntu(60, "xview", 99.0),
    _ntu(120, "xsub", 92.4),
    _ntu(120, "xset", 94.3),
    Recipe("pkummd_xsub", "PKU-MMD cross-subject", 51, "xsub_train", "xsub_val", "top1",
           96.2, "pkummd_2d.pkl", "{frame_dir}.avi"),
    Recipe("pkummd_xview", "PKU-MMD cross-view", 51, "xview_train", "xview_val", "top1",
           98.4, "pkummd_2d.pkl", "{frame_dir}.avi"),
    Recipe("toyota_cs", "Toyota Smarthome cross-subject (CS)", 31, "cs_train", "cs_val",
           "mean_class", 71.7, "toyota_2d.pkl", "{frame_dir}.mp4", TOYOTA_CLASSES),
    Recipe("toyota_cv2", "Toyota Smarthome cross-view (CV2)", 31, "cv2_train", "cv2_val",
           "mean_class", 67.8, "toyota_2d.pkl", "{frame_dir}.mp4", TOYOTA_CLASSES),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case-insensitive; 'ntu60/xsub' works too)."""
    key = name.strip().lower().replace("/", "_").replace("-", "_")
    if key not in RECIPES:
        raise ValueError(f"unknown dataset recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[key]
