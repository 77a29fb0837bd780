"""Data parallelism: one train/eval step under ``jax.jit`` (default) or ``jax.pmap``.

jit: a 1-D ``Mesh`` over all devices of all hosts, the batch sharded on its
first axis (``P('data')``), the state replicated. BatchNorm statistics are means
over the global batch, which XLA computes across devices (SyncBatchNorm).
pmap: the state replicated on each local device, the local batch reshaped to
(devices, per-device, ...), cross-replica BatchNorm through the models'
``bn_axis_name`` and ``lax.pmean`` of the gradients.
Either way each host feeds only its own part of the global batch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from epam_jax.train.step import eval_step, train_step
from epam_jax.tuning import Tuning
from epam_jax.xla_options import compiler_options

PARALLEL_MODES = ("jit", "pmap")
PMAP_AXIS = "batch"
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def initialize_distributed(
    coordinator_address: str = "",
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = True,
    heartbeat_timeout_seconds: int = 60,
    shutdown_timeout_seconds: int = 300,
) -> bool:
    """``jax.distributed.initialize`` from explicit flags, or from the cluster environment.

    With ``coordinator_address`` set the flags are used as given; else, with ``auto``,
    a SLURM/Open MPI job of more than one task or ``JAX_COORDINATOR_ADDRESS`` triggers
    jax's own detection. Returns whether the runtime was initialised.

    ``heartbeat_timeout_seconds`` bounds how long the processes outlive one that died
    or hangs: the coordinator declares it dead after that long and jax aborts every
    other process (jax's default is 100 s; 60 s still tolerates long network hiccups).
    ``shutdown_timeout_seconds`` is how long a finished process waits at exit for the
    others to finish too (jax's 300 s): a dead process ends that wait after the
    heartbeat timeout anyway, while a live one may legitimately finish minutes later
    (process 0 alone writes the attention picture), and a shorter wait would abort it.
    """
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("coordinator_address needs num_processes and process_id")
        kwargs: dict[str, Any] = dict(coordinator_address=coordinator_address,
                                      num_processes=num_processes, process_id=process_id)
    elif auto and (os.environ.get("JAX_COORDINATOR_ADDRESS")
                   or any(int(os.environ.get(v, "1") or 1) > 1 for v in _CLUSTER_ENV)):
        kwargs = {}
    else:
        return False
    # CPU hosts need a collectives backend for cross-process reductions.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=shutdown_timeout_seconds)
    return True


def _first_replica(tree: Any) -> Any:
    """Device 0's copy of every leaf of a pmap output (leading device axis dropped)."""

    def first(x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x[0]
        return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])

    return jax.tree_util.tree_map(first, tree)


class DataParallel:
    """Compiled train/eval steps and the batch/state placement for one parallel mode."""

    def __init__(self, parallel: str = "jit", devices: list | None = None) -> None:
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
        self.parallel = parallel
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices
                              if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("data"))

    @property
    def _pmap_devices(self) -> list | None:
        # Across hosts pmap spans every device; a subset is for one process only.
        if self.devices == jax.devices():
            return None
        if jax.process_count() > 1:
            raise ValueError("pmap over a subset of devices needs a single process")
        return self.devices

    def _options(self) -> dict[str, Any] | None:
        """``jax.jit``'s compiler options for these devices (pmap takes none)."""
        return compiler_options(self.devices[0].platform)

    @property
    def tuning(self) -> Tuning:
        """The models' formulation for these devices (each replica's device under pmap)."""
        return Tuning.for_devices(self.devices[:1] if self.parallel == "pmap" else self.devices)

    @property
    def bn_axis_name(self) -> str | None:
        """What the model's ``bn_axis_name`` must be in this mode."""
        return PMAP_AXIS if self.parallel == "pmap" else None

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch_size(self, global_batch: int, what: str = "batch_size") -> int:
        """Raise unless ``global_batch`` splits over hosts and devices; the per-host size."""
        if global_batch % self.num_devices:
            raise ValueError(f"{what}={global_batch} must be a multiple of the number of "
                             f"devices ({self.num_devices})")
        return global_batch // jax.process_count()

    # -- state ---------------------------------------------------------------------
    def put_state(self, state: Any) -> Any:
        """Host (or replicated) state -> the placement the compiled step expects."""
        if self.parallel == "jit":
            return jax.device_put(state, self.replicated)
        # pmap places a leading axis of size local_device_count on its devices.
        n = len(self.local_devices)
        return jax.tree_util.tree_map(
            lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), jax.device_get(state))

    def get_state(self, state: Any) -> Any:
        """The state as replicated global arrays (what checkpoints hold)."""
        if self.parallel == "jit":
            return state
        return jax.device_put(_first_replica(state), self.replicated)

    # -- batches -------------------------------------------------------------------
    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """This host's part of the global batch -> device arrays."""
        if self.parallel == "jit":
            return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
                    for k, v in batch.items()}
        n = len(self.local_devices)

        def split(v: np.ndarray) -> np.ndarray:
            if v.shape[0] % n:
                raise ValueError(f"local batch {v.shape[0]} does not split over {n} devices")
            return v.reshape(n, -1, *v.shape[1:])  # pmap sends one slice to each device

        return {k: split(v) for k, v in batch.items()}

    def fetch(self, tree: Any) -> Any:
        """Reduced outputs (replicated) to numpy on every host."""
        if self.parallel == "pmap":
            return _first_replica(tree)
        return jax.tree_util.tree_map(np.asarray, tree)

    # -- steps ---------------------------------------------------------------------
    def train_step(self, **static: Any) -> Callable:
        """``(state, batch) -> (state, metrics)``, compiled, the state donated."""
        if self.parallel == "pmap":
            fn = functools.partial(train_step, axis_name=PMAP_AXIS, **static)
            return jax.pmap(fn, axis_name=PMAP_AXIS, devices=self._pmap_devices,
                            donate_argnums=(0,))
        fn = functools.partial(train_step, **static)
        # compiler_options: remat effective on CPU, cuBLAS matrix products on GPU
        return jax.jit(fn, in_shardings=(self.replicated, self.data_sharding),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=(0,),
                       compiler_options=self._options())

    def eval_step(self, **static: Any) -> Callable:
        """``(state, batch) -> counts`` summed over the global batch."""
        if self.parallel == "pmap":
            fn = functools.partial(eval_step, axis_name=PMAP_AXIS, **static)
            return jax.pmap(fn, axis_name=PMAP_AXIS, devices=self._pmap_devices)
        fn = functools.partial(eval_step, **static)
        return jax.jit(fn, in_shardings=(self.replicated, self.data_sharding),
                       out_shardings=self.replicated, compiler_options=self._options())
