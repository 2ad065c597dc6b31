"""Which shard a row is in and which slice runs it: one layout every module asks."""

from __future__ import annotations

import pytest

from schemas import ShardLayout


def test_rows_fall_in_shards_of_shard_rows() -> None:
    layout = ShardLayout(50)
    assert [layout.shard_of(s) for s in (0, 49, 50, 229)] == [0, 0, 1, 4]
    assert [layout.offset(s) for s in (0, 49, 50, 229)] == [0, 49, 0, 29]
    assert [layout.first_row(s) for s in range(3)] == [0, 50, 100]
    assert layout.shards(230) == 5 and layout.shards(250) == 5 and layout.shards(0) == 0
    assert [layout.rows_of(s, 230) for s in range(6)] == [50, 50, 50, 50, 30, 0]
    assert layout.whole and layout.rows_in_slice(230) == 230


def test_a_slice_counts_only_its_own_shards() -> None:
    # Shards 0..4 of 230 rows (the last has 30): slice 1 of 2 runs shards 1 and 3, slice 0 runs 0, 2 and 4.
    assert ShardLayout(50, 1, 2).rows_in_slice(230) == 50 + 50
    assert ShardLayout(50).slice(0, 2).rows_in_slice(230) == 50 + 50 + 30
    odd = ShardLayout(50, 1, 2)
    assert [odd.owns(s) for s in range(4)] == [False, True, False, True]
    assert odd.owns_row(50) and not odd.owns_row(49) and not odd.whole


@pytest.mark.parametrize(("rows", "index", "count"), [(0, 0, 1), (10, 2, 2), (10, -1, 2), (10, 0, 0)])
def test_a_layout_that_cannot_be_is_refused(rows: int, index: int, count: int) -> None:
    with pytest.raises(ValueError, match="no such shard layout"):
        ShardLayout(rows, index, count)
