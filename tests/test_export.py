"""Export: StableHLO and ONNX artifacts of a random EPAM-Net run like ``model.apply``.

One small checkpoint (random weights, BatchNorm statistics and residual gammas) is
exported once per format through the CLI (``main``) at size 64, with the export's own
check at batch 1 and 2; the tests then read the files back and compare them with the
jitted ``model.apply`` at batch 3 (the check's reference batch, so its compile is shared)
on other clips.
"""

from __future__ import annotations

import builtins
import importlib.util
import json

import jax
import numpy as np
import pytest
from conftest import random_variables

from epam_jax import export as ex
from epam_jax.checkpoints import clip_geometry, save_variables
from epam_jax.data import ClipConfig
from epam_jax.extract import load_model, run_cli
from epam_jax.models import EPAMNet

SIZE = 64
NUM_CLASSES = 4
NAMES = ["reach", "wave", "sit", "stand"]
OUTPUTS = "logits,scores,attention"
EXPECTED = {"rgb_logits": (NUM_CLASSES,), "pose_logits": (NUM_CLASSES,),
            "scores": (NUM_CLASSES,), "attention": (16, 2, 2, 1)}
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("jax2onnx", "onnx", "onnxruntime"))


def _relative(reference: np.ndarray, value: np.ndarray) -> float:
    reference = np.asarray(reference, np.float64)
    return float(np.abs(reference - value).max() / max(np.abs(reference).max(), 1e-30))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    variables = random_variables(EPAMNet(num_classes=NUM_CLASSES), seed=3)
    names = root / "classes.txt"
    names.write_text("\n".join(NAMES) + "\n")
    # recorded geometry: the paper's frames at SIZE, which the export takes without --size
    geometry = clip_geometry(ClipConfig(video_root=str(root), rgb_size=(SIZE, SIZE),
                                        heatmap_size=(SIZE // 4,) * 2))
    return save_variables(root / "epam", variables, geometry=geometry), names


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint[0])


def _export(checkpoint, fmt: str, suffix: str):
    path, names = checkpoint
    out = path.parent / f"model{suffix}"
    ex.main([str(path), str(out), "--format", fmt, "--outputs", OUTPUTS,
             "--class-names", str(names)])
    return out, json.loads(out.with_name(out.name + ".json").read_text())


@pytest.fixture(scope="module")
def stablehlo(checkpoint):
    return _export(checkpoint, "stablehlo", ".stablehlo")


@pytest.fixture(scope="module")
def onnx_file(checkpoint):
    if not HAVE_ONNX:
        pytest.skip("jax2onnx/onnx/onnxruntime not installed (pip install 'epam-jax[onnx]')")
    return _export(checkpoint, "onnx", ".onnx")


def _reference(loaded, batch: int, seed: int):
    rgb, heatmap = ex.check_inputs(batch, loaded.clip_fields(), seed=seed)
    names = ex.output_names(OUTPUTS.split(","), True)
    return rgb, heatmap, ex.reference_function(loaded, names, "multiply")(rgb, heatmap)


def _check_card(card: dict, fmt: str, tolerance: float) -> None:
    assert card["format"] == fmt and card["model"] == "epam"
    assert card["num_classes"] == NUM_CLASSES and card["class_names"] == NAMES
    assert [(i["name"], i["shape"], i["layout"], i["dtype"]) for i in card["inputs"]] == [
        ("rgb", ["batch", 16, SIZE, SIZE, 3], "NDHWC", "float32"),
        ("heatmap", ["batch", 48, SIZE // 4, SIZE // 4, 17], "NDHWC", "float32"),
    ]
    assert {o["name"]: tuple(o["shape"]) for o in card["outputs"]} == {
        k: ("batch", *v) for k, v in EXPECTED.items()}
    pre = card["preprocessing"]
    assert pre["rgb_normalization"]["mean"] == [123.675, 116.28, 103.53]
    assert pre["rgb_normalization"]["std"] == [58.395, 57.12, 57.375]
    assert (pre["rgb_frames"]["count"], pre["rgb_frames"]["stride"]) == (16, 3)
    assert pre["heatmaps"]["sigma"] == 0.6 and pre["heatmaps"]["size"] == [SIZE // 4] * 2
    assert pre["heatmaps"]["count"] == 48 and "COCO-17" in pre["heatmaps"]["keypoints"]
    assert card["versions"]["jax"] == jax.__version__
    measured = card["agreement"]
    assert measured["batch_sizes"] == [1, 2] and measured["tolerance_rel"] == tolerance
    assert 0.0 <= measured["max_rel_diff"] <= tolerance
    assert set(measured["per_output"]) == set(EXPECTED)


def test_stablehlo_round_trip(stablehlo, loaded):
    out, card = stablehlo
    _check_card(card, "stablehlo", 1e-6)
    assert card["platforms"] == ["cpu", "cuda"] and card["bytes"] == out.stat().st_size
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    assert exported.platforms == ("cpu", "cuda")
    assert str(exported.in_avals[0].shape[0]) == "batch"
    rgb, heatmap, want = _reference(loaded, 3, seed=7)
    got = exported.call(rgb, heatmap)
    assert set(got) == set(EXPECTED)
    for name, ref in want.items():
        assert got[name].shape == (3, *EXPECTED[name])
        assert _relative(ref, np.asarray(got[name])) <= 1e-6, name


def test_onnx_round_trip(onnx_file, loaded):
    import onnxruntime as ort

    out, card = onnx_file
    _check_card(card, "onnx", 1e-4)
    assert card["opset"] == ex.ONNX_OPSET and card["versions"]["jax2onnx"] == "0.17.1"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[0]) for i in session.get_inputs()] == [
        ("rgb", "batch"), ("heatmap", "batch")]
    assert [o.name for o in session.get_outputs()] == list(EXPECTED)
    rgb, heatmap, want = _reference(loaded, 3, seed=7)
    got = dict(zip(EXPECTED, session.run(None, {"rgb": rgb, "heatmap": heatmap}), strict=True))
    for name, ref in want.items():
        assert got[name].shape == (3, *EXPECTED[name])
        assert _relative(ref, got[name]) <= 1e-4, name


def test_output_names_groups_defaults_and_refusals():
    assert ex.output_names(None, True) == ("rgb_logits", "pose_logits")
    assert ex.output_names(None, False) == ("rgb_features", "pose_features", "attention")
    assert ex.output_names(["scores", "logits", "rgb_logits", "pooled"], True) == (
        "scores", "rgb_logits", "pose_logits", "rgb_pooled", "pose_pooled")
    with pytest.raises(ValueError, match="unknown output 'logit'; choose from logits"):
        ex.output_names(["logit"], True)
    with pytest.raises(ValueError, match="needs the classification heads"):
        ex.output_names(["scores"], False)
    assert ex._pooling(("rgb_features", "pose_pooled")) == "both"


def test_class_names_from_file_checkpoint_or_ntu(loaded):
    assert ex.class_names_for(loaded, NAMES) == NAMES
    assert ex.class_names_for(loaded, None) == [f"class {i}" for i in range(NUM_CLASSES)]
    recorded = type(loaded)(loaded.model, loaded.variables, dict(loaded.meta, class_names=NAMES))
    assert ex.class_names_for(recorded, None) == NAMES
    ntu = type(loaded)(EPAMNet(num_classes=60), loaded.variables, dict(loaded.meta,
                                                                       num_classes=60))
    assert ex.class_names_for(ntu, None)[0] == "A1 drink water"
    with pytest.raises(ValueError, match="expected 4 class names"):
        ex.class_names_for(loaded, NAMES[:3])


def _one_line_error(argv) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: ex.main(argv))
    message = str(info.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "m.bin"
    assert "unknown format 'tflite'" in _one_line_error(
        [str(path), str(out), "--format", "tflite"])
    assert "unknown output 'logitz'" in _one_line_error(
        [str(path), str(out), "--format", "stablehlo", "--outputs", "logitz"])
    assert "no checkpoint at" in _one_line_error(
        [str(tmp_path / "nope"), str(out), "--format", "stablehlo"])
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_extra_names_the_install_command(checkpoint, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_jax2onnx(name, *args, **kwargs):
        if name.split(".")[0] == "jax2onnx":
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jax2onnx)
    message = _one_line_error([str(checkpoint[0]), str(tmp_path / "m.onnx"), "--format", "onnx"])
    assert "pip install 'epam-jax[onnx]'" in message and "jax2onnx" in message
    assert list(tmp_path.iterdir()) == []


def test_disagreement_is_refused_and_nothing_written(checkpoint, tmp_path, monkeypatch):
    def fake_build(loaded, names, fusion, clip):
        def run(rgb, heatmap):
            return {n: np.zeros((len(rgb), *EXPECTED[n]), np.float32) for n in names}
        return b"not a model", {}, run

    def fake_reference(loaded, names, fusion):
        return lambda rgb, heatmap: {n: np.ones((len(rgb), *EXPECTED[n])) for n in names}

    monkeypatch.setattr(ex, "_stablehlo", fake_build)
    monkeypatch.setattr(ex, "reference_function", fake_reference)
    message = _one_line_error([str(checkpoint[0]), str(tmp_path / "m.bin"), "--format",
                               "stablehlo", "--size", "32", "--outputs", "scores"])
    assert "differs from model.apply" in message and "nothing written" in message
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    artifact = ex.Artifact(b"bytes", {"format": "stablehlo"})
    out, card = ex.save(artifact, tmp_path / "m.bin")
    assert out.read_bytes() == b"bytes" and json.loads(card.read_text())["bytes"] == 5

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ex.json, "dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        ex.save(artifact, tmp_path / "other.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.bin.json"]
