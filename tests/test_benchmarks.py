"""The benchmark's side-by-side table and the merging of runs made in parts."""

from __future__ import annotations

import json

import pytest

from benchmarks import merge as merge_mod
from benchmarks.run import output_agreement, summarize

GPU = {"jax_devices": ["NVIDIA H100 80GB HBM3"], "cpu": "Xeon", "jax": "0.11.2",
       "torch": "2.11.0"}


def _jax(mode, batch, dtype, rate, **extra):
    return {"framework": "jax", "mode": mode, "batch": batch, "dtype": dtype,
            "clips_per_s": rate, "compile_s": 8.0, "device_peak_bytes": 2**30, **extra}


def _torch(mode, batch, dtype, rate, **extra):
    return {"framework": "torch", "mode": mode, "batch": batch, "dtype": dtype,
            "device": "cuda", "threads": 16, "clips_per_s": rate,
            "device_peak_bytes": 2 * 2**30, **extra}


def _report(results, dtypes=("float32", "bfloat16"), machine=GPU):
    return {"machine": machine, "settings": {"dtypes": list(dtypes)}, "results": results}


def test_summarize_compares_each_dtype_with_pytorch_in_that_dtype():
    results = [
        _jax("eval", 64, "float32", 720.0), _jax("eval", 64, "bfloat16", 1250.0),
        _torch("eval", 64, "float32", 360.0), _torch("eval", 64, "bfloat16", 500.0),
        _jax("train", 8, "float32", 120.0), _jax("train", 8, "bfloat16", 0.0, error="exit 1"),
        _torch("train", 8, "float32", 60.0), _torch("train", 8, "bfloat16", 50.0),
    ]
    text, rows = summarize(results, ["float32", "bfloat16"])
    eval_line, train_line = text.splitlines()[2:]
    assert eval_line.split()[:8] == ["eval", "64", "720.00", "360.00", "2.000x",
                                     "1250.00", "500.00", "2.500x"]
    assert train_line.split()[:8] == ["train", "8", "120.00", "60.00", "2.000x",
                                      "failed", "50.00", "-"]
    assert eval_line.split()[-2:] == ["1.00/1.00", "2.00/2.00"]  # device peak GB per dtype
    assert rows[0]["torch"]["bfloat16"]["clips_per_s"] == 500.0


def test_output_agreement_uses_float32_pytorch_only():
    results = [
        _jax("eval", 1, "float32", 1.0, logits=[[1.0, 2.0]]),
        _torch("eval", 1, "float32", 1.0, logits=[[1.0, 2.002]]),
        _torch("eval", 1, "bfloat16", 1.0, logits=[[5.0, 9.0]]),
    ]
    assert output_agreement(results) == pytest.approx(0.002 / 2.002)


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
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.split()[:8] == ["eval", "1", "276.00", "39.00", "7.077x",
                                "330.00", "29.00", "11.379x"]


def test_merge_refuses_runs_of_different_machines():
    other = {**GPU, "jax_devices": ["NVIDIA H200"]}
    with pytest.raises(ValueError, match="different machines"):
        merge_mod.merge([_report([]), _report([], machine=other)])
