"""The order in which a finite source is read: seeded, reshuffled every epoch, sharded by
rank, resumable. Every loader of a finite source draws its positions from here."""

from __future__ import annotations

import numpy as np


class EpochOrder:
    """Positions 0..size-1 in a permutation seeded by (seed, epoch); rank r of W takes rows
    r*B .. (r+1)*B - 1 of each global batch of W*B rows, and an epoch's ragged end is
    dropped. The position (epoch, cursor) is plain data, so a resumed run reads exactly the
    batches an uninterrupted one would."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed, self.rank, self.world_size = size, batch_size, seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation), made once per epoch

    def next(self) -> np.ndarray:
        """This rank's positions for the next batch."""
        rows = self.batch_size * self.world_size
        if self.cursor + rows > self.size:
            self.epoch, self.cursor = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self.size))
        start = self.cursor + self.rank * self.batch_size
        self.cursor += rows
        return self._order[1][start : start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
