"""Training checkpoints with orbax: the train state plus each host's grain iterator state.

A step directory is written under a temporary name and renamed when complete
(orbax's atomic finalize), so a save cut short by a crash is never listed and
never restored. The last ``keep`` steps and the ``keep_best`` best by ``best_metric``
(validation top-1 of the fused score by default) are kept.

A save that fails in the filesystem (full disk, quota, I/O error) raises one
``CheckpointWriteError`` whose one-line message names the disk, its free space and
the path; the step's temporary directory is removed and the earlier checkpoints stay
listed and restorable. Saves are asynchronous, so the error of step N comes out of
``wait``/``close`` or of the save of the next step, which is then not started.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from epam_jax.checkpoints import ignore_closed_loop_callbacks

STATE, DATA = "state", "data"
BEST_METRIC = "fused/top1"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for an unfinished directory


def _train_tree(state: Any) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state, "step": state.step, "rng": state.rng}


class CheckpointWriteError(OSError):
    """Writing a checkpoint or an exported model failed in the filesystem.

    ``str()`` is one line naming the path, the reason, the disk (mount point, device,
    filesystem type) and its free space. ``errno`` is the system error number when
    known; ``path``, ``step`` and ``original`` (the exception orbax or the OS raised)
    are kept for programs.
    """

    def __init__(self, message: str, *, path: Path, code: int | None = None,
                 step: int | None = None, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.path = path
        self.step = step
        self.original = original


# ---------------------------------------------------------------------------------------
# Which disk, how full


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount(path: Path) -> tuple[Path, str | None, str | None]:
    """(mount point, device, filesystem type) of the filesystem holding ``path``."""
    point = Path(os.path.realpath(_existing_ancestor(path)))
    while not os.path.ismount(point) and point != point.parent:
        point = point.parent
    device = fstype = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if "-" not in fields:
                    continue
                sep = fields.index("-")
                where = fields[4].replace("\\040", " ").replace("\\011", "\t")
                if where == str(point) and len(fields) > sep + 2:
                    fstype, device = fields[sep + 1], fields[sep + 2]  # the last one wins
    except OSError:
        pass
    return point, device, fstype


def disk_space(path: str | os.PathLike) -> tuple[int, int]:
    """(free bytes for unprivileged writers, total bytes) of the disk holding ``path``."""
    return _space(os.statvfs(_existing_ancestor(Path(path))))


def _space(st: os.statvfs_result) -> tuple[int, int]:
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def describe_disk(path: str | os.PathLike) -> str:
    """``disk /mnt (/dev/sdb1, ext4) has 1.2 MiB free of 100.0 GiB`` for ``path``."""
    point, device, fstype = _mount(Path(path))
    kind = ", ".join(dict.fromkeys(x for x in (device, fstype) if x))  # tmpfs: once
    text = f"disk {point}" + (f" ({kind})" if kind else "")
    try:
        st = os.statvfs(_existing_ancestor(Path(path)))
    except OSError as e:
        return f"{text}: free space unknown ({e.strerror})"
    free, total = _space(st)
    text += f" has {_format_bytes(free)} free of {_format_bytes(total)}"
    if st.f_files and not st.f_favail:
        text += " and no free inodes"
    return text


# ---------------------------------------------------------------------------------------
# Which errors are the filesystem's

_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_PYTHON_ERRNO = re.compile(r"\[Errno (\d+)\]")
_KNOWN = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
          "Read-only file system": errno.EROFS}


def os_error(exc: BaseException) -> tuple[int | None, str] | None:
    """(errno or None, reason) if ``exc`` or an exception it came from is an error of
    the filesystem, else None. Tensorstore, which writes the arrays, raises ValueError
    with the system error in its message (``... [os_error_code='28']``). Timeouts and
    connection errors (multi-host barriers) are not the filesystem's."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointWriteError):
            return e.errno, str(e)
        if isinstance(e, OSError) and not isinstance(e, TimeoutError | ConnectionError):
            code = e.errno if isinstance(e.errno, int) else None
            return code, (os.strerror(code) if code else str(e) or type(e).__name__)
        text = str(e)
        match = _TENSORSTORE_ERRNO.search(text) or _PYTHON_ERRNO.search(text)
        if match:
            code = int(match.group(1))
            return code, os.strerror(code)
        for reason, code in _KNOWN.items():
            if reason in text:
                return code, reason
        todo += [e.__cause__, e.__context__]
    return None


def _write_error(exc: BaseException, path: Path, what: str, disk: str, tail: str = "",
                 step: int | None = None) -> CheckpointWriteError | None:
    """``could not write WHAT to PATH: REASON; DISK...TAIL`` for a filesystem error
    ``exc`` (None for any other error)."""
    if isinstance(exc, CheckpointWriteError):
        return exc
    found = os_error(exc)
    if found is None:
        return None
    return CheckpointWriteError(f"could not write {what} to {path}: {found[1]}; {disk}{tail}",
                                path=path, code=found[0], step=step, original=exc)


def tree_nbytes(tree: Any) -> int:
    """Bytes of the arrays of ``tree`` (an upper bound for its size on disk: orbax
    compresses, and random-looking weights hardly compress)."""
    return int(sum(getattr(x, "nbytes", None) or np.asarray(x).nbytes
                   for x in jax.tree_util.tree_leaves(tree)))


def check_free_space(path: str | os.PathLike, needed_bytes: int, what: str = "data") -> None:
    """Raise ``CheckpointWriteError`` (ENOSPC) now if the disk that will hold ``path``
    has less than ``needed_bytes`` free, before anything is written."""
    path = Path(path).absolute()
    free, _ = disk_space(path)
    if free < needed_bytes:
        raise CheckpointWriteError(
            f"could not write {what} to {path}: it needs about {_format_bytes(needed_bytes)}; "
            f"{describe_disk(path)}", path=path, code=errno.ENOSPC)


def remove_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the unfinished orbax directories (``*.orbax-checkpoint-tmp*``) in and
    under ``path`` and ``*.tmp`` files directly in it; returns what was removed."""
    path = Path(path)
    if not path.is_dir():
        return []
    removed = []
    todo = [path]
    while todo:
        folder = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            p = Path(entry.path)
            is_dir = entry.is_dir(follow_symlinks=False)
            if TMP_SUFFIX in entry.name:
                _remove(p, is_dir)
                removed.append(p)
            elif is_dir:
                todo.append(p)
            elif folder == path and entry.name.endswith(".tmp"):
                _remove(p, False)
                removed.append(p)
    return removed


def remove_until_settled(remove: Any, path: Path, settle_s: float = 0.05,
                         limit_s: float = 2.0) -> None:
    """``remove(path)`` (which returns what it removed) until nothing has come back for
    ``settle_s``: when one array write fails, orbax stops waiting for the others, which
    tensorstore still finishes (or fails) in its own threads, in the directory being
    removed."""
    start = last_seen = time.monotonic()
    while True:
        if remove(path):
            last_seen = time.monotonic()
        now = time.monotonic()
        if now - last_seen >= settle_s or now - start >= limit_s:
            return
        time.sleep(0.01)


def _remove(path: Path, is_dir: bool) -> None:
    if is_dir:
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def disk_write_guard(path: str | os.PathLike, what: str = "the exported model",
                     needed_bytes: int | None = None) -> Iterator[Path]:
    """Around a write into the directory ``path`` (e.g. ``save_variables``): refuse at
    once if ``needed_bytes`` are not free, and turn a filesystem error raised inside
    into one ``CheckpointWriteError`` after removing the write's temporaries."""
    path = Path(path).absolute()
    _quiet_orbax_write_failures()
    if needed_bytes is not None:
        check_free_space(path, needed_bytes, what)
    try:
        yield path
    except Exception as e:
        if os_error(e) is None:
            raise
        disk = describe_disk(path)  # before the removal frees space
        if jax.process_index() == 0:
            remove_until_settled(remove_temporaries, path)
        err = _write_error(e, path, what, disk, "; its partial files were removed")
        if err is e:
            raise
        raise err from None


# ---------------------------------------------------------------------------------------
# Keeping stderr short: orbax reports one failed background write several times


class _OneLinePerWriteFailure(logging.Filter):
    """On the absl logger: orbax logs a failed write once per thread it passes through
    (3-4 records, each with the whole traceback). Keep the first record of each
    filesystem error, without its traceback, and drop the repeats; the exception that
    reaches the caller says the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno < logging.ERROR or not record.exc_info
                or f"{os.sep}orbax{os.sep}" not in record.pathname):
            return True
        exc = record.exc_info[1]
        if exc is None or os_error(exc) is None:
            return True
        if getattr(exc, "_epam_logged", False):
            return False
        with contextlib.suppress(AttributeError, TypeError):
            exc._epam_logged = True  # type: ignore[attr-defined]
        record.msg = f"{record.getMessage()} ({type(exc).__name__}: " \
                     f"{str(exc).splitlines()[0][:300]})"
        record.args = None
        record.exc_info = record.exc_text = None
        return True


def _quiet_orbax_write_failures() -> None:
    """Install (once) the filter above and ``ignore_closed_loop_callbacks``."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _OneLinePerWriteFailure) for f in absl_logger.filters):
        absl_logger.addFilter(_OneLinePerWriteFailure())
    ignore_closed_loop_callbacks()  # the writes still in flight after one failed


# ---------------------------------------------------------------------------------------


class Checkpoints:
    """An orbax CheckpointManager for TrainState + data iterator."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, keep_best: int = 1,
                 async_save: bool = True, best_metric: str = BEST_METRIC) -> None:
        if keep < 1:
            raise ValueError(f"expected keep >= 1, got {keep}")
        policies: list[Any] = [cm.LatestN(keep)]
        if keep_best > 0:
            policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric], n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        _quiet_orbax_write_failures()
        self.async_save = async_save
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, DATA))
        self._pending: int | None = None  # step saved in the background, not yet confirmed
        self._partial_left = False  # a save failed: look for its late writes again

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any,
             metrics: dict[str, float] | None = None) -> None:
        """Save ``state`` (replicated arrays) and ``data_iterator``'s position at ``step``.

        Waits for the previous save first: if that one failed, its
        ``CheckpointWriteError`` is raised and ``step`` is not saved.
        """
        self.wait()
        if self._partial_left:  # writes of a failed save that ended after its cleanup
            remove_temporaries_of_steps(self.directory)
            self._partial_left = False
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardSave(_train_tree(state)),
                    DATA: grain.checkpoint.CheckpointSave(data_iterator),
                }),
                metrics=metrics,
                force=True,
            )
        except Exception as e:
            self._failed(step, e)
        if self.async_save:
            self._pending = step

    def restore(self, step: int, state: Any, data_iterator: Any | None = None) -> Any:
        """``state`` (as a template: shapes and shardings) with the values of ``step``;
        ``data_iterator`` is moved to the saved position in place."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _train_tree(state))
        items: dict[str, Any] = {STATE: ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        tree = restored[STATE]
        return state.replace(**tree)

    def wait(self) -> None:
        """Wait for the save in progress; raise ``CheckpointWriteError`` if it failed."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._failed(step, e)

    def close(self) -> None:
        """``wait``, then release orbax's threads (also when the last save failed)."""
        try:
            self.wait()
        finally:
            self.manager.close()
            if self._partial_left and jax.process_index() == 0:
                remove_temporaries_of_steps(self.directory)

    def _failed(self, step: int | None, exc: BaseException) -> None:
        """After a failed save: remove its unfinished directory, list the steps on disk
        again (orbax has already dropped the failed step, and the old steps it meant
        to replace, from its list) and raise the error, as a one-line
        ``CheckpointWriteError`` when the filesystem caused it."""
        disk = describe_disk(self.directory)  # before removal frees space
        self._drain_errors()
        if jax.process_index() == 0:
            remove_until_settled(remove_temporaries_of_steps, self.directory)
            self._partial_left = True
        self.manager.reload()
        last = self.manager.latest_step()
        kept = (f"the last good checkpoint, step {last}, is intact" if last is not None
                else "there is no earlier checkpoint")
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        err = _write_error(exc, self.directory, what, disk,
                           f"; its partial directory was removed and {kept}", step)
        if err is None or err is exc:
            raise exc
        raise err from None

    def _drain_errors(self, attempts: int = 8) -> None:
        """Collect the errors orbax still holds for a failed save (each background
        metadata write keeps its own and raises it once), so that they do not come out
        again at the next save or at ``close``."""
        stores = [self.manager.check_for_errors]
        store = getattr(self.manager, "_non_blocking_metadata_store", None)
        if store is not None and hasattr(store, "wait_until_finished"):
            stores.append(store.wait_until_finished)
        for wait in stores:
            for _ in range(attempts):
                try:
                    wait()
                    break
                except Exception:  # the first one was already raised to the caller
                    continue


def remove_temporaries_of_steps(directory: Path) -> list[Path]:
    """Remove the unfinished step directories directly in a checkpoint ``directory``
    (no save may be in progress)."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if TMP_SUFFIX in entry.name:
                _remove(Path(entry.path), entry.is_dir(follow_symlinks=False))
                removed.append(Path(entry.path))
    return removed
