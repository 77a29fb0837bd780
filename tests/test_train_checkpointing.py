"""Checkpoint writes on a full disk: each failure is one ``CheckpointWriteError`` with a
one-line message naming the disk and the path, the partial step is removed, the last
good checkpoint stays listed and restorable, and stderr stays short.

The full disk is an 8 MiB tmpfs mounted in a private mount namespace (``unshare``) of a
child process that runs this file as a script; the child reports what it saw as JSON
and the test checks it. Without a way to mount one the test is skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

DISK_MIB = 8
LEAVE_FREE = 512 * 1024  # less than one checkpoint of the tree below (2 MiB)

# Ways to get a private mount namespace in which mounting a tmpfs is allowed.
NAMESPACES = {
    "unshare --mount (root)": ["unshare", "--mount", "--propagation", "private"],
    "unshare --user --map-root-user --mount": [
        "unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],
}
MOUNT = 'mount -t tmpfs -o size={size}m tmpfs "$1"'


def _namespace(probe_dir: Path) -> list[str]:
    """The first way of NAMESPACES that can mount a tmpfs here, or a skip with why not."""
    why = []
    if shutil.which("unshare") is None:
        pytest.skip("cannot make a small full disk: no unshare command (util-linux)")
    for name, prefix in NAMESPACES.items():
        if name.endswith("(root)") and os.geteuid() != 0:
            why.append(f"{name}: not root")
            continue
        cmd = [*prefix, "sh", "-c", MOUNT.format(size=1), "sh", str(probe_dir)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            why.append(f"{name}: {e}")
            continue
        if done.returncode == 0:
            return prefix
        why.append(f"{name}: {' '.join(done.stderr.split()) or done.returncode}")
    pytest.skip("cannot mount a small tmpfs to fill: " + "; ".join(why))


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    prefix = _namespace(mount_point)
    cmd = [*prefix, "sh", "-c", MOUNT.format(size=DISK_MIB) + ' && exec "$2" "$3" "$1"', "sh",
           str(mount_point), sys.executable, __file__]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    ckpt_dir = str(mount_point / "ckpt")

    failures = report["failures"]
    # 2: the background write fails, seen at wait; 3: seen at the save of step 4, which
    # is then not started; 5: no space at all, the save itself fails.
    assert [(f["step"], f["where"]) for f in failures] == [
        (2, "wait 2"), (3, "save 4"), (5, "save 5")], failures
    for f in failures:
        assert f["type"] == "CheckpointWriteError" and f["errno"] == errno.ENOSPC, f
        message = f["message"]
        assert "\n" not in message
        assert message.startswith(f"could not write checkpoint step {f['step']} to {ckpt_dir}: "
                                  f"No space left on device; disk {mount_point} (tmpfs")
        assert f" free of {DISK_MIB:.1f} MiB;" in message
        assert message.endswith("the last good checkpoint, step 1, is intact")
        assert f["steps"] == [1] and f["entries"] == ["1"]  # listed; nothing partial left
        assert f["restored"], "step 1 did not restore to its values"
    assert "0 B free" in failures[2]["message"]

    export = report["export"]
    assert export["type"] == "CheckpointWriteError" and "\n" not in export["message"]
    assert export["message"].startswith(
        f"could not write the exported model to {mount_point / 'model'}: No space left on "
        f"device; disk {mount_point} (tmpfs")
    assert export["message"].endswith("its partial files were removed")
    assert not [e for e in export["entries"] if "tmp" in e], export["entries"]
    assert report["precheck"].startswith(f"could not write the exported model to "
                                         f"{mount_point / 'model2'}: it needs about 1.0 MiB;")

    # Once space is freed, saving works again, and keep=1 then drops step 1.
    assert report["after"] == {"steps": [6], "restored": True}

    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert len(lines) <= 12, done.stderr[-4000:]
    assert elapsed < 60


def test_write_guard_without_a_full_disk(tmp_path: Path) -> None:
    """The export helper on any disk: filesystem errors become one line naming the disk,
    temporaries go, other errors pass unchanged."""
    from epam_jax.train.checkpointing import (
        CheckpointWriteError,
        check_free_space,
        disk_write_guard,
        os_error,
    )

    model = tmp_path / "model"
    with pytest.raises(CheckpointWriteError) as raised, disk_write_guard(model):
        (model / "variables.orbax-checkpoint-tmp" / "d").mkdir(parents=True)
        (model / "epam_model.json.tmp").write_text("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC and "\n" not in message
    assert message.startswith(f"could not write the exported model to {model}: No space left "
                              f"on device; disk /")
    assert " free of " in message and sorted(os.listdir(model)) == []
    with pytest.raises(KeyError), disk_write_guard(model):
        raise KeyError("not the disk")
    # Tensorstore's way of saying it.
    assert os_error(ValueError("RESOURCE_EXHAUSTED: Failed writing: ... No space left on "
                               "device [os_error_code='28']")) == (errno.ENOSPC,
                                                                   "No space left on device")
    assert os_error(TimeoutError("barrier")) is None
    with pytest.raises(CheckpointWriteError, match=r"needs about 1024\.0 TiB; disk /"):
        check_free_space(model, 2**50, "the exported model")


# ---------------------------------------------------------------------------------------
# The child: runs on the small disk mounted at sys.argv[1].


def _scenario(disk: Path) -> dict:
    import flax
    import grain
    import jax
    import jax.numpy as jnp
    import numpy as np

    from epam_jax.checkpoints import save_variables
    from epam_jax.train.checkpointing import (
        Checkpoints,
        CheckpointWriteError,
        check_free_space,
        disk_write_guard,
        tree_nbytes,
    )

    @flax.struct.dataclass
    class State:
        params: dict
        batch_stats: dict
        opt_state: dict
        step: object
        rng: object

    def state(v: int) -> State:
        w = np.random.default_rng(v).standard_normal((256, 1024)).astype(np.float32)
        return State(params={"w": jnp.asarray(w)}, batch_stats={"mean": jnp.full((64,), v)},
                     opt_state={"mu": jnp.asarray(2 * w)}, step=jnp.int32(v),
                     rng=jnp.asarray([v, v + 1], jnp.uint32))

    def fill(leave: int) -> None:
        st = os.statvfs(disk)
        with open(disk / f"filler{time.monotonic_ns()}", "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))

    def restores(step: int, position: int) -> bool:
        it = iter(grain.MapDataset.range(1000).to_iter_dataset())
        got = ckpts.restore(step, state(0), it)
        want = state(step)
        same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
            jax_leaves(got), jax_leaves(want), strict=True))
        return same and next(it) == position

    def jax_leaves(s: State) -> list:
        return jax.tree_util.tree_leaves((s.params, s.batch_stats, s.opt_state, s.step, s.rng))

    def attempt(calls: list[tuple[str, object]]) -> dict:
        for where, call in calls:
            try:
                call()
            except CheckpointWriteError as e:
                return {"where": where, "type": type(e).__name__, "step": e.step,
                        "errno": e.errno, "message": str(e), "steps": ckpts.all_steps(),
                        "entries": sorted(os.listdir(ckpts.directory)),
                        "restored": restores(1, 3)}
        return {"where": None}

    data = iter(grain.MapDataset.range(1000).to_iter_dataset())
    for _ in range(3):
        next(data)
    ckpts = Checkpoints(disk / "ckpt", keep=1, keep_best=0)
    ckpts.save(1, state(1), data)
    ckpts.wait()
    fill(LEAVE_FREE)
    failures = [
        attempt([("save 2", lambda: ckpts.save(2, state(2), data)), ("wait 2", ckpts.wait)]),
        attempt([("save 3", lambda: ckpts.save(3, state(3), data)),
                 ("save 4", lambda: ckpts.save(4, state(4), data))]),
    ]
    fill(0)
    failures.append(attempt([("save 5", lambda: ckpts.save(5, state(5), data)),
                             ("wait 5", ckpts.wait)]))

    variables = {"params": {"rgb_backbone": {"kernel": np.asarray(state(7).params["w"])},
                            "rgb_cls_head": {"fc_cls": {"bias": np.zeros(3, np.float32)}}},
                 "batch_stats": {"rgb_backbone": {"mean": np.zeros(4, np.float32)}}}
    export = {}
    try:
        with disk_write_guard(disk / "model", "the exported model"):
            save_variables(disk / "model", variables)
    except CheckpointWriteError as e:
        export = {"type": type(e).__name__, "message": str(e),
                  "entries": [str(p.relative_to(disk)) for p in (disk / "model").rglob("*")]}
    try:
        check_free_space(disk / "model2", tree_nbytes(variables), "the exported model")
        precheck = ""
    except CheckpointWriteError as e:
        precheck = str(e)

    for filler in disk.glob("filler*"):
        filler.unlink()
    ckpts.save(6, state(6), data)
    ckpts.wait()
    after = {"steps": ckpts.all_steps(), "restored": restores(6, 3)}
    ckpts.close()
    return {"failures": failures, "export": export, "precheck": precheck, "after": after}


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
