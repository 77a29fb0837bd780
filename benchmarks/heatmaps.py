"""Pose heatmaps: host numpy vs on-device JAX, in clips per second.

    python -m benchmarks.heatmaps [--batch 8] [--persons 2] [--json PATH]

The host path makes (48, 56, 56, 17) float32 heatmaps per clip with numpy (one core);
the device path ships (M, 48, 17, 3) keypoints and draws a batch with the jitted JAX
generator (compile time excluded, transfer of the keypoints included).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import numpy as np

from epam_jax.data.heatmaps import generate_heatmaps, pack_keypoints
from epam_jax.data.heatmaps_jax import heatmaps_from_keypoints


def _clips(n: int, persons: int, frames: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        centre = rng.uniform(15, 41, (persons, 1, 1, 2))
        kp = (centre + rng.normal(0, 8, (persons, frames, 17, 2))).astype(np.float32)
        score = rng.uniform(0.3, 1.0, (persons, frames, 17)).astype(np.float32)
        out.append((kp, score))
    return out


def _rate(fn, items: int, min_time: float) -> float:
    """items per second of ``fn`` over at least ``min_time`` seconds."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * items / elapsed


def run(
    batch: int = 8,
    persons: int = 2,
    frames: int = 48,
    with_limb: bool = False,
    min_time: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure both paths; returns clips/s, bytes shipped per clip and the device."""
    clips = _clips(batch, persons, frames, seed)
    size = (56, 56)

    def host() -> None:
        for kp, score in clips:
            generate_heatmaps(kp, score, size, with_limb=with_limb)

    packed = np.stack([pack_keypoints(kp, score, persons) for kp, score in clips])

    def device() -> None:
        keypoints = jax.device_put(packed)
        heatmaps_from_keypoints(keypoints, with_limb=with_limb).block_until_ready()

    channels = 34 if with_limb else 17
    result = {
        "batch": batch,
        "persons": persons,
        "frames": frames,
        "with_limb": with_limb,
        "device": str(jax.devices()[0].device_kind),
        "numpy_clips_per_s": _rate(host, batch, min_time),
        "jax_clips_per_s": _rate(device, batch, min_time),
        "heatmap_bytes_per_clip": frames * size[0] * size[1] * channels * 4,
        "keypoint_bytes_per_clip": int(packed[0].nbytes),
    }
    hm = np.asarray(heatmaps_from_keypoints(packed, with_limb=with_limb))
    ref = np.stack([generate_heatmaps(kp, s, size, with_limb=with_limb) for kp, s in clips])
    result["max_abs_diff"] = float(np.abs(hm - ref).max())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--with-limb", action="store_true")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    res = run(args.batch, args.persons, args.frames, args.with_limb, args.min_time)
    print(f"heatmaps {res['frames']}x56x56, {res['persons']} persons, batch {res['batch']}, "
          f"device {res['device']}")
    print(f"{'path':<26}{'clips/s':>10}{'bytes/clip':>14}")
    print(f"{'numpy (host, 1 core)':<26}{res['numpy_clips_per_s']:>10.1f}"
          f"{res['heatmap_bytes_per_clip']:>14,}")
    print(f"{'jax (device, jit)':<26}{res['jax_clips_per_s']:>10.1f}"
          f"{res['keypoint_bytes_per_clip']:>14,}")
    print(f"max |jax - numpy| = {res['max_abs_diff']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
