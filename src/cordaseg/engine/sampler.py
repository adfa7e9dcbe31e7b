"""Resumable, rank-sharded sample order for training (issue 4, parts 3 and 4).

The order of samples is a pure function of (seed, epoch, rank, world size): epoch ``e`` is a
permutation drawn from a generator seeded with (seed, e), and rank ``r`` of ``W`` takes positions
``r, r + W, r + 2W, ...`` of it, so every rank draws different samples. The only state a resumed
run needs is how many samples this rank has consumed; :class:`ResumableSampler` then starts the
endless stream at that point.

:class:`EpochIndexed` passes the epoch to the dataset together with each index (the sampler yields
``epoch * len(dataset) + index``), so a dataset whose random crops depend on ``set_epoch`` gets
the right epoch in every DataLoader worker, with no shared state.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, iteration, rank, stream ...), stable across runs."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class ResumableSampler(Sampler[int]):
    """Endless shuffled stream of (encoded) dataset indices for one rank.

    Yields ``epoch * size + index``; decode with :class:`EpochIndexed`. Each rank gets
    ``size // world_size`` samples per epoch (the remainder of the permutation is dropped so that
    every rank runs the same number of iterations per epoch).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True) -> None:
        if size < world_size:
            raise ValueError(f"a dataset of {size} samples cannot be shared by {world_size} ranks")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.shuffle = shuffle
        self.per_rank = size // world_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's dataset indices for ``epoch``, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return order[self.rank : self.per_rank * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            for index in self.epoch_indices(epoch)[offset:].tolist():
                yield epoch * self.size + index
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number for its own bookkeeping
        return 2**62


class EpochIndexed(Dataset):
    """Decodes ``epoch * size + index`` from :class:`ResumableSampler`: sets the epoch on the
    wrapped dataset (if it has ``set_epoch``) and returns ``dataset[index]``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.size = len(dataset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, encoded: int):
        epoch, index = divmod(int(encoded), self.size)
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        return self.dataset[index]
