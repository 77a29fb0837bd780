"""``python -m benchmarks.loader --smoke``: one worker's clips/s table, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_a_row_per_source_and_mode(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader", "--smoke", "--json", os.fspath(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert "clips/s/core" in header and "device MB" in header and "host MB" in header
    assert [tuple(c.strip() for c in r.strip("|").split("|")[:3]) for r in rows] == [
        (s, m, "device") for s in ("mp4", "frames", "raw") for m in ("train", "test")]
    assert "keypoints synthetic" in proc.stdout
    result = json.loads(out.read_text())
    for row in result["rows"]:
        for key in ("clips_per_s", "cpu_s_per_clip", "clips_per_s_per_core",
                    "decoded_frames_per_clip", "device_bytes_per_clip", "host_bytes_per_clip"):
            assert isinstance(row[key], int | float) and row[key] > 0, (row["source"], key)
        # uint8 RGB + keypoints against float32 RGB + heatmaps: about 8x fewer bytes.
        assert row["host_bytes_per_clip"] > 6 * row["device_bytes_per_clip"]
    decoded = {(r["source"], r["mode"]): r["decoded_frames_per_clip"] for r in result["rows"]}
    assert decoded[("frames", "train")] <= 16  # JPEG folders read only the 16 frames
