"""train.py and configs/: the default configuration is the paper's recipe, and bad
``--config`` arguments or missing data end in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from epam_jax.train import (
    peak_learning_rate,
)

ROOT = Path(__file__).resolve().parents[1]


def test_train_py_bad_config_arguments_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "no_get_config.py").write_text("x = 1\n")
    cases = {
        "--config.optimzer.lr=0.1": "error: unknown config key 'optimzer.lr' in "
        "--config.optimzer.lr=0.1; closest valid keys: optimizer.lr, optimizer.base_lr, "
        "optimizer.nesterov",
        "--config.data.batchsize=4": "error: unknown config key 'data.batchsize' in "
        "--config.data.batchsize=4; closest valid keys: batch_size, eval_batch_size, "
        "optimizer.base_batch_size",
        "--config.batch_size=abc": "error: --config.batch_size=abc: expected int (the type "
        "of batch_size), got 'abc'",
        "missing": f"error: config file {tmp_path / 'none.py'} not found (--config expects "
        "a Python file with a get_config() function)",
        "no_get_config": f"error: config file {tmp_path / 'no_get_config.py'} has no "
        "get_config() function",
    }
    procs = {}
    for case in cases:  # all at once: each only imports and fails
        config = {"missing": tmp_path / "none.py",
                  "no_get_config": tmp_path / "no_get_config.py"}.get(case,
                                                                      ROOT / "configs/demo.py")
        extra = [] if case in ("missing", "no_get_config") else [case]
        cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(config), "--workdir",
               str(tmp_path / "w"), *extra]
        procs[case] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (case, err[-2000:])
        assert err.strip() == cases[case], (case, err[-2000:])
        assert out == ""
    assert not (tmp_path / "w").exists()  # nothing was started


def load_config(name: str):
    sys.path.insert(0, str(ROOT))
    try:
        module = __import__(f"configs.{name}", fromlist=["get_config"])
    finally:
        sys.path.remove(str(ROOT))
    return module.get_config()


def test_default_config_is_the_paper_recipe() -> None:
    c = load_config("default")
    o = c.optimizer
    assert (o.momentum, o.weight_decay, o.grad_clip_norm) == (0.9, 3e-4, 40.0)
    assert c.batch_size == 24 and c.mode == "epam" and c.parallel == "jit"
    assert peak_learning_rate(o.lr, o.base_lr, o.base_batch_size, c.batch_size) == pytest.approx(
        0.0015)
    assert peak_learning_rate(0.2, o.base_lr, o.base_batch_size, 64) == 0.2
    with pytest.raises(AttributeError):
        c.optimizer.no_such_key = 1  # locked: typos are errors


def _train_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/demo.py"),
           "--workdir", str(tmp_path / "w"), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)


def test_train_py_reports_unknown_keys_and_missing_data(tmp_path) -> None:
    done = _train_py(tmp_path, "--config.optimizer.lrr=0.1")
    assert done.returncode != 0 and "lrr" in done.stderr
    done = _train_py(tmp_path, f"--config.data.annotations={tmp_path / 'none.pkl'}")
    assert done.returncode != 0
    assert "FileNotFoundError" in done.stderr and "none.pkl' not found" in done.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
