"""Passthrough columns: typed once from the whole input, the same in every part, never silently renamed over."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas import InputColumns, InputSchema, PassthroughError, conform, output_table, part_schema


def decide(*records: dict[str, object], schemas: tuple[pa.Schema, ...] = ()) -> InputSchema:
    columns = InputColumns()
    for record in records:
        columns.observe(record)
    for schema in schemas:
        columns.observe_schema(schema)
    return columns.decide()


class TestTypes:
    """One kind of value → its type; anything mixed → string, values as the input wrote them."""

    @pytest.mark.parametrize(("values", "expected"), [
        ([1, 2], pa.int64()),
        ([1, 2.5], pa.float64()),
        ([True, False], pa.bool_()),
        (["a", "b"], pa.string()),
        ([None, None], pa.string()),
        ([1, "three"], pa.string()),
        ([{"a": 1}], pa.string()),
        ([2**70], pa.string()),
    ])
    def test_column_type(self, values: list[object], expected: pa.DataType) -> None:
        schema = decide(*({"k": v} for v in values)).passthrough
        assert schema.field("k").type == expected

    def test_mixed_values_are_rendered_not_json_quoted(self) -> None:
        columns = decide({"k": 7}, {"k": "three"}, {"k": True}, {"k": 1.5}, {"k": {"a": [1]}}, {"k": None})
        records = [{"id": str(i), "status": "ok", "k": v} for i, v in enumerate([7, "three", True, 1.5, {"a": [1]},
                                                                                None])]
        table = output_table(records, columns.passthrough)
        assert table.column("k").to_pylist() == ["7", "three", "true", "1.5", '{"a": [1]}', None]

    def test_parquet_declared_type_meets_jsonl_values(self) -> None:
        parquet = pa.schema([("k", pa.int32()), ("when", pa.timestamp("us"))])
        assert decide({"k": 3}, schemas=(parquet,)).passthrough.field("k").type == pa.int64()
        assert decide({"k": "x"}, schemas=(parquet,)).passthrough.field("k").type == pa.string()
        assert decide(schemas=(parquet,)).passthrough.field("when").type == pa.timestamp("us")

    def test_a_column_seen_in_one_row_is_in_every_part(self) -> None:
        columns = decide({"a": 1}, {"a": 2, "late": "x"}).passthrough
        first = output_table([{"id": "r0", "status": "ok", "a": 1}], columns)
        assert first.schema == part_schema(columns) and first.column("late").to_pylist() == [None]


class TestNames:
    """An input column named like one of ours becomes input_<name>; a clash with the input is an error."""

    def test_renamed(self) -> None:
        assert decide({"status": "x"}).passthrough.names == ["input_status"]

    def test_clash_names_both_columns(self) -> None:
        with pytest.raises(PassthroughError, match="`status`.*`input_status`"):
            decide({"status": "x", "input_status": "y"})

    def test_underscore_seq_is_an_ordinary_column(self) -> None:
        assert decide({"_seq": 5}).passthrough.names == ["_seq"]


class TestIds:
    """Integer ids become text unless strings are there too (7 and "7" would be one id)."""

    def test_mixed(self) -> None:
        assert decide({"id": 7}, {"id": "7"}).mixed_ids
        assert not decide({"id": 7}, {"id": 8}).mixed_ids
        assert decide({"id": "a"}, schemas=(pa.schema([("id", pa.int64())]),)).mixed_ids


class TestConform:
    """An earlier part is brought to today's schema: columns added, retyped, kept metadata."""

    def test_retype_and_add(self) -> None:
        old = output_table([{"id": "r0", "status": "ok", "k": 7}], decide({"k": 7}).passthrough)
        old = old.drop_columns(["usage_estimated"]).replace_schema_metadata({b"x": b"1"})
        today = decide({"k": 7}, {"k": "three"}, {"new": 1.5}).passthrough
        table = conform(old, today)
        assert table is not None and table.schema.remove_metadata() == part_schema(today)
        assert table.column("k").to_pylist() == ["7"] and table.column("new").to_pylist() == [None]
        assert table.schema.metadata == {b"x": b"1"}
        assert conform(table, today) is None

    def test_schema_round_trips_through_the_manifest(self) -> None:
        schema = decide({"k": 7, "t": "x"}, {"id": 1}, {"id": "b"})
        assert InputSchema.from_json(schema.to_json()) == schema
