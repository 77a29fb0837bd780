"""Train EPAM-Net or one of its streams.

    python train.py --config configs/demo.py --workdir runs/demo
    python train.py --config configs/default.py --workdir runs/ntu60 \\
        --config.data.annotations=ntu60_2d.pkl --config.optimizer.lr=0.003

The training itself is ``epam_jax.train.train_and_evaluate``. A bad command line (a
config file that is missing or has no ``get_config``, an unknown ``--config.KEY`` with the
closest valid keys, a value of the wrong type) is one line ``error: ...`` on stderr and
exit status 1, before any training work.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from typing import Any

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags
from ml_collections.config_flags import config_path

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the model go.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)


class CommandLineError(ValueError):
    """A command line that cannot start a run; its message is the one line shown."""


def config_keys(config: ConfigDict, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of ``config`` -> whether it is a field (not a sub-config)."""
    keys: dict[str, bool] = {}
    for name, value in config.items():
        keys[prefix + name] = not isinstance(value, ConfigDict)
        if isinstance(value, ConfigDict):
            keys |= config_keys(value, f"{prefix}{name}.")
    return keys


def closest_keys(key: str, fields: list[str], n: int = 3) -> list[str]:
    """The ``n`` fields nearest to ``key`` (difflib), by the whole dotted name or by its
    last part, so that a field put under the wrong parent is found too."""
    leaf = key.rsplit(".", 1)[-1]

    def score(field: str) -> float:
        return max(difflib.SequenceMatcher(None, key, field).ratio(),
                   difflib.SequenceMatcher(None, leaf, field.rsplit(".", 1)[-1]).ratio())

    ranked = sorted(fields, key=lambda f: (-score(f), f))
    close = [f for f in ranked if score(f) >= 0.6]
    return (close or ranked)[:n]


def load_config(spec: str) -> ConfigDict:
    """``get_config()`` of the file ``spec`` names (``FILE`` or ``FILE:ARG``), as
    ml_collections loads it, with a CommandLineError saying what is wrong."""
    path, colon, arg = spec.partition(":")
    if not Path(path).is_file():
        raise CommandLineError(f"config file {path} not found (--config expects a Python "
                               "file with a get_config() function)")
    module_spec = importlib.util.spec_from_file_location("_train_config_check", path)
    if module_spec is None or module_spec.loader is None:
        raise CommandLineError(f"config file {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise CommandLineError(f"config file {path} failed to load: "
                               f"{type(err).__name__}: {err}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise CommandLineError(f"config file {path} has no get_config() function")
    try:
        config = get_config(*([arg] if colon else []))
    except Exception as err:
        call = f"get_config({arg!r})" if colon else "get_config()"
        raise CommandLineError(f"{path}: {call} failed: {type(err).__name__}: {err}") from None
    if not isinstance(config, ConfigDict):
        raise CommandLineError(f"{path}: get_config() returned {type(config).__name__}, "
                               "expected an ml_collections ConfigDict")
    return config


def _config_spec(argv: list[str]) -> str | None:
    """The value of --config on ``argv``, if given."""
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        match = re.fullmatch(r"--?config(?:=(.*))?", arg, re.DOTALL)
        if match:
            if match.group(1) is not None:
                return match.group(1)
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def check_command_line(argv: list[str]) -> ConfigDict | None:
    """Load the config and check every ``--config.KEY`` names one of its keys; raise a
    CommandLineError naming an unknown key and the closest valid ones."""
    spec = _config_spec(argv)
    if spec is None:
        return None  # absl reports the missing flag
    config = load_config(spec)
    keys = config_keys(config)
    for arg in argv[1:]:
        if arg == "--":
            break
        match = _OVERRIDE.match(arg)
        if match and match.group(1) not in keys:
            key = match.group(1)
            nearest = closest_keys(key, [k for k, field in keys.items() if field])
            raise CommandLineError(f"unknown config key {key!r} in {arg}; closest valid "
                                   f"keys: {', '.join(nearest)}")
    return config


def _value_error(err: flags.Error, argv: list[str], config: ConfigDict | None) -> str:
    """absl's message for a bad flag value, for a config field: what type it expects."""
    message = " ".join(str(err).split())
    match = re.match(r"flag --config\.([^=\s]+)=", message)
    if config is None or not match:
        return message
    key = match.group(1)
    values = []  # --config.KEY=VALUE or --config.KEY VALUE
    for i, arg in enumerate(argv[1:], 1):
        m = _OVERRIDE.match(arg)
        if m and m.group(1) == key:
            values.append(m.group(2) if m.group(2) is not None
                          else (argv[i + 1] if i + 1 < len(argv) else None))
    try:
        kind = config_path.get_type(key, config)
    except (KeyError, AttributeError, TypeError):  # not a plain field: absl's says enough
        return message
    got = values[-1] if values and values[-1] is not None else "(no value)"
    return (f"--config.{key}={got}: expected {getattr(kind, '__name__', kind)} (the type of "
            f"{key}), got {got!r}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every failure as one line ``error: ...`` (exit status 1),
    before anything is trained; returns the arguments left (the program name)."""
    config = None
    try:
        argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
        config = check_command_line(argv)
        rest = FLAGS(argv)
    except CommandLineError as err:
        raise SystemExit(f"error: {err}") from None
    except flags.IllegalFlagValueError as err:
        raise SystemExit(f"error: {_value_error(err, argv, config)}") from None
    except flags.Error as err:
        raise SystemExit(f"error: {' '.join(str(err).split())}") from None
    except (KeyError, AttributeError, TypeError, ValueError, OSError) as err:
        # what ml_collections raises for an override it cannot apply
        text = " ".join(str(err).replace("\\n", " ").split())
        raise SystemExit(f"error: --config override: {type(err).__name__}: {text}") from None
    if len(rest) > 1:
        raise SystemExit(f"error: unexpected arguments {rest[1:]} (train.py takes only flags)")
    return rest


def main(argv: list[str]) -> None:
    del argv  # parse_flags refused anything but flags
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from epam_jax.train import train_and_evaluate
    from epam_jax.train.checkpointing import CheckpointWriteError
    from epam_jax.train.lock import WorkdirLockError

    try:
        result: dict[str, Any] = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (CheckpointWriteError, WorkdirLockError) as err:  # one line, no traceback
        raise SystemExit(f"error: {err}") from None
    if result.get("preempted"):
        print(result["message"], flush=True)
        return
    top1 = result.get("fused/top1")
    if top1 is not None:
        print(f"final validation top-1: {top1:.1f}%")
    print(f"checkpoint: {result['model_dir']}")
    if "attention_picture" in result:
        print(f"attention picture: {result['attention_picture']}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
