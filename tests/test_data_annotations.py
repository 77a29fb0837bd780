"""Safe loading and validation of PoseC3D annotation pickles."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_person

from epam_jax.data import (
    UnsafePickleError,
    load_annotations,
    safe_loads,
    save_annotations,
)


def sample(i: int = 0, label: int = 1, persons: int = 2, frames: int = 30) -> dict:
    rng = np.random.default_rng(i)
    return {
        "frame_dir": f"S{i:03d}",
        "label": label,
        "img_shape": (1080, 1920),
        "original_shape": (1080, 1920),
        "total_frames": frames,
        "keypoint": rng.uniform(0, 1000, (persons, frames, 17, 2)).astype(np.float16),
        "keypoint_score": rng.uniform(0, 1, (persons, frames, 17)).astype(np.float16),
    }


def write(path: Path, obj, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_list_and_split_formats_round_trip(tmp_path: Path, protocol: int) -> None:
    anns = [sample(i, label=i % 3) for i in range(4)]
    anns[0]["extra"] = {"ids": {1, 2}, "tag": b"\x00\xff", "score": np.float32(0.5)}
    flat = load_annotations(write(tmp_path / "flat.pkl", anns, protocol))
    assert [a["frame_dir"] for a in flat] == ["S000", "S001", "S002", "S003"]
    assert flat[0]["extra"]["tag"] == b"\x00\xff" and flat[0]["extra"]["ids"] == {1, 2}
    assert flat[1]["keypoint"].dtype == np.float32 and flat[1]["keypoint"].shape == (2, 30, 17, 2)
    np.testing.assert_array_equal(flat[2]["keypoint"], anns[2]["keypoint"].astype(np.float32))
    obj = {"split": {"train": ["S000", "S002"], "val": ["S001", "S003"]}, "annotations": anns}
    path = write(tmp_path / "split.pkl", obj, protocol)
    assert len(load_annotations(path)) == 4
    assert [a["frame_dir"] for a in load_annotations(path, split="val")] == ["S001", "S003"]
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_annotations(path, split="test")
    with pytest.raises(ValueError, match="no 'split' table"):
        load_annotations(tmp_path / "flat.pkl", split="train")


def test_save_annotations_writes_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pkl"
    save_annotations(path, [sample(0)], {"train": ["S000"]})
    assert load_annotations(path, split="train")[0]["label"] == 1


def test_missing_scores_default_to_one(tmp_path: Path) -> None:
    ann = sample()
    del ann["keypoint_score"]
    (loaded,) = load_annotations(write(tmp_path / "a.pkl", [ann]))
    assert loaded["keypoint_score"].shape == (2, 30, 17)
    assert np.all(loaded["keypoint_score"] == 1)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = [sample(0), {"frame_dir": "x", "evil": _Exploit(marker)}]
    data = pickle.dumps(payload, protocol=2)
    # the payload really is live: plain pickle would run it
    assert b"system" in data
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError, match="system"):
        load_annotations(path)
    with pytest.raises(UnsafePickleError, match="only numpy"):
        safe_loads(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps([{"f": print}]),  # builtins other than containers
        pickle.dumps(np.array([1, "a"], dtype=object)),  # object arrays
        pickle.dumps([Path("/etc/passwd")]),  # arbitrary classes
    ],
)
def test_other_objects_are_refused(payload: bytes) -> None:
    with pytest.raises(UnsafePickleError):
        safe_loads(payload)


def test_empty_and_truncated_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_annotations(empty)
    data = pickle.dumps([sample(0)], protocol=4)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_annotations(cut)


def test_missing_key_names_the_key(tmp_path: Path) -> None:
    ann = sample()
    del ann["total_frames"]
    match = r"annotation 0 \(.S000.\): missing required key.*total_frames"
    with pytest.raises(ValueError, match=match):
        load_annotations(write(tmp_path / "a.pkl", [ann]))


@pytest.mark.parametrize(
    ("shape", "what"),
    [((2, 30, 17), "keypoint"), ((2, 30, 18, 2), "keypoint"), ((2, 29, 17, 2), "keypoint")],
)
def test_wrong_keypoint_shapes(tmp_path: Path, shape, what) -> None:
    ann = sample()
    ann["keypoint"] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=rf"expected '{what}' of shape \(M, total_frames=30, 17"):
        load_annotations(write(tmp_path / "a.pkl", [ann]))


def test_wrong_score_shape(tmp_path: Path) -> None:
    ann = sample()
    ann["keypoint_score"] = np.zeros((1, 30, 17), np.float32)
    with pytest.raises(ValueError, match=r"'keypoint_score' of shape \(2, 30, 17\)"):
        load_annotations(write(tmp_path / "a.pkl", [ann]))


def test_label_outside_num_classes(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pkl", [sample(0, label=5), sample(1, label=60)])
    assert len(load_annotations(path, num_classes=61)) == 2
    with pytest.raises(ValueError, match=r"annotation 1 \('S001'\).*label < num_classes=60"):
        load_annotations(path, num_classes=60)
    with pytest.raises(ValueError, match="0 <= label"):
        load_annotations(write(tmp_path / "b.pkl", [sample(0, label=-1)]))


def test_not_a_list_of_dicts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="list of sample dicts"):
        load_annotations(write(tmp_path / "a.pkl", {"samples": []}))
    with pytest.raises(ValueError, match="expected a dict"):
        load_annotations(write(tmp_path / "b.pkl", [[1, 2]]))


SHAPE = (96, 128)
GOOD = synthetic_person(20, SHAPE, "clip")


def _pickled(**changes) -> bytes:
    ann = dict(GOOD, **changes)
    return pickle.dumps([{k: v for k, v in ann.items() if v is not None}], protocol=4)


class _System:
    def __reduce__(self):
        return (os.system, ("echo ran",))


_GOOD_BYTES = pickle.dumps([GOOD], protocol=4)
_NAN = GOOD["keypoint"].copy()


_NAN[0, 3, 5] = np.nan


_INF = GOOD["keypoint"].copy()


_INF[0, 3, 5, 0] = np.inf


_NAN_SCORE = GOOD["keypoint_score"].copy()


_NAN_SCORE[0, 2, 1] = np.nan


PICKLES = {
    "truncated": (_GOOD_BYTES[: len(_GOOD_BYTES) // 2],
                  r"annotation pickle is truncated or corrupt \(UnpicklingError"),
    "random_bytes": (np.random.default_rng(0).bytes(500),
                     r"annotation pickle is truncated or corrupt"),
    "append_to_a_tuple": (b"\x80\x04)K\x01a.",
                          r"truncated or corrupt \(AttributeError"),
    "huge_frame": (b"\x80\x04\x95" + b"\xff" * 8, r"truncated or corrupt \(OverflowError"),
    "os_system": (pickle.dumps([_System()]), r"refusing to load annotation pickle: it "
                                             r"references posix.system"),
    "list_of_ints": (pickle.dumps([1, 2, 3]), r"annotation 0: expected a dict, got int"),
    "an_int": (pickle.dumps(7), r"expected a list of sample dicts, got int"),
    "no_keypoint": (_pickled(keypoint=None), r"annotation 0 \('clip'\): missing required "
                                             r"key\(s\) \['keypoint'\]"),
    "keypoint_shape": (_pickled(keypoint=GOOD["keypoint"][..., :1]),
                       r"expected 'keypoint' of shape \(M, total_frames=20, 17, 2\), got "
                       r"\(1, 20, 17, 1\)"),
    "keypoint_frames": (_pickled(keypoint=GOOD["keypoint"][:, :19]),
                        r"expected 'keypoint' of shape \(M, total_frames=20, 17, 2\), got "
                        r"\(1, 19, 17, 2\)"),
    "keypoint_list": (_pickled(keypoint=GOOD["keypoint"].tolist()),
                      r"expected 'keypoint' to be a numeric numpy array, got list"),
    "keypoint_complex": (_pickled(keypoint=GOOD["keypoint"].astype(complex)),
                         r"numeric numpy array, got dtype complex128"),
    "keypoint_inf": (_pickled(keypoint=_INF), r"expected finite 'keypoint' coordinates \(NaN "
                                              r"for a missing joint\), got 1 infinite"),
    "score_nan": (_pickled(keypoint_score=_NAN_SCORE),
                  r"expected finite 'keypoint_score' values, got 1 NaN or infinite"),
}


def test_empty_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^annotation file '.*empty.pkl' is empty$"):
        load_annotations(path)


@pytest.mark.parametrize("case", PICKLES)
def test_damaged_annotation_pickles_name_the_file_and_the_fault(tmp_path: Path,
                                                                case: str) -> None:
    data, fault = PICKLES[case]
    path = tmp_path / f"{case}.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError) as err:
        load_annotations(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert len(message) < 400, message
    assert re.search(fault, message), message


def test_nan_keypoints_are_missing_joints(tmp_path: Path) -> None:
    """NaN marks a missing joint in PoseC3D files (the synthetic writer uses it; the
    pipeline maps it to 0), so it loads, as NaN."""
    path = tmp_path / "nan.pkl"
    path.write_bytes(_pickled(keypoint=_NAN))
    (ann,) = load_annotations(path)
    assert np.isnan(ann["keypoint"][0, 3, 5]).all()
    assert not np.isnan(np.delete(ann["keypoint"].reshape(-1, 2), 3 * 17 + 5, 0)).any()
