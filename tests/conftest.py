"""Shared test helpers and fixtures.

- numbers and models: ``relative_error``, ``random_clips``, ``random_variables``,
  ``assert_trees_equal``, the small ``small_backbone``;
- the real NTU clip (``ntu``), its poses (``ntu_poses``), a random 60-class checkpoint
  (``ntu_model``) and a direct ``apply`` of it (``ntu_reference``), built once per worker;
- small videos: ``moving`` frames, ``encode_video``, ``cut`` (truncation), ``plain_frames``
  (a plain PyAV decode), ``small_videos`` (containers, frame rates, truncated files);
- poses: ``synthetic_person``, ``small_person``, ``pose_python``/``need_pose`` (MediaPipe's
  interpreter, or a skip) and ``run_pose_cli``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from fractions import Fraction
from pathlib import Path

# One persistent XLA compilation cache for the whole run, set before jax starts: the xdist
# workers and the tools' subprocesses inherit it, so a program that several tests compile
# (the same model at the same shapes) is compiled once. Removed when the run ends.
XLA_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"epam-jax-tests-xla-{uuid.uuid4().hex[:12]}"))

# XLA:CPU without its LLVM optimisations and with its older (non-MLIR) fusion emitters: the
# model's programs compile in about half the time and run 2-3x slower, a large saving at
# the tests' small shapes (docs/testing.md). Subprocesses inherit it. A program that runs
# long unoptimised, or whose bound was measured optimised, is compiled with
# ``compiler_options=LLVM_O1`` (LLVM's first level: it runs about as fast as fully
# optimised code and compiles in half the time); one whose bits are compared across
# programs with ``FUSION_EMITTERS`` (the emitters decide how ``exp`` rounds).
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true", "--xla_cpu_use_fusion_emitters=false"]))
FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": True}
LLVM_O1 = {"xla_backend_optimization_level": 1}

import av  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from epam_jax.checkpoints import save_variables  # noqa: E402
from epam_jax.data import save_annotations  # noqa: E402
from epam_jax.data.pose import pose_interpreter_env  # noqa: E402
from epam_jax.models import EPAMBackbone, EPAMNet, variable_shapes  # noqa: E402

jax.config.update("jax_compilation_cache_dir", XLA_CACHE)  # if a plugin imported jax first

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

try:  # torch is optional; with it, one thread each (pytest runs two workers on 2 cores)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - exercised only without the torch extra
    torch = None


def pytest_collection_modifyitems(config, items) -> None:
    """The tests marked ``slow`` first, longest first: xdist hands out the first tests in
    turn, so the two workers start on the long ones and finish together."""
    def seconds(item) -> float:
        mark = item.get_closest_marker("slow")
        return -(mark.kwargs.get("seconds", 1.0) if mark else 0.0)

    items.sort(key=seconds)  # stable: otherwise in collection order


def pytest_unconfigure(config) -> None:
    """The controlling process (not an xdist worker) removes the run's compilation cache."""
    if not hasattr(config, "workerinput") and "epam-jax-tests-xla-" in XLA_CACHE:
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project, or a skip saying it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample clips not found at {SHARED_DATA} (clone with shared/ beside)")
    return SHARED_DATA


def ncthw_to_ndhwc(x) -> np.ndarray:
    """PyTorch layout to this project's, for arrays or tensors."""
    x = x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.transpose(0, 2, 3, 4, 1) if x.ndim == 5 else x


def relative_error(reference, value) -> float:
    """max |reference - value| / max |reference|."""
    reference = np.asarray(reference, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    assert reference.shape == value.shape, (reference.shape, value.shape)
    return float(np.abs(reference - value).max() / max(np.abs(reference).max(), 1e-30))


def random_clips(batch: int, side: int, t_rgb: int = 16, t_pose: int = 48, seed: int = 0):
    """(rgb, pose) in NCTHW float32: normalised-looking RGB, heatmap-like pose in [0, 1]."""
    rng = np.random.default_rng(seed)
    rgb = rng.standard_normal((batch, 3, t_rgb, side, side)).astype(np.float32)
    pose = rng.random((batch, 17, t_pose, side // 4, side // 4)).astype(np.float32)
    return rgb, pose


def random_variables(model, seed: int = 0) -> dict:
    """Random variables of ``model`` without compiling its init: LeCun-normal kernels,
    BatchNorm scales and running variances in [0.5, 1.5], small biases and means."""
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name = path[-1].key
        if name in ("kernel", "conv_temporal_attention"):
            fan_in = max(1, int(np.prod(spec.shape[:-1])))
            return (rng.standard_normal(spec.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)

    tree = jax.tree_util.tree_map_with_path(leaf, variable_shapes(model))
    return {col: tree[col] for col in ("params", "batch_stats")}


def pose_python() -> str | None:
    """An interpreter that can run MediaPipe, or None."""
    if os.environ.get("EPAM_POSE_PYTHON"):
        return os.environ["EPAM_POSE_PYTHON"]
    return sys.executable if importlib.util.find_spec("mediapipe") is not None else None


def synthetic_person(total: int, img_shape: tuple[int, int],
                     frame_dir: str = "ntu_S001C001P001R001A001_rgb") -> dict:
    """A standing COCO-17 skeleton in the middle of the frame, swaying slightly."""
    h, w = img_shape
    base = np.array(
        [(0, -0.38), (-0.02, -0.4), (0.02, -0.4), (-0.04, -0.39), (0.04, -0.39),
         (-0.08, -0.28), (0.08, -0.28), (-0.1, -0.15), (0.1, -0.15), (-0.1, -0.03),
         (0.1, -0.03), (-0.05, 0.0), (0.05, 0.0), (-0.05, 0.2), (0.05, 0.2),
         (-0.05, 0.4), (0.05, 0.4)], np.float32,
    )
    t = np.arange(total, dtype=np.float32)[:, None]
    kp = np.empty((1, total, 17, 2), np.float32)
    kp[0, :, :, 0] = w * (0.55 + base[:, 0] * h / w) + 10 * np.sin(t / 8)
    kp[0, :, :, 1] = h * (0.5 + base[:, 1])
    return {
        "frame_dir": frame_dir, "label": 0, "img_shape": img_shape, "original_shape": img_shape,
        "total_frames": total, "keypoint": kp, "keypoint_score": np.ones((1, total, 17),
                                                                            np.float32),
    }


def encode_video(path: Path, frames, fps: int = 30, fmt: str | None = None,
                times_ms: list[int] | None = None, options: dict[str, str] | None = None
                ) -> Path:
    """Frames to an H.264 video; ``times_ms``: their timestamps in milliseconds (a
    variable rate)."""
    with av.open(os.fspath(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = options or {}
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            if i == 0:
                stream.height, stream.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


NTU_NAME = "ntu_S001C001P001R001A001_rgb"
NTU_CLASSES = 60


@pytest.fixture(scope="session")
def ntu(shared_data: Path) -> Path:
    path = shared_data / f"{NTU_NAME}.avi"
    if not path.is_file():
        pytest.skip(f"real NTU clip not found at {path}")
    return path


@pytest.fixture(scope="session")
def ntu_poses(ntu: Path, tmp_path_factory) -> tuple[Path, dict]:
    """Pose annotation of the NTU clip (MediaPipe when available) as a pickle and a dict."""
    from epam_jax.realvideo import single_video_annotation, video_poses

    # MediaPipe over the clip takes seconds: the first xdist worker to get here runs it,
    # the other waits on the lock and reads its file
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the run's folder above the workers'
        shared = shared.parent
    path = shared / "ntu_poses.pkl"
    with open(shared / "ntu_poses.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            python = pose_python()
            ann = video_poses(ntu, python) if python else synthetic_person(103, (1080, 1920))
            save_annotations(path, [ann])
    return path, single_video_annotation(ntu, poses=path)


@pytest.fixture(scope="session")
def ntu_model(tmp_path_factory) -> tuple[Path, dict]:
    """A randomly initialised 60-class EPAM-Net checkpoint and its variables."""
    variables = random_variables(EPAMNet(num_classes=NTU_CLASSES))
    path = save_variables(tmp_path_factory.mktemp("ckpt") / "epam", variables)
    return path, variables


@pytest.fixture(scope="session")
def ntu_reference(ntu_model):
    """A direct ``EPAMBackbone(fusion='residual').apply`` (rgb + rgb * attention, pose
    features, attention) plus EPAM-Net's two I3D heads in numpy (mean over T, H, W, then
    the dense layer), one clip at a time; the seed backbone's rgb * attention follows."""
    _, variables = ntu_model
    backbone = EPAMBackbone(fusion="residual")
    backbone_vars = {c: {k: v for k, v in variables[c].items() if not k.endswith("_cls_head")}
                     for c in ("params", "batch_stats")}
    apply = jax.jit(lambda r, p: backbone.apply(backbone_vars, r, p, return_attention=True))

    def head(name: str, feats: np.ndarray) -> np.ndarray:
        fc = variables["params"][name]["fc_cls"]
        pooled = feats.astype(np.float64).mean(axis=(0, 1, 2))
        return pooled @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"])

    def run(rgb: np.ndarray, pose: np.ndarray) -> dict[str, np.ndarray]:
        residual, pose_feats, attention = (np.asarray(x)[0] for x in apply(rgb[None], pose[None]))
        rgb_feats = residual / (1.0 + attention)
        return {
            "rgb_logits": head("rgb_cls_head", residual),
            "pose_logits": head("pose_cls_head", pose_feats),
            "attention": attention,
            "rgb_residual": residual,
            "rgb_features": rgb_feats * attention,
            "pose_features": pose_feats,
        }

    return run


MOVING_SHAPE = (96, 128)


def moving(n: int, shape: tuple[int, int] = MOVING_SHAPE, seed: int = 0) -> list[np.ndarray]:
    """Frames that all differ (moving ramps plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    frames = []
    for i in range(n):
        img = np.stack([(xx * 3 + i * 7) % 256, (yy * 5 + i * 3) % 256,
                        ((xx + yy) * 2 + i * 11) % 256], -1)
        frames.append(np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8))
    return frames


def cut(path: Path, fraction: float, out: Path) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def rgb24(frame: av.VideoFrame) -> np.ndarray:
    return frame.reformat(format="rgb24", interpolation="AREA").to_ndarray()


def plain_frames(path: Path) -> list[np.ndarray]:
    """Every frame by a plain PyAV decode loop."""
    with av.open(os.fspath(path)) as container:
        return [rgb24(f) for f in container.decode(video=0)]


def need_pose() -> str:
    python = pose_python()
    if python is None:
        pytest.skip("mediapipe is not installed (make pose-env, or set EPAM_POSE_PYTHON)")
    return python


def run_pose_cli(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "epam_jax.data.pose", *args], capture_output=True,
                          text=True, env=pose_interpreter_env(python), timeout=120)


@pytest.fixture(scope="session")
def small_videos(tmp_path_factory) -> dict[str, Path]:
    """Intact and truncated small videos."""
    root = tmp_path_factory.mktemp("videos")
    steps = np.resize([20, 33, 34, 50, 100, 17], 39)
    times = [0, *np.cumsum(steps).tolist()]
    paths = {
        "avi": encode_video(root / "clip.avi", moving(60), fmt="avi"),
        "mkv": encode_video(root / "clip.mkv", moving(60), fmt="matroska"),
        "mp4_60fps": encode_video(root / "fast.mp4", moving(40), fps=60),
        "mp4_15fps": encode_video(root / "slow.mp4", moving(40), fps=15),
        "mp4_vfr": encode_video(root / "vfr.mp4", moving(40), times_ms=times),
        "mkv_vfr": encode_video(root / "vfr.mkv", moving(40), fmt="matroska", times_ms=times),
        "ts_vfr": encode_video(root / "vfr.ts", moving(40), fmt="mpegts", times_ms=times),
    }
    paths["avi_cut"] = cut(paths["avi"], 0.4, root / "cut.avi")
    paths["mkv_cut"] = cut(paths["mkv"], 0.5, root / "cut.mkv")
    return paths


def small_person(total: int, shape: tuple[int, int], scale: tuple[float, float]) -> dict:
    """``synthetic_person`` shrunk about the frame's centre by ``scale`` = (x, y)."""
    ann = synthetic_person(total, shape, "small")
    centre = np.array([shape[1] / 2, shape[0] / 2], np.float32)
    ann["keypoint"] = centre + (ann["keypoint"] - centre) * np.array(scale, np.float32)
    return ann


@pytest.fixture(scope="session")
def small_backbone():
    """The backbone and random variables (shapes traced, nothing compiled: every call
    below is refused before the model computes)."""
    model = EPAMBackbone()
    return model, random_variables(model)


RGB_SHAPE = (1, 4, 32, 32, 3)
POSE_SHAPE = (1, 12, 8, 8, 17)


def assert_trees_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
