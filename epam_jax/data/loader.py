"""grain input pipeline: annotations + videos -> batches of model inputs.

Train: each epoch reshuffles all samples with (seed, epoch), every host takes its own
contiguous slice of that order (sharding by process), and only whole batches are made.
Eval: host h takes samples h, h + count, ... in order; every host yields the same number
of batches and the last ones are padded with copies marked ``mask == 0``, so across hosts
every sample appears exactly once with ``mask == 1``. Batches are dicts of numpy arrays:
'rgb', 'heatmap' or 'keypoint', 'label' int32, 'mask' float32, 'index' int32 (position
of the sample in the annotation list) and, in evaluation, 'view' int32 (which of the
``ClipConfig.num_views`` views of the sample: K test clips, each also flipped).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from epam_jax.data.annotations import load_annotations, parse_annotations
from epam_jax.data.pipeline import ClipConfig, check_prepared_videos, make_sample


class _Annotations:
    """Annotation list that pickles as its file path when it came from one, so worker
    processes load it themselves instead of receiving a copy through a pipe."""

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[dict[str, Any]],
        split: str | None,
        num_classes: int | None,
    ) -> None:
        is_path = isinstance(source, str | os.PathLike)
        self._path = os.fspath(source) if is_path else None
        self._split = split
        self._num_classes = num_classes
        if self._path is None:
            items = parse_annotations(list(source), split=split, num_classes=num_classes)
            self._items: list[dict[str, Any]] | None = items
        else:
            self._items = load_annotations(self._path, split=split, num_classes=num_classes)

    @property
    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            self._items = load_annotations(self._path, self._split, self._num_classes)
        return self._items

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._path is not None:
            state["_items"] = None
        return state


@dataclasses.dataclass
class _TrainOrder:
    """Local index j -> (sample index, 1.0): epoch j // per_epoch, shuffled by (seed, epoch)."""

    anns: _Annotations
    num_samples: int
    per_epoch: int
    offset: int
    seed: int
    length: int

    def __len__(self) -> int:
        return self.length

    def _order(self, epoch: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_cache", {})
        if epoch not in cache:
            if len(cache) > 2:
                cache.clear()
            cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return cache[epoch]

    def __getitem__(self, j: int) -> tuple[int, float]:
        epoch, r = divmod(int(j), self.per_epoch)
        return int(self._order(epoch)[self.offset + r]), 1.0


@dataclasses.dataclass
class _EvalOrder:
    """Local index j -> (sample index, mask): this host's samples, then padding."""

    indices: np.ndarray
    length: int

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> tuple[int, float]:
        j = int(j)
        if j < len(self.indices):
            return int(self.indices[j]), 1.0
        return int(self.indices[0]) if len(self.indices) else 0, 0.0


@dataclasses.dataclass
class _MakeSample:
    anns: _Annotations
    config: ClipConfig
    train: bool

    def __call__(self, item: tuple[int, float], rng: np.random.Generator) -> dict[str, Any]:
        index, mask = item
        if self.train:
            return make_sample(self.anns.items[index], self.config, True, rng) | {
                "mask": np.float32(mask), "index": np.int32(index)}
        index, view = divmod(index, self.config.num_views)
        out = make_sample(self.anns.items[index], self.config, False, view=view)
        out |= {"mask": np.float32(mask), "index": np.int32(index), "view": np.int32(view)}
        return out


def _ensure_flags_parsed() -> None:
    # grain's worker processes read absl flags; outside an absl app nothing parses them,
    # so take the defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only needed for the process-based default

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if shard_count <= 0 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"expected 0 <= shard_index < shard_count, got {shard_index}/{shard_count}"
        )
    return shard_index, shard_count


class ClipLoader:
    """Batches of clips for training or evaluation, backed by grain.

    ``annotations``: a PoseC3D pickle path (optionally ``split``) or validated sample
    dicts. ``train``: random sampling + flip, reshuffled every epoch, whole batches only
    (``num_epochs`` None repeats forever); otherwise deterministic, one pass, padded last
    batches with ``mask``. ``shard_index``/``shard_count`` default to
    ``jax.process_index()``/``jax.process_count()``. ``worker_count`` > 0 decodes in that
    many worker processes; ``read_threads`` and ``prefetch`` set the threads and buffer of
    each reader. ``len()`` is the number of batches per epoch. Iterators have
    ``get_state()``/``set_state()`` to resume exactly.
    """

    def __init__(
        self,
        annotations: str | os.PathLike[str] | Sequence[dict[str, Any]],
        config: ClipConfig,
        batch_size: int,
        train: bool,
        *,
        split: str | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        num_epochs: int | None = None,
        shard_index: int | None = None,
        shard_count: int | None = None,
        worker_count: int = 0,
        worker_buffer_size: int = 2,
        read_threads: int = 4,
        prefetch: int = 8,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"expected batch_size > 0, got {batch_size}")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"expected num_epochs > 0 or None, got {num_epochs}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"expected 0 <= seed < 2**32, got {seed}")
        self.config = config
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.shard_index, self.shard_count = _default_shard(shard_index, shard_count)
        self._anns = _Annotations(annotations, split, num_classes)
        n = len(self._anns.items)
        if n == 0:
            where = f"split {split!r} of " if split else ""
            raise ValueError(f"no annotations to load: {where}the annotation list is empty")
        check_prepared_videos(self._anns.items, config)
        self.num_samples = n
        epochs = num_epochs if num_epochs is not None else (None if train else 1)
        if train:
            per_host = n // self.shard_count
            self._num_batches = per_host // batch_size
            if self._num_batches == 0:
                raise ValueError(
                    f"{n} samples over {self.shard_count} shard(s) make no full batch of "
                    f"{batch_size}"
                )
            per_epoch = self._num_batches * batch_size
            length = sys.maxsize if epochs is None else per_epoch * epochs
            order: Any = _TrainOrder(
                self._anns, n, per_epoch, self.shard_index * per_host, seed, length
            )
        else:
            if epochs != 1:
                raise ValueError(f"evaluation makes one pass; got num_epochs={num_epochs}")
            items = n * config.num_views  # (sample, view) pairs, view fastest
            self._num_batches = math.ceil(math.ceil(items / self.shard_count) / batch_size)
            local = np.arange(self.shard_index, items, self.shard_count)
            order = _EvalOrder(local, self._num_batches * batch_size)
        # Batches are made before the dataset is split between reader threads and worker
        # processes, so every batch is whole and deterministic whatever the parallelism.
        ds = grain.MapDataset.source(order).seed(seed)
        ds = ds.random_map(_MakeSample(self._anns, config, train))
        ds = ds.batch(batch_size, drop_remainder=True)
        read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
        it_ds = ds.to_iter_dataset(read)
        if worker_count > 0:
            _ensure_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
                )
            )
        self.dataset = it_ds

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.dataset)
