"""epam_jax.checkpoints: loading any checkpoint through one path, the tree check, bad
files and directories in one line, and the clip geometry a checkpoint records.

Files that are no PyTorch checkpoint, damaged epam-jax directories and descriptions
that name no model end in one line naming the file and the fault; the tools run at the
geometry the checkpoint records unless told otherwise."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from conftest import NTU_CLASSES, assert_trees_equal, random_variables

from converters import torch_to_flax  # noqa: E402
from converters.reference import build_reference, randomize_  # noqa: E402
from epam_jax import checkpoints, evaluate, extract, predict, stream
from epam_jax.checkpoints import (  # noqa: E402
    CHECKSUM_FILE,
    META_FILE,
    VARIABLES_DIR,
    clip_fields,
    clip_geometry,
    from_single_streams,  # noqa: E402
    load_meta,
    load_variables,
    save_variables,
)
from epam_jax.data import (
    ClipConfig,
    load_annotations,
    make_synthetic_dataset,
    save_annotations,
)
from epam_jax.models import EPAMBackbone, EPAMNet, SingleStreamNet

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
CLIP_LEN, RGB_STRIDE, SIZE = 8, 2, 32  # 4 RGB frames of 32x32, 8 heatmaps of 8x8
RECORDED = {"clip_len": CLIP_LEN, "rgb_stride": RGB_STRIDE, "rgb_size": (SIZE, SIZE),
            "heatmap_size": (SIZE // 4, SIZE // 4), "sigma": 0.6}


PAPER = {"clip_len": 48, "rgb_stride": 3, "rgb_size": (224, 224), "heatmap_size": (56, 56),
         "sigma": 0.6}


@pytest.fixture(scope="module")
def variables() -> dict:
    return random_variables(EPAMNet(num_classes=NUM_CLASSES))


@pytest.fixture(scope="module")
def ckpt(variables, tmp_path_factory) -> Path:
    """An EPAM-Net checkpoint whose description records the small geometry."""
    geometry = clip_geometry(ClipConfig(rgb=False, clip_len=CLIP_LEN, rgb_stride=RGB_STRIDE,
                                        rgb_size=(SIZE, SIZE),
                                        heatmap_size=(SIZE // 4, SIZE // 4)))
    return save_variables(tmp_path_factory.mktemp("ckpt") / "small", variables,
                          geometry=geometry)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """Three short square synthetic videos, their annotations, and the first one's poses."""
    root = tmp_path_factory.mktemp("data")
    annotations = make_synthetic_dataset(root, num_classes=NUM_CLASSES, num_train=0,
                                         num_val=3, frames=(10, 12), size=(48, 48), seed=1)
    first = load_annotations(annotations)[0]
    save_annotations(root / "poses.pkl", [first])
    return {"annotations": annotations, "videos": root / "videos", "poses": root / "poses.pkl",
            "video": root / "videos" / f"{first['frame_dir']}.mp4"}


def one_line_error(call: Any, kind: type[BaseException] = ValueError) -> str:
    """The message ``call()`` raises as ``kind``, checked to be one line."""
    with pytest.raises(kind) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def copy_of(ckpt: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / name))


def largest_data_file(path: Path) -> Path:
    """The biggest file under variables/: it holds array data (not just metadata)."""
    files = [p for p in (path / VARIABLES_DIR).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def _torch_save(obj_of: Any, **kw: Any) -> Any:
    def write(path: Path) -> None:
        torch = pytest.importorskip("torch")
        torch.save(obj_of(torch), path, **kw)
    return write


def _truncated_legacy(path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(64)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_without_data(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "x")


BAD_TORCH_FILES = {
    "empty": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\), not a PyTorch checkpoint"),
    "text": (lambda p: p.write_bytes(b"hello, this is no checkpoint at all"),
             r"is not a PyTorch checkpoint: not a zip archive or pickle \(35 bytes starting "
             r"b'hello, this '"),
    "pickled_str": (lambda p: p.write_bytes(pickle.dumps("weights", protocol=4)),
                    r"is not a PyTorch checkpoint: a plain Python pickle \(protocol 4, not "
                    r"written by torch.save\) of a str$"),
    "pickled_ordered_dict": (lambda p: p.write_bytes(pickle.dumps(OrderedDict(a=1))),
                             r"a plain Python pickle .* holding collections\.OrderedDict$"),
    "pickled_numpy": (lambda p: p.write_bytes(pickle.dumps({"w": np.zeros(3)})),
                      r"a plain Python pickle .* holding numpy\.\S+_reconstruct, "
                      r"numpy\.ndarray, numpy\.dtype$"),
    "cut_zip": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 60),
                r"cannot read .* as a PyTorch checkpoint: it is a truncated or damaged zip "
                r"archive"),
    "foreign_zip": (_zip_without_data,
                    r"it is a zip archive without data\.pkl, not one written by torch\.save "
                    r"\(it holds a\.txt\)"),
    "cut_legacy": (_truncated_legacy, r"it ends early, after \d+ bytes \(truncated\?\)"),
    "module": (_torch_save(lambda torch: {"head": torch.nn.Linear(2, 2)}),
               r"refusing to load .*: it holds a pickled torch\.nn\.modules\.linear\.Linear, "
               r"not only tensors and plain containers"),
    "bare_tensor": (_torch_save(lambda torch: torch.zeros(3)),
                    r"a checkpoint must hold a dict of tensors, got Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_TORCH_FILES))
def test_a_pth_that_is_no_checkpoint_says_what_it_is(case: str, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    write, expected = BAD_TORCH_FILES[case]
    path = tmp_path / f"{case}.pth"
    write(path)
    message = one_line_error(lambda: extract.load_model(path))
    assert re.search(expected, message), message
    assert str(path) in message and "weights_only" not in message


def test_clis_print_one_line_for_a_bad_pth_and_a_damaged_directory(
        ckpt: Path, dataset: dict[str, Path], tmp_path: Path) -> None:
    """``python -m epam_jax.predict``: exit 1, one ``error:`` line on stderr, no traceback
    (neither the refused load's nor the failed restore's late 'Event loop is closed')."""
    pytest.importorskip("torch")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 definitely not torch " * 8)
    damaged = copy_of(ckpt, tmp_path, "damaged")
    largest_data_file(damaged).unlink()
    for checkpoint, expected in ((junk, "is not a PyTorch checkpoint: not a zip archive or "
                                        "pickle"),
                                 (damaged, "is a damaged epam-jax checkpoint: array ")):
        done = subprocess.run(
            [sys.executable, "-m", "epam_jax.predict", str(dataset["video"]), "--checkpoint",
             str(checkpoint), "--poses", str(dataset["poses"])],
            capture_output=True, text=True, cwd=ROOT, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, done.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert str(checkpoint) in lines[0] and expected in lines[0]
        assert "weights_only" not in lines[0]


def test_a_damaged_checkpoint_directory_names_the_array(ckpt: Path, tmp_path: Path) -> None:
    damaged = r"is a damaged epam-jax checkpoint: array (params|batch_stats)/[\w/]+ "
    gone = copy_of(ckpt, tmp_path, "gone")
    largest_data_file(gone).unlink()
    message = one_line_error(lambda: extract.load_model(gone))
    assert re.match(re.escape(str(gone)) + " " + damaged + r"cannot be read .*: a data file "
                    r"under variables/ is missing, truncated or corrupt$", message), message

    cut = copy_of(ckpt, tmp_path, "cut")
    with open(largest_data_file(cut), "r+b") as f:
        f.truncate(1000)
    message = one_line_error(lambda: extract.load_model(cut))
    assert re.match(re.escape(str(cut)) + " " + damaged + "cannot be read", message), message

    # bytes changed inside an array: tensorstore fails to decode it, or the CRC-32 differs
    flipped = copy_of(ckpt, tmp_path, "flipped")
    data_file = largest_data_file(flipped)
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0x5A for b in
                                                        data[len(data) // 2: len(data) // 2 + 64])
    data_file.write_bytes(bytes(data))
    message = one_line_error(lambda: extract.load_model(flipped))
    assert re.search(damaged + "(cannot be read|does not match the CRC-32 recorded)",
                     message), message

    # the checksum comparison itself, on a known array
    wrong = copy_of(ckpt, tmp_path, "wrong")
    sums = json.loads((wrong / CHECKSUM_FILE).read_text())
    key = "params/rgb_cls_head/fc_cls/bias"
    sums["arrays"][key] = "%08x" % (int(sums["arrays"][key], 16) ^ 1)
    (wrong / CHECKSUM_FILE).write_text(json.dumps(sums))
    message = one_line_error(lambda: extract.load_model(wrong))
    assert message == (f"{wrong} is a damaged epam-jax checkpoint: array {key} does not match "
                       "the CRC-32 recorded when it was saved: a data file under variables/ "
                       "is corrupt")

    (wrong / CHECKSUM_FILE).unlink()
    assert one_line_error(lambda: extract.load_model(wrong)) == (
        f"{wrong} is a damaged epam-jax checkpoint: its {CHECKSUM_FILE} is missing")
    shutil.rmtree(wrong / VARIABLES_DIR)
    assert one_line_error(lambda: extract.load_model(wrong), FileNotFoundError) == (
        f"{wrong} is not a complete epam-jax checkpoint: it has {META_FILE} but no "
        f"{VARIABLES_DIR}/ folder")


def test_late_tensorstore_callbacks_of_a_failed_restore_are_dropped(monkeypatch) -> None:
    """orbax's event loop closes as soon as one array read fails; reads still in flight
    then call the closed loop from tensorstore's threads, which reports each RuntimeError
    through ``sys.unraisablehook``. Those, and only those, are dropped."""
    ts = pytest.importorskip("tensorstore")
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    checkpoints.ignore_closed_loop_callbacks()

    def call_soon_threadsafe() -> None:  # what a closed asyncio loop raises, by that name
        raise RuntimeError("Event loop is closed")

    def something_else() -> None:
        raise RuntimeError("a real problem")

    for callback in (call_soon_threadsafe, something_else):
        promise, future = ts.Promise.new()
        future.add_done_callback(lambda _f, cb=callback: cb())
        setter = threading.Thread(target=promise.set_result, args=(1,))
        setter.start()
        setter.join()
    assert seen == ["a real problem"]


def test_descriptions_and_directories_that_are_no_checkpoint(ckpt: Path, tmp_path: Path
                                                             ) -> None:
    def with_description(name: str, text: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / META_FILE).write_text(text)
        return folder

    cases = {
        "{not json": r"epam_model.json is not valid JSON \(Expecting property name enclosed "
                     r"in double quotes at line 1 column 2\): the checkpoint's description "
                     r"is damaged$",
        "": r"epam_model.json is empty \(0 bytes\): the checkpoint's description is damaged$",
        "[1, 2]": r"epam_model.json: expected a JSON object, found a JSON list$",
        '{"num_classes": 3}': r"epam_model.json: expected a 'model' entry naming the model, "
                              r"found None$",
    }
    for i, (text, expected) in enumerate(cases.items()):
        folder = with_description(f"meta{i}", text)
        message = one_line_error(lambda folder=folder: extract.load_model(folder))
        assert message.startswith(str(folder / META_FILE)) and re.search(expected, message)

    meta = json.loads((ckpt / META_FILE).read_text())
    folder = with_description("bad_clip", json.dumps(dict(meta, clip=dict(meta["clip"],
                                                                          rgb_size=[64]))))
    assert one_line_error(lambda: extract.load_model(folder)) == (
        f"{folder}: {META_FILE} entry 'clip': expected 'rgb_size' to be [height, width], "
        "positive integers, found [64]")

    unfinished = copy_of(ckpt, tmp_path, "unfinished")
    (unfinished / META_FILE).unlink()
    assert "it may be an interrupted write" in one_line_error(
        lambda: extract.load_model(unfinished), FileNotFoundError)

    plain = tmp_path / "plain"
    (plain / "b").mkdir(parents=True)
    (plain / "a.txt").write_text("x")
    assert one_line_error(lambda: extract.load_model(plain), FileNotFoundError) == (
        f"{plain} is not an epam-jax checkpoint: expected {META_FILE} and {VARIABLES_DIR}/ "
        "(written by epam_jax.checkpoints.save_variables), found 2 other entries (a.txt, b)")
    (tmp_path / "empty").mkdir()
    assert one_line_error(lambda: extract.load_model(tmp_path / "empty"),
                          FileNotFoundError).endswith("found an empty directory")
    assert one_line_error(lambda: extract.load_model(ckpt / VARIABLES_DIR),
                          FileNotFoundError).endswith(f"; pass the checkpoint directory {ckpt}")
    workdir = tmp_path / "workdir"
    shutil.copytree(ckpt, workdir / "model")
    assert one_line_error(lambda: extract.load_model(workdir), FileNotFoundError).endswith(
        f"it looks like a training workdir: its exported model is {workdir / 'model'}")
    assert one_line_error(lambda: extract.load_model(ckpt / META_FILE)) == (
        f"{ckpt / META_FILE} is the description of an epam-jax checkpoint; pass the "
        f"directory holding it, {ckpt}")


def test_clip_fields_is_the_one_rule() -> None:
    meta = {"checkpoint": "CK", "clip": clip_geometry(ClipConfig(rgb=False, **RECORDED))}
    said: list[str] = []
    assert clip_fields(meta, warn=said.append) == RECORDED and not said
    same = clip_fields(meta, size=SIZE, clip_len=CLIP_LEN, rgb_stride=RGB_STRIDE,
                       warn=said.append)
    assert same == RECORDED and not said
    other = clip_fields(meta, size=64, clip_len=16, warn=said.append)
    assert other == dict(RECORDED, clip_len=16, rgb_size=(64, 64), heatmap_size=(16, 16))
    assert said == ["running CK on other clips than it records: size 64 (trained at 32x32), "
                    "clip_len 16 (trained with 8); its outputs may be worse than in training"]
    # no record (a PyTorch checkpoint, an older description): the paper's, overrides silent
    said.clear()
    assert clip_fields({"checkpoint": "old"}, warn=said.append) == PAPER
    assert clip_fields({}, size=64, warn=said.append)["heatmap_size"] == (16, 16)
    assert not said
    foreign = {"checkpoint": "CK", "clip": dict(meta["clip"], rgb_mean=[0.5, 0.5, 0.5])}
    with pytest.raises(ValueError, match=r"CK was trained on RGB normalised with mean "
                                         r"\[0\.5, 0\.5, 0\.5\]"):
        clip_fields(foreign)
    with pytest.raises(ValueError, match="positive multiple of 4, got 30"):
        clip_fields(meta, size=30)


def test_pytorch_and_converted_checkpoints_mean_the_paper_geometry(variables, ckpt: Path,
                                                                    tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import converters
    from converters.__main__ import main as convert_main

    pth = tmp_path / "epam.pth"
    torch.save({"model_state_dict": converters.flax_to_torch(variables, model="epam")}, pth)
    assert extract.load_model(pth).clip_fields() == PAPER
    assert convert_main([str(pth), str(tmp_path / "converted")]) == 0
    assert load_meta(tmp_path / "converted")["clip"] == clip_geometry()
    # a description written before geometry was recorded: the paper's
    old = copy_of(ckpt, tmp_path, "old")
    meta = json.loads((old / META_FILE).read_text())
    del meta["clip"], meta["checksums"]
    (old / META_FILE).write_text(json.dumps(meta))
    (old / CHECKSUM_FILE).unlink()
    assert extract.load_model(old).clip_fields() == PAPER


@pytest.mark.parametrize("hosts", [1, 2], ids=["one_host", "several_hosts"])
def test_training_export_records_the_training_geometry(variables, tmp_path: Path,
                                                       monkeypatch, hosts: int) -> None:
    """``export_model`` of the demo config (4 RGB frames of 64x64, 16 pose frames of 16x16),
    through the single-host ``save_variables`` and the several-host branch (orbax write
    plus one description), which must describe the model the same way."""
    import types

    import jax

    from configs.demo import get_config
    from epam_jax.train import loop

    config = get_config()
    config.unlock()
    config.data.video_root = str(tmp_path)
    if hosts > 1:  # the several-host branch, run by this one process
        monkeypatch.setattr(loop, "jax", types.SimpleNamespace(
            process_count=lambda: hosts, process_index=lambda: 0, device_get=jax.device_get))
    path = loop.export_model(tmp_path / "model", types.SimpleNamespace(variables=variables),
                             config, 7, {"fused/top1": 50.0})
    meta = load_meta(path)
    assert meta["clip"] == dict(clip_geometry(), clip_len=16, rgb_stride=4, rgb_size=[64, 64],
                                heatmap_size=[16, 16])
    assert (meta["step"], meta["model"], meta["checksums"]) == (7, "epam", CHECKSUM_FILE)
    loaded = extract.load_model(path)  # every array checked against checksums.json
    assert loaded.clip_fields() == {"clip_len": 16, "rgb_stride": 4, "rgb_size": (64, 64),
                                    "heatmap_size": (16, 16), "sigma": 0.6}


def test_predict_and_extract_run_at_the_recorded_geometry(ckpt: Path, dataset: dict[str, Path],
                                                         tmp_path: Path, capsys) -> None:
    result = predict.main([str(dataset["video"]), "--checkpoint", str(ckpt), "--poses",
                           str(dataset["poses"]), "--crop", "none", "--top-k", "2",
                           "--out-dir", str(tmp_path / "pred")])
    captured = capsys.readouterr()
    assert not warnings_in(captured.err)
    assert ("clip    8 pose frames of 8x8 heatmaps (sigma 0.6), 4 RGB frames of 32x32 "
            "(every 2)") in captured.out
    assert len(result["frame_indices"]) == CLIP_LEN // RGB_STRIDE
    assert result["outputs"]["attention"].shape == (CLIP_LEN // RGB_STRIDE, 1, 1, 1)
    report = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert (report["size"], report["clip_len"], report["rgb_stride"]) == (SIZE, CLIP_LEN,
                                                                          RGB_STRIDE)

    # the same clip through extract (the same compiled forward pass): the same logits
    out = tmp_path / "feats"
    extract.main(["--checkpoint", str(ckpt), "--out-dir", str(out), "--video",
                  str(dataset["video"]), "--poses", str(dataset["poses"]), "--crop", "none",
                  "--fusion", "residual", "--quiet"])
    assert not warnings_in(capsys.readouterr().err)
    settings = json.loads((out / "extract_meta.json").read_text())
    assert {k: settings[k] for k in ("clip_len", "rgb_stride", "rgb_size", "heatmap_size")} == {
        "clip_len": CLIP_LEN, "rgb_stride": RGB_STRIDE, "rgb_size": [SIZE, SIZE],
        "heatmap_size": [SIZE // 4, SIZE // 4]}
    with np.load(out / f"{dataset['video'].stem}.npz") as feats:
        assert feats["attention"].shape == (CLIP_LEN // RGB_STRIDE, 1, 1, 1)
        np.testing.assert_allclose(feats["scores"], result["outputs"]["scores"], rtol=1e-5,
                                   atol=1e-5)


class _Stop(Exception):
    """Raised by a stand-in for the slow part, carrying what it was given."""

    def __init__(self, **given: Any) -> None:
        super().__init__("stopped")
        self.given = given


def _stop(*args: Any, **kwargs: Any) -> None:
    raise _Stop(args=args, **kwargs)


def test_an_explicit_size_that_differs_warns_once_and_is_used(
        ckpt: Path, dataset: dict[str, Path], monkeypatch, capsys) -> None:
    """predict --size 64 on a 32x32 checkpoint: one warning line, then a 64x64 clip."""
    given = {}

    def fake_predict_clip(loaded: Any, clip: Any) -> dict[str, np.ndarray]:
        given["clip"] = clip
        return {"rgb_logits": np.zeros(NUM_CLASSES), "pose_logits": np.zeros(NUM_CLASSES),
                "scores": np.zeros(NUM_CLASSES), "attention": np.zeros((4, 2, 2, 1))}

    monkeypatch.setattr(predict, "predict_clip", fake_predict_clip)
    result = predict.main([str(dataset["video"]), "--checkpoint", str(ckpt), "--poses",
                           str(dataset["poses"]), "--crop", "none", "--size", "64"])
    assert warnings_in(capsys.readouterr().err) == [
        f"warning: running {ckpt} on other clips than it records: size 64 (trained at "
        "32x32); its outputs may be worse than in training"]
    assert given["clip"].rgb.shape == (CLIP_LEN // RGB_STRIDE, 64, 64, 3)
    assert given["clip"].heatmap.shape == (CLIP_LEN, 16, 16, 17)
    assert result["size"] == 64


def test_evaluate_extract_and_stream_take_the_recorded_geometry(
        ckpt: Path, dataset: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    """Their CLIs hand the checkpoint's geometry (or the overrides, with a warning) to the
    work, here replaced by a stand-in that stops with what it was given."""
    monkeypatch.setattr(evaluate, "evaluate_model", _stop)
    base = ["--checkpoint", str(ckpt), "--annotations", str(dataset["annotations"]),
            "--video-root", str(dataset["videos"]), "--quiet"]
    for extra, want, warned in (([], RECORDED, []),
                                (["--size", "64", "--clip-len", "16", "--rgb-stride", "2"],
                                 dict(RECORDED, clip_len=16, rgb_size=(64, 64),
                                      heatmap_size=(16, 16)),
                                 ["size 64 (trained at 32x32)", "clip_len 16 (trained with 8)"])):
        with pytest.raises(_Stop) as stopped:
            evaluate.main(base + extra)
        config = stopped.value.given["args"][2]
        assert {k: getattr(config, k) for k in RECORDED} == want
        lines = warnings_in(capsys.readouterr().err)
        assert len(lines) == (1 if warned else 0) and all(w in lines[0] for w in warned)

    monkeypatch.setattr(extract, "extract", _stop)
    with pytest.raises(_Stop) as stopped:
        extract.main(base + ["--out-dir", str(tmp_path / "feats")])
    assert {k: getattr(stopped.value.given["args"][1], k) for k in RECORDED} == RECORDED

    monkeypatch.setattr(stream, "recognize_stream", _stop)
    with pytest.raises(_Stop) as stopped:
        stream.main([str(dataset["video"]), "--checkpoint", str(ckpt), "--rgb-stride", "4"])
    given = stopped.value.given
    assert (given["size"], given["clip_len"], given["rgb_stride"]) == (SIZE, CLIP_LEN, 4)
    assert warnings_in(capsys.readouterr().err) == [
        f"warning: running {ckpt} on other clips than it records: rgb_stride 4 (trained with "
        "2); its outputs may be worse than in training"]


def test_load_model_accepts_two_stream_checkpoints_only(tmp_path: Path, ntu_model) -> None:
    from epam_jax.checkpoints import load_model

    path, variables = ntu_model
    loaded = load_model(path)
    assert isinstance(loaded.model, EPAMNet) and loaded.has_heads
    assert loaded.model.num_classes == NTU_CLASSES
    backbone = {c: {k: v for k, v in variables[c].items() if not k.endswith("_cls_head")}
                for c in ("params", "batch_stats")}
    loaded_bb = load_model(save_variables(tmp_path / "backbone", backbone))
    assert isinstance(loaded_bb.model, EPAMBackbone) and not loaded_bb.has_heads

    rgb_only = save_variables(tmp_path / "rgb", random_variables(SingleStreamNet("rgb")))
    with pytest.raises(ValueError, match="two-stream EPAM-Net checkpoint.*'rgb'"):
        load_model(rgb_only)
    with pytest.raises(FileNotFoundError, match="is not an epam-jax checkpoint: expected "
                                                "epam_model.json and variables/"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "weights.bin")


def test_load_model_from_pytorch_checkpoint(tmp_path: Path, ntu_model) -> None:
    torch = pytest.importorskip("torch")
    import converters
    from epam_jax.checkpoints import load_model

    _, variables = ntu_model
    state = converters.flax_to_torch(variables, model="epam")
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}},
               tmp_path / "epam.pth")
    loaded = load_model(tmp_path / "epam.pth")
    assert isinstance(loaded.model, EPAMNet) and loaded.model.num_classes == NTU_CLASSES
    for got, want in zip(jax.tree_util.tree_leaves(loaded.variables),
                         jax.tree_util.tree_leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    rgb_state = converters.flax_to_torch(random_variables(SingleStreamNet("rgb")), model="rgb")
    torch.save({"state_dict": rgb_state}, tmp_path / "rgb.pth")
    with pytest.raises(ValueError, match="not a two-stream EPAM-Net checkpoint"):
        load_model(tmp_path / "rgb.pth")


torch = pytest.importorskip("torch")


def test_orbax_files_and_single_stream_assembly(tmp_path):
    rgb = randomize_(build_reference("rgb", num_classes=11), 8)
    pose = randomize_(build_reference("pose", num_classes=11), 9)
    torch.save({"meta": {}, "state_dict": rgb.state_dict()}, tmp_path / "rgb.pth")
    pose_vars = torch_to_flax(pose.state_dict(), "pose")
    save_variables(tmp_path / "pose_ckpt", pose_vars)
    with pytest.raises(FileExistsError):
        save_variables(tmp_path / "pose_ckpt", pose_vars)
    assert_trees_equal(load_variables(tmp_path / "pose_ckpt"), pose_vars)
    with pytest.raises(ValueError, match="'pose' checkpoint, expected 'rgb'"):
        load_variables(tmp_path / "pose_ckpt", expect_model="rgb")

    variables = from_single_streams(
        tmp_path / "rgb.pth", tmp_path / "pose_ckpt", model="epam"
    )
    assert set(variables["params"]) == {
        "rgb_backbone", "pose_backbone", "attention_module", "rgb_cls_head", "pose_cls_head"
    }
    assert_trees_equal(variables["params"]["pose_backbone"], pose_vars["params"]["pose_backbone"])
    rgb_vars = torch_to_flax(rgb.state_dict(), "rgb")
    assert_trees_equal(variables["params"]["rgb_cls_head"], rgb_vars["params"]["rgb_cls_head"])
    att = variables["params"]["attention_module"]
    # fresh attention, initialised as the original: kaiming conv, BN weight 1 bias 0
    assert np.all(np.asarray(att["spatial"]["bn"]["scale"]) == 1.0)
    assert np.std(np.asarray(att["spatial"]["conv"]["kernel"])) > 0
