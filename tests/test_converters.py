"""Checkpoint conversion: containers, strictness, round trips, safety, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_trees_equal

torch = pytest.importorskip("torch")


from converters import ConversionError, flax_to_torch, load_torch_checkpoint, torch_to_flax  # noqa: E402
from converters.reference import build_reference, randomize_  # noqa: E402
from epam_jax.checkpoints import (  # noqa: E402
    load_variables,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def epam_state():
    return randomize_(build_reference("epam", num_classes=11), 5).state_dict()


@pytest.fixture(scope="module")
def epam_variables(epam_state):
    return torch_to_flax(epam_state, "epam")


@pytest.mark.parametrize(
    "model,kw",
    [("epam", {}), ("epam", {"attention_type": "spatial_temporal"}), ("backbone", {}),
     ("rgb", {}), ("pose", {})],
)
def test_round_trip_is_exact(model, kw):
    state = randomize_(build_reference(model, **kw), 6).state_dict()
    variables = torch_to_flax(state, model)
    back = flax_to_torch(variables, model)
    assert set(back) == set(state)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key
    assert_trees_equal(torch_to_flax(back, model), variables)
    # and the reference loads it strictly
    build_reference(model, **kw).load_state_dict(back, strict=True)


def test_containers_in_the_wild(tmp_path, epam_state, epam_variables):
    ddp = {f"module.{k}": v for k, v in epam_state.items()}
    files = {
        "plain.pth": epam_state,
        "trainer.pth": {"epoch": 3, "model_state_dict": ddp, "optimizer_state_dict": {}},
        "mmaction.pth": {"meta": {"epoch": 3}, "state_dict": epam_state},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        assert_trees_equal(load_torch_checkpoint(tmp_path / name, "epam"), epam_variables)
    # the two-stream backbone from a full checkpoint: the heads are left out
    backbone = load_torch_checkpoint(tmp_path / "trainer.pth", "backbone")
    assert set(backbone["params"]) == {"rgb_backbone", "pose_backbone", "attention_module"}
    # a single stream from the trainer format (module.pose_backbone.*, pose_cls_head.*)
    pose = load_torch_checkpoint(tmp_path / "trainer.pth", "pose")
    assert_trees_equal(pose["params"]["pose_backbone"], epam_variables["params"]["pose_backbone"])


def test_single_stream_mmaction_format(tmp_path):
    ref = randomize_(build_reference("rgb", num_classes=11), 7)
    torch.save({"meta": {}, "state_dict": ref.state_dict()}, tmp_path / "rgb.pth")
    variables = load_torch_checkpoint(tmp_path / "rgb.pth", "rgb")
    assert set(variables["params"]) == {"rgb_backbone", "rgb_cls_head"}
    with pytest.raises(ConversionError, match="single-stream checkpoint"):
        load_torch_checkpoint(tmp_path / "rgb.pth", "epam")


def test_strict_errors_list_everything(epam_state):
    state = dict(epam_state)
    del state["rgb_backbone.layer2.3.conv1.bn.running_var"]
    state["rgb_backbone.layer9.0.conv1.conv.weight"] = torch.zeros(3)
    state["pose_backbone.conv5.conv.weight"] = torch.zeros(216, 96, 1, 1, 3)
    with pytest.raises(ConversionError) as err:
        torch_to_flax(state, "epam")
    text = str(err.value)
    assert "1 missing" in text and "rgb_backbone.layer2.3.conv1.bn.running_var" in text
    assert "1 unexpected" in text and "rgb_backbone.layer9.0.conv1.conv.weight" in text
    assert "1 wrongly shaped" in text and "pose_backbone.conv5.conv.weight" in text


def test_wrong_num_classes_and_attention(epam_state):
    with pytest.raises(ConversionError, match="num_classes=60 but .* 11 classes"):
        torch_to_flax(epam_state, "epam", num_classes=60)
    with pytest.raises(ConversionError, match="spatial_temporal"):
        torch_to_flax(epam_state, "epam", attention_type="spatial_temporal")


class _Payload:
    """Unpickling this would run a shell command creating ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path, epam_state):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(epam_state), "extra": _Payload(marker)}, path)
    with pytest.raises(ConversionError, match="refusing to load"):
        load_torch_checkpoint(path, "epam")
    assert not marker.exists()
    # the command line refuses it too, and writes nothing
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "converters", str(path), str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not marker.exists() and not out.exists()


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04not really")
    with pytest.raises(ConversionError, match="cannot read"):
        load_torch_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "absent.pth")


@pytest.mark.parametrize(
    "container,model",
    [("trainer", "epam"), ("mmaction", "rgb"), ("plain", "backbone")],
)
def test_cli_converts_each_container(tmp_path, container, model):
    source_model = "rgb" if model == "rgb" else "epam"
    state = randomize_(build_reference(source_model), 10).state_dict()
    obj = {
        "trainer": {"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer_state_dict": {}},
        "mmaction": {"meta": {}, "state_dict": state},
        "plain": state,
    }[container]
    src = tmp_path / "src.pth"
    torch.save(obj, src)
    args = [sys.executable, "-m", "converters", str(src), str(tmp_path / "out"), "--model", model]
    if container == "trainer":
        args.append("--verify")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout and "written" in proc.stdout
    if container == "trainer":
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("verify"))
        assert float(line.rsplit(" ", 1)[1]) <= 1e-4
        assert "2,538,717 parameters" in proc.stdout
    restored = load_variables(tmp_path / "out", expect_model=model)
    expected = torch_to_flax(state if model != "backbone" else {
        k: v for k, v in state.items() if "cls_head" not in k}, model)
    assert_trees_equal(restored, expected)
