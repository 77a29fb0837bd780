"""grain loader, per-sample pipeline and the synthetic dataset."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from epam_jax.data import (
    ClipConfig,
    ClipLoader,
    generate_heatmaps,
    load_annotations,
    make_sample,
    make_synthetic_dataset,
)
from epam_jax.data.heatmaps_jax import heatmaps_from_keypoints

POSE_ONLY = ClipConfig(rgb=False, pose="heatmap")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        out, num_classes=4, num_train=10, num_val=7, frames=(20, 110), size=(48, 64), seed=3
    )


def rgb_config(dataset: Path, **kw) -> ClipConfig:
    # 48x64 frames, resized to 32x32 on reading: not prepared videos, read on purpose
    kw.setdefault("require_prepared", False)
    return ClipConfig(video_root=str(dataset.parent / "videos"), rgb_size=(32, 32), **kw)


def batches(loader, n: int | None = None) -> list[dict]:
    it = iter(loader)
    return list(it) if n is None else [next(it) for _ in range(n)]


def test_synthetic_dataset_is_in_the_real_format(dataset: Path) -> None:
    raw = pickle.loads(dataset.read_bytes())
    assert set(raw) == {"split", "annotations"}
    assert len(raw["split"]["train"]) == 10 and len(raw["split"]["val"]) == 7
    anns = load_annotations(dataset, num_classes=4)
    assert sorted({a["label"] for a in anns}) == [0, 1, 2, 3]
    lengths = {a["total_frames"] for a in anns}
    assert min(lengths) >= 20 and max(lengths) <= 110 and len(lengths) > 3
    for a in anns:
        assert a["img_shape"] == (48, 64)
        assert (dataset.parent / "videos" / f"{a['frame_dir']}.mp4").is_file()
    kp = np.concatenate([a["keypoint"].reshape(-1, 2) for a in anns])
    assert np.isnan(kp).any() and (kp == 0).any()  # missing joints, both ways
    visible = kp[np.isfinite(kp).all(1) & (kp != 0).all(1)]
    assert visible[:, 0].min() > -20 and visible[:, 0].max() < 84


def test_synthetic_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "epam_jax.data.synthetic", str(tmp_path), "--num-classes",
           "3", "--train", "3", "--val", "0", "--frames", "8", "12", "--size", "32", "32"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    assert "3 samples" in done.stdout
    assert len(load_annotations(tmp_path / "annotations.pkl", split="train")) == 3
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic_dataset(tmp_path, num_classes=99)


def test_sample_with_rgb_and_heatmaps(dataset: Path) -> None:
    ann = load_annotations(dataset)[0]
    config = rgb_config(dataset)
    sample = make_sample(ann, config, train=False)
    assert sample["rgb"].shape == (16, 32, 32, 3) and sample["rgb"].dtype == np.float32
    assert sample["heatmap"].shape == (48, 56, 56, 17) and sample["heatmap"].max() > 0.5
    assert sample["label"] == ann["label"] and sample["label"].dtype == np.int32
    again = make_sample(ann, config, train=False)
    np.testing.assert_array_equal(sample["rgb"], again["rgb"])
    # train mode: flipped samples mirror both streams together
    flips = [make_sample(ann, config, True, np.random.default_rng(s)) for s in range(6)]
    assert any(not np.array_equal(f["heatmap"], sample["heatmap"]) for f in flips)


def test_flip_applies_to_both_streams(dataset: Path) -> None:
    ann = dict(load_annotations(dataset)[1])
    ann["total_frames"] = 48  # 48..95 frames without skips: every draw is the same clip
    ann["keypoint"], ann["keypoint_score"] = ann["keypoint"][:, :48], ann["keypoint_score"][:, :48]
    config = rgb_config(dataset, flip_prob=1.0)
    flipped = make_sample(ann, config, True, np.random.default_rng(0))
    plain = make_sample(ann, rgb_config(dataset, flip_prob=0.0), True, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["rgb"], plain["rgb"][:, :, ::-1])
    assert not np.array_equal(flipped["heatmap"], plain["heatmap"])


def test_train_resumes_from_saved_state(dataset: Path) -> None:
    loader = ClipLoader(dataset, POSE_ONLY, 2, True, split="train", seed=7, shard_index=0,
                        shard_count=1, read_threads=2)
    assert len(loader) == 5
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses into the second epoch
    resumed = iter(ClipLoader(dataset, POSE_ONLY, 2, True, split="train", seed=7,
                              shard_index=0, shard_count=1, read_threads=2))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert set(got) == {"heatmap", "label", "mask", "index"}
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_train_shuffles_by_seed_and_epoch(dataset: Path) -> None:
    def order(seed: int, shard: int = 0, count: int = 1) -> list[int]:
        cfg = ClipConfig(rgb=False, pose="keypoint")
        loader = ClipLoader(dataset, cfg, 2, True, split="train", seed=seed, num_epochs=2,
                            shard_index=shard, shard_count=count, read_threads=1)
        return [int(i) for b in loader for i in b["index"]]

    first = order(1)
    assert len(first) == 20
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    assert first[:10] != first[10:]  # reshuffled each epoch
    assert order(1) == first and order(2) != first
    shards = [order(1, s, 2) for s in range(2)]  # each host: 5 samples -> 2 batches of 2
    assert all(len(s) == 8 for s in shards)
    assert not set(shards[0][:4]) & set(shards[1][:4])


def test_eval_covers_every_sample_once_across_hosts(dataset: Path) -> None:
    seen, lengths = [], set()
    for shard in range(3):
        loader = ClipLoader(dataset, POSE_ONLY, 2, False, split="val", shard_index=shard,
                            shard_count=3)
        got = batches(loader)
        assert len(got) == len(loader)
        lengths.add(len(got))
        for b in got:
            assert b["heatmap"].shape == (2, 48, 56, 56, 17)
            seen += b["index"][b["mask"] == 1].tolist()
    assert lengths == {2}  # 7 samples on 3 hosts -> at most 3 each -> 2 batches everywhere
    assert sorted(seen) == list(range(7))
    again = batches(ClipLoader(dataset, POSE_ONLY, 2, False, split="val", shard_index=0,
                               shard_count=3))
    np.testing.assert_array_equal(again[0]["heatmap"], batches(ClipLoader(
        dataset, POSE_ONLY, 2, False, split="val", shard_index=0, shard_count=3))[0]["heatmap"])


def test_eval_views_cover_every_sample_and_view_once(dataset: Path) -> None:
    """K test clips x flip: every (sample, view) once across hosts, each equal to
    make_sample(view=v); view 1 is view 0 mirrored, clip 1 another test clip."""
    cfg = ClipConfig(rgb=False, pose="heatmap", heatmap_size=(16, 16), clip_len=8,
                     num_clips=2, test_flip=True)
    assert cfg.num_views == 4 and [cfg.view(v) for v in range(4)] == [
        (0, False), (0, True), (1, False), (1, True)]
    anns = load_annotations(dataset, split="val")
    seen = []
    for shard in range(2):
        for b in batches(ClipLoader(anns, cfg, 3, False, shard_index=shard, shard_count=2)):
            for row in np.flatnonzero(b["mask"] == 1):
                i, v = int(b["index"][row]), int(b["view"][row])
                seen.append((i, v))
                want = make_sample(anns[i], cfg, False, view=v)["heatmap"]
                np.testing.assert_array_equal(b["heatmap"][row], want)
    assert sorted(seen) == [(i, v) for i in range(7) for v in range(4)]
    plain = make_sample(anns[0], cfg, False, view=0)["heatmap"]
    one_clip_cfg = ClipConfig(rgb=False, heatmap_size=(16, 16), clip_len=8)
    one_clip = make_sample(anns[0], one_clip_cfg, False)["heatmap"]
    np.testing.assert_array_equal(plain, one_clip)  # clip 0 is the one-clip sample
    assert not np.array_equal(make_sample(anns[0], cfg, False, view=2)["heatmap"], plain)
    with pytest.raises(ValueError, match="view"):
        make_sample(anns[0], cfg, False, view=4)


def test_unprepared_videos_are_refused_early(dataset: Path, tmp_path: Path) -> None:
    """Non-square (raw) dataset videos stop the loader before any batch, naming prepare;
    require_prepared=False reads them; a missing video is named."""
    anns = load_annotations(dataset, split="val")
    with pytest.raises(ValueError, match=r"64x48 frames.*python -m epam_jax.prepare"):
        ClipLoader(anns, rgb_config(dataset, require_prepared=True), 2, False,
                   shard_index=0, shard_count=1)
    ClipLoader(anns, rgb_config(dataset), 2, False, shard_index=0, shard_count=1)
    gone = [dict(anns[0], frame_dir="not_there")] + anns[1:]
    with pytest.raises(FileNotFoundError, match="not_there"):
        ClipLoader(gone, rgb_config(dataset, require_prepared=True), 2, False,
                   shard_index=0, shard_count=1)
    # a missing or unreadable video among many is found when the loader is made, before
    # any batch (or compile), whatever require_prepared says
    many = anns * 10
    with pytest.raises(FileNotFoundError, match="not_there"):
        ClipLoader(many[:37] + gone[:1] + many[37:], rgb_config(dataset), 2, True,
                   shard_index=0, shard_count=1)
    broken = tmp_path / "videos"
    broken.mkdir()
    for a in anns:
        (broken / f"{a['frame_dir']}.mp4").write_bytes(
            (dataset.parent / "videos" / f"{a['frame_dir']}.mp4").read_bytes())
    half = (broken / f"{anns[-1]['frame_dir']}.mp4")
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])  # truncated: no index
    with pytest.raises(ValueError, match=f"{anns[-1]['frame_dir']}.mp4"):
        ClipLoader(anns, ClipConfig(video_root=str(broken), rgb_size=(32, 32),
                                    require_prepared=False), 2, False,
                   shard_index=0, shard_count=1)


def test_keypoint_batches_give_the_same_heatmaps_on_device(dataset: Path) -> None:
    anns = load_annotations(dataset, split="val")
    kp_cfg = ClipConfig(rgb=False, pose="keypoint", num_persons=2)
    (kp_batch,) = batches(ClipLoader(anns, kp_cfg, 7, False, shard_index=0, shard_count=1))
    assert kp_batch["keypoint"].shape == (7, 2, 48, 17, 3)
    on_device = np.asarray(heatmaps_from_keypoints(kp_batch["keypoint"]))
    host = np.stack([make_sample(a, POSE_ONLY, False)["heatmap"] for a in anns])
    assert np.abs(on_device - host).max() <= 1e-6


def test_worker_processes_and_resume(dataset: Path) -> None:
    def loader() -> ClipLoader:
        return ClipLoader(dataset, rgb_config(dataset), 2, True, split="train", seed=3,
                          shard_index=0, shard_count=1, worker_count=2, read_threads=1,
                          prefetch=2)

    it = iter(loader())
    try:
        first = next(it)
        assert first["rgb"].shape == (2, 16, 32, 32, 3)
        next(it)
        state = it.get_state()
        want = next(it)
    finally:
        it.close()  # stop the worker processes now rather than at garbage collection
    resumed = iter(loader())
    try:
        resumed.set_state(state)
        got = next(resumed)
    finally:
        resumed.close()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_loader_argument_errors(dataset: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ClipLoader(dataset, POSE_ONLY, 0, True, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="shard_index"):
        ClipLoader(dataset, POSE_ONLY, 2, True, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="no full batch"):
        ClipLoader(dataset, POSE_ONLY, 64, True, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="one pass"):
        ClipLoader(dataset, POSE_ONLY, 2, False, num_epochs=2, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="video_root"):
        ClipConfig()
    with pytest.raises(ValueError, match="pose"):
        ClipConfig(rgb=False, pose="skeleton")
    loader = ClipLoader(dataset, POSE_ONLY, 4, True, split="train")  # jax process defaults
    assert (loader.shard_index, loader.shard_count) == (0, 1)


def test_heatmap_mode_matches_numpy_pipeline(dataset: Path) -> None:
    ann = load_annotations(dataset)[2]
    sample = make_sample(ann, POSE_ONLY, train=False)
    kp_sample = make_sample(ann, ClipConfig(rgb=False, pose="keypoint", num_persons=3), False)
    persons = kp_sample["keypoint"]
    real = persons[..., 2].min(axis=(1, 2)) >= 0
    hm = generate_heatmaps(persons[real, ..., :2], persons[real, ..., 2], (56, 56))
    np.testing.assert_array_equal(hm, sample["heatmap"])
