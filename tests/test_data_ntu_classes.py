"""epam_jax.data.ntu_classes: the NTU RGB+D 60 and 120 class names."""

from __future__ import annotations

import pytest

from epam_jax.data.ntu_classes import NTU60_CLASSES, NTU120_CLASSES, class_names


def test_ntu_class_names() -> None:
    assert len(NTU120_CLASSES) == 120 and len(set(NTU120_CLASSES)) == 120
    assert NTU60_CLASSES == NTU120_CLASSES[:60]
    names = class_names(120)
    assert names[0] == "A1 drink water" and names[42] == "A43 falling"
    assert names[59] == "A60 walking apart from each other"
    assert names[60] == "A61 put on headphone"
    assert names[119] == "A120 finger-guessing game (playing rock-paper-scissors)"
    assert class_names(60) == names[:60]
    assert class_names(3) == ["class 0", "class 1", "class 2"]
    with pytest.raises(ValueError, match="expected 4 class names"):
        class_names(4, ["a", "b"])
