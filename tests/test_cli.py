"""epam_jax.cli and the conventions every tool follows: one clear line for bad command
lines and bad numbers, and no empty output folder left by a run that fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_video

from epam_jax.checkpoints import LoadedModel
from epam_jax.cli import OutputPathBlocked, output_dirs, run_cli
from epam_jax.data import load_annotations, make_synthetic_dataset, save_annotations
from epam_jax.models import EPAMNet

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three synthetic clips of 32x32 (annotations.pkl and videos/)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_classes=NUM_CLASSES,
                                  num_train=2, num_val=1, frames=(10, 16), size=(32, 32),
                                  seed=3)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A readable 64x48 mp4 of 20 frames."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(20)]
    return encode_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=10)


@pytest.fixture
def bad_checkpoint(tmp_path: Path) -> Path:
    """A folder that is not a checkpoint (no epam_model.json)."""
    path = tmp_path / "not_a_checkpoint"
    path.mkdir()
    return path


def stub_model() -> LoadedModel:
    """An EPAM-Net with heads and no variables: enough to get past loading."""
    meta = {"model": "epam", "num_classes": NUM_CLASSES, "checkpoint": "stub",
            "attention_type": "CBAM_spatial_efficient_temporal"}
    return LoadedModel(EPAMNet(num_classes=NUM_CLASSES), {"params": {}, "batch_stats": {}},
                       meta)


def one_line_error(entry, argv: list[str]) -> str:
    """Run a CLI ``main`` as its ``python -m`` entry point does; the one-line message."""
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: entry(argv))
    message = str(info.value)
    assert info.value.code not in (0, None) and "\n" not in message, message
    return message


def refuses_checkpoint(message: str, path: Path) -> bool:
    """Whether ``message`` is the checkpoint loader's refusal of ``path``."""
    return message.startswith(f"error: {path} ") and "checkpoint" in message


def argparse_error(entry, argv: list[str], capsys) -> str:
    """The argument parser's refusal: exit status 2 and one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument "), err
    return err.strip()


def test_output_dirs_removes_only_the_empty_folders_it_made(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with output_dirs(tmp_path / "a" / "b" / "c", existing, None) as made:
            assert made == [tmp_path / "a" / "b" / "c", existing]
            assert (tmp_path / "a" / "b" / "c").is_dir()
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # a/b/c all gone

    # scratch files (a settings record) do not count as results; a clip file does
    with pytest.raises(KeyboardInterrupt):
        with output_dirs(tmp_path / "s", scratch=("meta.json",)) as (out,):
            (out / "meta.json").write_text("{}")
            raise KeyboardInterrupt
    assert not (tmp_path / "s").exists()
    with pytest.raises(OSError, match="disk full"):
        with output_dirs(tmp_path / "k" / "feats", scratch=("meta.json",)) as (out,):
            (out / "meta.json").write_text("{}")
            (out / "clip1.npz").write_bytes(b"complete")
            raise OSError("disk full")
    assert sorted(p.name for p in (tmp_path / "k" / "feats").iterdir()) == [
        "clip1.npz", "meta.json"]
    with output_dirs(tmp_path / "ok"):  # success keeps the folder, even empty
        pass
    assert (tmp_path / "ok").is_dir()

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathBlocked, match=f"cannot create the output directory "
                       f"{blocker / 'out'}: {blocker} is a file, not a directory") as info:
        with output_dirs(tmp_path / "first", blocker / "out"):
            pass
    assert isinstance(info.value, NotADirectoryError) and isinstance(info.value,
                                                                     PermissionError)
    assert not (tmp_path / "first").exists()  # made before the refusal, removed again


def test_predict_that_fails_leaves_no_output_folder(tmp_path: Path, video: Path,
                                                    bad_checkpoint: Path) -> None:
    from epam_jax import predict

    out = tmp_path / "new" / "pred"
    base = ["--checkpoint", str(bad_checkpoint), "--out-dir", str(out)]
    assert one_line_error(predict.main, [str(tmp_path / "missing.mp4"), *base]) == (
        f"error: no video file at {tmp_path / 'missing.mp4'}")
    message = one_line_error(predict.main, [str(video), *base,
                                            "--attention-gif", str(tmp_path / "gif" / "a.gif")])
    assert refuses_checkpoint(message, bad_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_checkpoint"]


def test_extract_that_fails_leaves_no_output_folder_but_keeps_one_it_resumes(
        tmp_path: Path, dataset: Path, bad_checkpoint: Path, monkeypatch) -> None:
    from epam_jax import extract

    feats = tmp_path / "feats"
    argv = ["--checkpoint", str(bad_checkpoint), "--out-dir", str(feats), "--annotations",
            str(dataset), "--video-root", str(dataset.parent / "videos"), "--size", "32",
            "--quiet"]
    assert refuses_checkpoint(one_line_error(extract.main, argv), bad_checkpoint)
    assert not feats.exists()

    # past the checkpoint: extract_meta.json is written, then the videos are missing
    monkeypatch.setattr(extract, "load_model", lambda path: stub_model())
    empty_root = tmp_path / "no_videos"
    empty_root.mkdir()
    argv[argv.index("--video-root") + 1] = str(empty_root)
    assert "videos not found" in one_line_error(extract.main, argv)
    assert not feats.exists()

    # a folder that holds results (or existed) is kept as it is
    feats.mkdir()
    (feats / "done_clip.npz").write_bytes(b"complete")
    assert "videos not found" in one_line_error(extract.main, argv)
    assert sorted(p.name for p in feats.iterdir()) == ["done_clip.npz", extract.META_FILE]


def test_evaluate_export_prepare_that_fail_leave_no_output_folder(
        tmp_path: Path, dataset: Path, bad_checkpoint: Path, capsys, monkeypatch) -> None:
    from epam_jax import evaluate, export, prepare

    videos = str(dataset.parent / "videos")
    message = one_line_error(evaluate.main, [
        "--checkpoint", str(bad_checkpoint), "--annotations", str(dataset), "--video-root",
        videos, "--out-dir", str(tmp_path / "eval"), "--confusion",
        str(tmp_path / "pics" / "confusion.png")])
    assert refuses_checkpoint(message, bad_checkpoint)
    message = one_line_error(export.main, [str(bad_checkpoint), str(tmp_path / "exp" / "m"),
                                           "--format", "stablehlo"])
    assert refuses_checkpoint(message, bad_checkpoint)
    # prepare: the annotations name videos of another pattern; none is found
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep"), "--video-pattern", "{frame_dir}_x.mp4",
                         "--no-progress"]) == 1
    assert (tmp_path / "prep" / prepare.MANIFEST_NAME).is_file()  # the failures' record
    shutil.rmtree(tmp_path / "prep")
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep"), "--split", "nosuch"]) == 2
    assert "error:" in capsys.readouterr().err

    def no_plan(*args, **kwargs):  # a failure once the folder and its lock are made
        raise ValueError("cannot plan")

    monkeypatch.setattr(prepare, "_plan", no_plan)
    assert prepare.main(["--annotations", str(dataset), "--video-root", videos, "--out-dir",
                         str(tmp_path / "prep" / "sub")]) == 2
    assert capsys.readouterr().err == "error: cannot plan\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_checkpoint"]


def test_stream_that_fails_after_making_its_folders_removes_them(
        tmp_path: Path, video: Path, dataset: Path, monkeypatch) -> None:
    from epam_jax import stream

    ann = dict(load_annotations(dataset)[0], total_frames=20, img_shape=(48, 64),
               original_shape=(48, 64))
    ann["keypoint"] = np.resize(ann["keypoint"], (1, 20, 17, 2))
    ann["keypoint_score"] = np.ones((1, 20, 17), np.float32)
    save_annotations(tmp_path / "poses.pkl", [ann])

    def no_compile(self) -> float:
        raise RuntimeError("the model failed to compile")

    monkeypatch.setattr(stream._Recognizer, "warm_up", no_compile)
    with pytest.raises(RuntimeError, match="failed to compile"):
        stream.recognize_stream(os.fspath(video), stub_model(), tmp_path / "out" / "timeline",
                                poses=tmp_path / "poses.pkl", size=32,
                                video_out=tmp_path / "annotated" / "a.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.pkl"]


def test_huge_batch_size_is_capped_at_the_clips(tmp_path: Path, dataset: Path,
                                                monkeypatch) -> None:
    import jax

    from epam_jax import evaluate, extract
    from epam_jax.data import loader

    devices = len(jax.local_devices())
    clips = len(load_annotations(dataset))
    rows = -(-clips // devices) * devices
    monkeypatch.setattr(extract, "load_model", lambda path: stub_model())
    seen: list[int] = []

    def make_forward(loaded, fusion, pooling, inputs):
        def forward(batch):
            seen.append(len(batch["rgb"]))
            return {"attention": np.zeros((len(batch["rgb"]), 4, 2, 2, 1), np.float32)}
        return forward, devices

    monkeypatch.setattr(extract, "make_forward", make_forward)
    written = extract.main(["--checkpoint", "stub", "--out-dir", str(tmp_path / "f"),
                            "--annotations", str(dataset), "--video-root",
                            str(dataset.parent / "videos"), "--size", "32", "--quiet",
                            "--batch-size", "1000"])  # (unfixed: 1000 clips decoded)
    assert len(written) == clips and seen == [rows]

    class Stop(Exception):
        pass

    class Loader(loader.ClipLoader):  # the batch evaluation asks for, then stop
        def __init__(self, annotations, config, batch_size, *args, **kwargs):
            seen.append(batch_size)
            raise Stop

    monkeypatch.setattr(loader, "ClipLoader", Loader)
    config = extract.ClipConfig(video_root=str(dataset.parent / "videos"), rgb_size=(32, 32),
                                heatmap_size=(8, 8), num_clips=2)
    with pytest.raises(Stop):
        evaluate.evaluate_model(stub_model(), load_annotations(dataset), config,
                                batch_size=100000, progress=False)
    assert seen[-1] == -(-2 * clips // devices) * devices  # 2 views a clip


def test_non_positive_numbers_are_refused_in_one_line(tmp_path: Path, video: Path,
                                                      dataset: Path, capsys) -> None:
    from epam_jax import evaluate, extract, predict, stream

    missing = str(tmp_path / "no_checkpoint")  # refused before the checkpoint is read
    pred = [str(video), "--checkpoint", missing]
    assert one_line_error(predict.main, [*pred, "--size", "30"]) == (
        "error: --size must be a positive multiple of 4, got 30")
    assert one_line_error(predict.main, [*pred, "--top-k", "0"]) == (
        "error: --top-k must be > 0, got 0")
    assert argparse_error(predict.main, [*pred, "--top-k", "many"], capsys) == (
        "error: argument --top-k: invalid int value: 'many' "
        "(usage: python -m epam_jax.predict -h)")

    ext = ["--checkpoint", missing, "--out-dir", str(tmp_path / "f"), "--annotations",
           str(dataset), "--video-root", str(tmp_path)]
    assert one_line_error(extract.main, [*ext, "--batch-size", "0"]) == (
        "error: --batch-size must be > 0, got 0")
    assert argparse_error(extract.main, [*ext, "--size", "30"], capsys) == (
        "error: argument --size: expected a positive multiple of 4, got 30 "
        "(usage: python -m epam_jax.extract -h)")

    ev = ["--checkpoint", missing, "--annotations", str(dataset), "--video-root",
          str(tmp_path)]
    for flag, value, expected in (("--batch-size", "0", "a positive integer"),
                                  ("--workers", "-1", "an integer >= 0"),
                                  ("--num-clips", "0", "a positive integer"),
                                  ("--size", "30", "a positive multiple of 4")):
        assert argparse_error(evaluate.main, [*ev, flag, value], capsys) == (
            f"error: argument {flag}: expected {expected}, got {value} "
            "(usage: python -m epam_jax.evaluate -h)")

    st = [str(video), "--checkpoint", missing, "--out-dir", str(tmp_path / "s")]
    for flag, value, expected in (
            ("--top-k", "0", "--top-k must be > 0, got 0"),
            ("--size", "30", "--size must be a positive multiple of 4, got 30"),
            ("--window", "0", "--window must be > 0, got 0.0"),
            ("--stride", "-1", "--stride must be > 0, got -1.0"),
            ("--clip-len", "0", "--clip-len must be > 0, got 0"),
            ("--rgb-stride", "0", "--rgb-stride must be > 0, got 0"),
            ("--min-person", "2", "--min-person must be a share of frames in [0, 1], got 2.0")):
        assert one_line_error(stream.main, [*st, flag, value]) == f"error: {expected}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
