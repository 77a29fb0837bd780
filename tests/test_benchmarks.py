"""benchmarks/: the side-by-side tables, the merging of runs made in parts, the GPU
script's plan, the formulation benchmark and the loader's smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import merge as merge_mod
from benchmarks.run import output_agreement, summarize


def _jax(mode, batch, dtype, rate, **extra):
    return {"framework": "jax", "mode": mode, "batch": batch, "dtype": dtype,
            "clips_per_s": rate, "compile_s": 8.0, "device_peak_bytes": 2**30, **extra}


def _torch(mode, batch, dtype, rate, **extra):
    return {"framework": "torch", "mode": mode, "batch": batch, "dtype": dtype,
            "device": "cuda", "threads": 16, "clips_per_s": rate,
            "device_peak_bytes": 2 * 2**30, **extra}


def _cells(line):
    return [c.strip() for c in line.split("  ") if c.strip()]


def test_summarize_compares_each_dtype_with_pytorch_in_that_dtype():
    results = [
        _jax("eval", 64, "float32", 720.0), _jax("eval", 64, "bfloat16", 1250.0),
        _torch("eval", 64, "float32", 360.0), _torch("eval", 64, "bfloat16", 500.0),
        _jax("train", 8, "float32", 120.0, runner="jit+options"),
        _jax("train", 8, "bfloat16", 0.0, error="exit 1", runner="jit+options"),
        _torch("train", 8, "float32", 60.0), _torch("train", 8, "bfloat16", 50.0),
    ]
    text, rows = summarize(results, ["float32", "bfloat16"])
    lines = [_cells(line) for line in text.splitlines()[2:]]
    assert [line[:7] for line in lines] == [
        ["eval", "64", "fp32", "jax jit (default)", "720.00", "360.00", "2.000x"],
        ["eval", "64", "bf16", "jax jit (default)", "1250.00", "500.00", "2.500x"],
        ["train", "8", "fp32", "jax jit+options", "120.00", "60.00", "2.000x"],
        ["train", "8", "bf16", "jax jit+options", "failed", "50.00", "-"],
    ]
    assert lines[0][-2:] == ["1.00", "2.00"]  # device peak GB
    assert rows[1]["torch"]["clips_per_s"] == 500.0


def test_summarize_labels_opt_ins_and_compares_under_the_same_allocator():
    cpu = {"device": "cpu"}
    results = [
        _jax("eval", 1, "float32", 6.0, runner="jit", allocator="default"),
        _jax("eval", 1, "float32", 6.3, runner="concurrent", allocator="default"),
        _jax("eval", 1, "float32", 6.1, runner="jit+options", allocator="default"),
        _torch("eval", 1, "float32", 2.0, threads=1, allocator="default", **cpu),
        _torch("eval", 1, "float32", 2.5, threads=2, allocator="default", **cpu),
        _jax("eval", 1, "float32", 6.6, runner="concurrent", allocator="tuned"),
        _torch("eval", 1, "float32", 3.0, threads=2, allocator="tuned", **cpu),
    ]
    text, rows = summarize(results, ["float32"])
    assert [r["config"] for r in rows] == ["jax jit (default)", "jax jit+options",
                                           "jax concurrent", "jax concurrent, tuned malloc"]
    assert [r["speedup"] for r in rows] == ["2.400x", "2.440x", "2.520x", "2.200x"]
    lines = [_cells(line) for line in text.splitlines()[2:]]
    assert lines[0][5] == "2.50 (2T)" and lines[3][5] == "3.00 (2T)"


def test_output_agreement_uses_float32_pytorch_only():
    results = [
        _jax("eval", 1, "float32", 1.0, logits=[[1.0, 2.0]]),
        _torch("eval", 1, "float32", 1.0, logits=[[1.0, 2.002]]),
        _torch("eval", 1, "bfloat16", 1.0, logits=[[5.0, 9.0]]),
    ]
    assert output_agreement(results) == pytest.approx(0.002 / 2.002)


def test_run_measures_the_default_path_first_then_labelled_opt_ins(monkeypatch, capsys):
    from benchmarks import run as run_mod

    calls = []
    rates = {"jit": 5.0, "jit+options": 5.5, "concurrent": 6.0}

    def fake_run_config(config, weights, env, timing, timeout, plan=False):
        tuned = env.get("MALLOC_ARENA_MAX") == "1"
        assert tuned == (config["allocator"] == "tuned")
        if plan:
            return {**config, "remat_plan": {"choice": "none"}}
        calls.append(config)
        rate = rates.get(config.get("runner"), 2.0) + (0.5 if tuned else 0.0)
        return {**config, "clips_per_s": rate, "clips_per_s_median": rate, "best_s": 1.0,
                "peak_rss_bytes": 2**30, "other_load_max": 0.0}

    monkeypatch.setattr(run_mod, "run_config", fake_run_config)
    monkeypatch.setattr(run_mod, "prepare_weights", lambda d, seed: "fake")
    monkeypatch.setattr(run_mod, "machine", lambda: {
        "cpu": "x", "cpus": 2, "jax": "0", "jax_backend": "cpu", "jax_devices": ["cpu"],
        "torch": "2", "torch_cuda": None, "platform": "p", "python": "3"})
    run_mod.main(["--eval-batches", "1,4,16", "--train-batches", "2", "--no-flops",
                  "--no-heatmaps", "--torch-threads", "2"])
    seen = [(c["framework"], c["mode"], c["batch"], c.get("runner"), c["allocator"])
            for c in calls]
    assert seen == [
        ("jax", "eval", 1, "jit", "default"), ("jax", "eval", 1, "jit+options", "default"),
        ("jax", "eval", 1, "concurrent", "default"), ("torch", "eval", 1, None, "default"),
        ("jax", "eval", 4, "jit", "default"), ("jax", "eval", 4, "jit+options", "default"),
        ("jax", "eval", 4, "concurrent", "default"), ("torch", "eval", 4, None, "default"),
        ("jax", "eval", 16, "jit", "default"), ("torch", "eval", 16, None, "default"),
        ("jax", "train", 2, "jit+options", "default"), ("torch", "train", 2, None, "default"),
        ("jax", "eval", 1, "concurrent", "tuned"), ("torch", "eval", 1, None, "tuned"),
        ("jax", "eval", 4, "concurrent", "tuned"), ("torch", "eval", 4, None, "tuned"),
    ]
    out = capsys.readouterr().out
    table = out[out.index("mode  batch"):].splitlines()
    batch1 = [_cells(line) for line in table[2:] if _cells(line)[:2] == ["eval", "1"]]
    configs = [cells[3] for cells in batch1]
    assert configs == ["jax jit (default)", "jax jit+options", "jax concurrent",
                       "jax concurrent, tuned malloc"]
    speedups = [cells[6] for cells in batch1]
    assert speedups == ["2.500x", "2.750x", "3.000x", "2.600x"]


def _ort(batch, rate, **extra):
    return {"framework": "onnxruntime", "mode": "eval", "batch": batch, "dtype": "float32",
            "device": "cpu", "threads": 0, "clips_per_s": rate, "peak_rss_bytes": 2**30,
            **extra}


def test_onnxruntime_table_sits_beside_the_default_jax_path_and_pytorch():
    from benchmarks.run import onnxruntime_agreement, onnxruntime_table

    cpu = {"device": "cpu", "allocator": "default"}
    results = [
        _jax("eval", 1, "float32", 4.0, runner="jit", logits=[[1.0, -2.0]]),
        _jax("eval", 1, "float32", 4.4, runner="concurrent"),  # an opt-in: not compared
        _torch("eval", 1, "float32", 2.0, threads=2, **cpu),
        _ort(1, 3.0, logits=[[1.0, -2.001]]),
        _jax("eval", 4, "float32", 5.0, runner="jit"),
        _ort(4, 0.0, error="exit 1: no memory"),
    ]
    assert summarize(results, ["float32"])[1][0]["config"] == "jax jit (default)"
    lines = [_cells(line) for line in onnxruntime_table(results).splitlines()[2:]]
    assert lines == [
        ["1", "3.00 (default threads)", "4.00", "2.00 (2T)", "0.750x", "1.500x", "1.00"],
        ["4", "failed", "5.00", "-", "-", "-", "-"],
    ]
    assert onnxruntime_agreement(results) == pytest.approx(0.001 / 2.0)
    assert onnxruntime_table(results[:3]) is None


def test_run_exports_onnx_once_then_runs_onnxruntime_at_every_eval_batch(monkeypatch,
                                                                         capsys, tmp_path):
    from benchmarks import run as run_mod

    calls = []

    def fake_run_config(config, weights, env, timing, timeout, plan=False):
        if plan:
            return {**config, "remat_plan": {"choice": "none"}}
        calls.append(config)
        if config["mode"] == "export":
            return {**config, "export_s": 12.0, "bytes": 12 << 20}
        rate = {"onnxruntime": 3.0, "torch": 2.0}.get(config["framework"], 4.0)
        return {**config, "clips_per_s": rate, "clips_per_s_median": rate, "best_s": 1.0,
                "peak_rss_bytes": 2**30, "other_load_max": 0.0, "logits": [[1.0, 2.0]]}

    monkeypatch.setattr(run_mod, "run_config", fake_run_config)
    monkeypatch.setattr(run_mod, "prepare_weights", lambda d, seed: "fake")
    monkeypatch.setattr(run_mod, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(run_mod, "machine", lambda: {
        "cpu": "x", "cpus": 2, "jax": "0", "jax_backend": "cpu", "jax_devices": ["cpu"],
        "torch": "2", "torch_cuda": None, "platform": "p", "python": "3"})
    report = tmp_path / "bench.json"
    run_mod.main(["--eval-batches", "1,4", "--train-batches", "2", "--frameworks",
                  "jax,torch,onnxruntime", "--jax-runners", "jit", "--allocator", "default",
                  "--torch-threads", "2", "--no-flops", "--no-heatmaps", "--json", str(report)])
    assert [(c["framework"], c["mode"], c["batch"]) for c in calls] == [
        ("onnxruntime", "export", 1),
        ("jax", "eval", 1), ("torch", "eval", 1), ("onnxruntime", "eval", 1),
        ("jax", "eval", 4), ("torch", "eval", 4), ("onnxruntime", "eval", 4),
        ("jax", "train", 2), ("torch", "train", 2),
    ]
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if "ort / jax" in line)
    assert [_cells(line)[:6] for line in lines[head + 2:head + 4]] == [
        ["1", "3.00 (default threads)", "4.00", "2.00 (2T)", "0.750x", "1.500x"],
        ["4", "3.00 (default threads)", "4.00", "2.00 (2T)", "0.750x", "1.500x"],
    ]
    saved = json.loads(report.read_text())
    assert saved["onnx_export"]["export_s"] == 12.0
    assert saved["onnxruntime_logits_max_rel_diff"] == 0.0


GPU = {"jax_devices": ["NVIDIA H100 80GB HBM3"], "cpu": "Xeon", "jax": "0.11.2",
       "torch": "2.11.0"}


def _report(results, dtypes=("float32", "bfloat16"), machine=GPU):
    return {"machine": machine, "settings": {"dtypes": list(dtypes)}, "results": results}


def test_merge_keeps_the_fastest_success_per_configuration(tmp_path, capsys):
    first = _report([
        _jax("eval", 1, "float32", 0.0, error="exit -6"),
        _torch("eval", 1, "float32", 39.0), _torch("eval", 1, "bfloat16", 29.0),
    ])
    second = _report([
        _jax("eval", 1, "float32", 276.0), _jax("eval", 1, "bfloat16", 330.0),
        _torch("eval", 1, "float32", 35.0),
    ])
    results, dtypes = merge_mod.merge([first, second])
    assert dtypes == ["float32", "bfloat16"]
    rates = {(r["framework"], r["dtype"]): r.get("clips_per_s") for r in results}
    assert rates == {("jax", "float32"): 276.0, ("jax", "bfloat16"): 330.0,
                     ("torch", "float32"): 39.0, ("torch", "bfloat16"): 29.0}
    assert not any("error" in r for r in results)

    paths = []
    for i, report in enumerate((first, second)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(report))
    merge_mod.main([str(p) for p in paths])
    lines = [_cells(line) for line in capsys.readouterr().out.splitlines()[-2:]]
    assert [line[:7] for line in lines] == [
        ["eval", "1", "fp32", "jax jit (default)", "276.00", "39.00", "7.077x"],
        ["eval", "1", "bf16", "jax jit (default)", "330.00", "29.00", "11.379x"],
    ]


def test_merge_refuses_runs_of_different_machines():
    other = {**GPU, "jax_devices": ["NVIDIA H200"]}
    with pytest.raises(ValueError, match="different machines"):
        merge_mod.merge([_report([]), _report([], machine=other)])


def test_gpu_script_plans_and_tabulates_without_running_a_model(tmp_path):
    from benchmarks import gpu

    args = gpu.parse_args(["--smoke", "--out", str(tmp_path), "--budget-s", "60"])
    assert (args.smoke, args.budget_s, args.out, args.reps) == (True, 60.0, str(tmp_path), 2)
    assert gpu.parse_args([]).budget_s == 420.0
    assert gpu.slug("NVIDIA H200") == "h200" and gpu.slug("NVIDIA H100 80GB HBM3") == \
        "h100-80gb-hbm3"
    full = gpu.plan(False, "cuda")
    jax_rows = [(c["mode"], c["batch"], c["dtype"], c["tuning_choice"])
                for c in full if c["framework"] == "jax"]
    assert len(jax_rows) == 13 and jax_rows[-1] == ("eval", 64, "bfloat16", "default")
    assert [(c["batch"], c["dtype"]) for c in full if c.get("inputs") == "device"] == [
        (8, "bfloat16"), (32, "bfloat16")]
    assert gpu.label(next(c for c in full if c.get("inputs") == "device")) == \
        "jax jit, Tuning.for_devices, device inputs"
    assert {(c["mode"], c["batch"]) for c in full if c["framework"] == "torch"} == {
        ("eval", 1), ("eval", 16), ("eval", 64), ("train", 8), ("train", 32)}
    assert all(c["framework"] == "jax" for c in gpu.plan(False, None))
    smoke = gpu.plan(True, "cpu")
    assert {c["batch"] for c in smoke} == {1} and {c["mode"] for c in smoke} == {"eval"}
    assert [c["dtype"] for c in smoke if c["framework"] == "torch"] == ["float32"]

    results = [
        {**full[0], **_jax("eval", 1, "float32", 300.0)},
        {**full[1], **_torch("eval", 1, "float32", 100.0)},
        {**full[2], **_jax("eval", 1, "bfloat16", 0.0, error="exit -6")},
        {**full[3], "skipped": "budget of 420 s spent"},
        {**full[-1], "skipped": "budget of 420 s spent"},
    ]
    lines = [_cells(line) for line in gpu.table(results).splitlines()[2:]]
    assert lines == [
        ["eval", "1", "fp32", "jax jit, Tuning.for_devices", "300.00", "8.0", "100.00",
         "3.00x", "1.00", "2.00"],
        ["eval", "1", "bf16", "jax jit, Tuning.for_devices", "failed", "-", "skipped", "-",
         "-", "-"],
        ["eval", "64", "bf16", "jax jit, Tuning()", "skipped", "-", "-", "-", "-", "-"],
    ]


def test_tuning_benchmark_names_each_formulation():
    from benchmarks.tuning import FORMULATIONS, tuning_of
    from epam_jax.tuning import PLATFORM_TUNINGS, Tuning

    tunings = {name: tuning_of(name) for name in FORMULATIONS}
    assert tunings["default"] == (Tuning(), False)
    assert tunings["unrolled+barriers"] == (Tuning(scan_blocks=False, barriers=True), True)
    assert tunings["accelerator"][0] == PLATFORM_TUNINGS["gpu"]
    assert len({t for t, _ in tunings.values()}) == len(FORMULATIONS)
    with pytest.raises(SystemExit, match="unknown formulation 'fast'"):
        tuning_of("fast")


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
