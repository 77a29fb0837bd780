"""What every command line tool shares: one-line errors, argument types, output files.

A tool's ``main(argv)`` runs under ``run_cli``, which prints the clear errors raised for
bad input (an unreadable video, no person, a wrong checkpoint, an unwritable folder, ...)
as one ``error: ...`` line with exit status 1; its parser is a ``OneLineErrors``, whose
refusals are one line with status 2. Outputs are made so that a failure leaves nothing
half-written: ``atomic_output`` for files, ``output_dirs`` for the folders a command makes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

# --------------------------------------------------------------------------- errors


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose refusals (a missing or malformed argument) are one line ``error:
    ...`` with exit status 2, like ``run_cli``'s, instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (usage: {self.prog} -h)\n")


def run_cli(entry: Callable[[], Any]) -> None:
    """Run a CLI entry point; the clear errors raised for bad input (unreadable video, no
    person, wrong checkpoint, unwritable folder, ...) print one line instead of a traceback."""
    try:
        entry()
    except (ValueError, OSError, RuntimeError, ImportError) as err:
        raise SystemExit(f"error: {err}") from None


def print_warning(message: str) -> None:
    """``warning: message`` on stderr, one line."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def rgb_side(text: str) -> int:
    """argparse type of ``--size``: the RGB side, a positive multiple of 4 (the pose
    heatmaps are a quarter of it)."""
    side = int(text)
    if side <= 0 or side % 4:
        raise argparse.ArgumentTypeError(f"expected a positive multiple of 4, got {text}")
    return side


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


# --------------------------------------------------------------------------- output files


class OutputPathBlocked(NotADirectoryError, PermissionError):
    """A file stands where an output folder (or one of its parents) should go: the folder
    cannot be made (a NotADirectoryError, and a PermissionError as before)."""


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    probe = path.absolute()
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    return missing[::-1]


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Create directory ``path`` if needed and check it can be written; clear errors if not."""
    path = Path(path)
    missing = _missing_folders(path)
    existing = missing[0].parent if missing else path.absolute()  # nearest that exists
    if existing.exists() and not existing.is_dir():
        raise OutputPathBlocked(f"cannot create the {what} directory {path}: {existing} "
                                "is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create the {what} directory {path}: {err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"the {what} directory {path} is not writable")
    return path


@contextlib.contextmanager
def output_dirs(*paths: str | os.PathLike[str] | None, what: str = "output",
                scratch: Sequence[str] = ()) -> Iterator[list[Path]]:
    """Make the output folders ``paths`` (None entries skipped) for the block, each
    checked writable (``ensure_writable_dir``), and yield them.

    When the block raises, every folder made here that holds nothing but files named in
    ``scratch`` (bookkeeping such as a settings record or a lock) is removed again, so a
    failed command leaves no empty output folder behind; a folder that holds a result
    (e.g. extraction's per-clip files, to resume from) is kept, and folders that existed
    before are never touched.
    """
    made: list[Path] = []
    try:
        folders = []
        for path in paths:
            if path is None:
                continue
            missing = _missing_folders(Path(path))
            try:
                folders.append(ensure_writable_dir(path, what))
            finally:
                made += [m for m in missing if m.is_dir()]
        yield folders
    except BaseException:
        for folder in sorted(set(made), key=lambda m: len(m.parts), reverse=True):
            _remove_if_unused(folder, set(scratch))
        raise


def _remove_if_unused(folder: Path, scratch: set[str]) -> None:
    """Remove ``folder`` if it holds only ``scratch`` files (or nothing)."""
    with contextlib.suppress(OSError):
        entries = list(folder.iterdir())
        if all(e.name in scratch and e.is_file() and not e.is_symlink() for e in entries):
            for entry in entries:
                entry.unlink()
            folder.rmdir()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    A crash or error leaves no file at ``path`` (the temporary one is removed), so a
    file that exists is always complete.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give a normal file's mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to ``path`` atomically (a file that exists is complete)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
