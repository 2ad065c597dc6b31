"""How a job's rows are cut into shards and its shards dealt to the processes that run them.

Row ``seq`` (its place in the input, from 0) belongs to shard ``seq // shard_rows``; each
shard becomes one Parquet part. A job run by one process has one slice that owns every
shard; scaled out over ``count`` processes, slice ``index`` owns the shards numbered
``index`` modulo ``count``. Every module that needs to know which shard a row is in, or
whose a shard is, asks a ``ShardLayout``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ShardLayout:
    """Shards of ``shard_rows`` rows; the slice ``index`` of ``count`` (0 of 1: the whole job)."""

    shard_rows: int
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.shard_rows < 1 or self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"no such shard layout: {self.shard_rows} rows a shard, slice {self.index} "
                             f"of {self.count}")

    def slice(self, index: int, count: int) -> ShardLayout:
        """The same shards, slice ``index`` of ``count``."""
        return ShardLayout(self.shard_rows, index, count)

    @property
    def whole(self) -> bool:
        """Whether this slice is the whole job (one process)."""
        return self.count == 1

    def shard_of(self, seq: int) -> int:
        """The shard row ``seq`` is in."""
        return seq // self.shard_rows

    def offset(self, seq: int) -> int:
        """Row ``seq``'s place within its shard (0: the shard's first row)."""
        return seq % self.shard_rows

    def first_row(self, shard: int) -> int:
        """The ``seq`` of ``shard``'s first row."""
        return shard * self.shard_rows

    def owns(self, shard: int) -> bool:
        """Whether this slice runs ``shard``."""
        return shard % self.count == self.index

    def owns_row(self, seq: int) -> bool:
        """Whether this slice runs row ``seq``."""
        return self.owns(self.shard_of(seq))

    def shards(self, total_rows: int) -> int:
        """How many shards ``total_rows`` rows make."""
        return -(-total_rows // self.shard_rows)

    def rows_of(self, shard: int, total_rows: int) -> int:
        """How many of ``total_rows`` rows fall in ``shard``."""
        return max(0, min(self.shard_rows, total_rows - self.first_row(shard)))

    def rows_in_slice(self, total_rows: int) -> int:
        """How many of ``total_rows`` rows this slice runs."""
        return sum(self.rows_of(s, total_rows) for s in range(self.index, self.shards(total_rows), self.count))
