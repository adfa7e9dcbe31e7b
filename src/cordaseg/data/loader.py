"""Data loading for training and evaluation (docs/method.md, "Training step": batches of
source and target crops).

:class:`EpochSampler` gives each rank a deterministic order that depends only on (seed, epoch),
shards it across ranks like ``DistributedSampler`` and can start part-way through an epoch
(resuming a run). It yields ``(epoch, index)`` pairs, so the epoch reaches the dataset copies in
persistent workers and the per-item randomness is seeded by (seed, epoch, index) whatever the
number of workers. :func:`make_loader` wires it into a ``DataLoader`` with pinned memory (when
CUDA is present) and persistent workers, each worker limited to one decoding thread.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Distinguishes the sampler's random stream from the items' (seed, epoch, index) streams.
_SAMPLER_STREAM = 0x5A3B1E


class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic per-epoch order of ``size`` items for one of ``world_size`` ranks.

    With ``drop_last`` the order is truncated to a multiple of ``world_size``; otherwise it is
    padded by repeating its start, so every rank sees the same number of items.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        start_index: int = 0,
    ):
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_index = start_index

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Use ``epoch``'s order from now on, skipping its first ``start_index`` items of this rank."""
        self.epoch = epoch
        self.start_index = start_index

    def per_rank(self) -> int:
        """Items per rank in a full epoch."""
        if self.drop_last:
            return self.size // self.world_size
        return -(-self.size // self.world_size)

    def order(self) -> np.ndarray:
        """This rank's indices for the current epoch, before skipping ``start_index``."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, _SAMPLER_STREAM])
            order = rng.permutation(self.size)
        else:
            order = np.arange(self.size)
        total = self.per_rank() * self.world_size
        if total > self.size:
            order = np.resize(order, total)  # repeats the start to pad
        order = order[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.start_index:]:
            yield (self.epoch, int(index))

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start_index)


def _init_worker(worker_id: int) -> None:
    # One core per worker: the loader parallelises over workers, not inside one decode. (OpenCV
    # is already single-threaded in every loading process: cordaseg.data.formats.)
    torch.set_num_threads(1)
    # Ctrl-C in a terminal reaches every process of the group: the main process stops the run
    # cleanly (with a checkpoint) and shuts the workers down; a worker dying first would break that.
    # (SIGTERM keeps PyTorch's handler, through which the main process ends a stuck worker.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 4,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    start_index: int = 0,
    epoch: int = 0,
    pin_memory: bool | None = None,
    sampler_factory: Callable[..., EpochSampler] | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with an :class:`EpochSampler` (``loader.sampler``).

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch; ``start_index`` (items of this
    rank) resumes part-way through ``epoch``. ``drop_last`` drops the last incomplete batch and
    the uneven tail across ranks. ``pin_memory`` defaults to whether CUDA is available.
    ``sampler_factory`` builds the sampler instead of :class:`EpochSampler`, with its arguments
    (e.g. :class:`cordaseg.data.rare_class.RareClassSampler` with its class table bound).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sampler = (sampler_factory or EpochSampler)(len(dataset), shuffle=shuffle, seed=seed, rank=rank,
                                                world_size=world_size, drop_last=drop_last)
    sampler.set_epoch(epoch, start_index)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=_init_worker if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
