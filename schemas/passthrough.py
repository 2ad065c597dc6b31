"""The passthrough columns of an output: decided once from the whole input, the same in every part.

Parts are written as their shards complete, so the type of a column cannot be left to each
part's own rows: one part would infer int64 where another infers string, a column first seen
in a later part would be missing from the earlier ones, and the folder would not read as one
table. ``InputColumns`` looks at every input row (JSONL values) or file schema (Parquet's
declared types) before anything is sent and decides, per column:

- every value of one kind → that type: integers ``int64``, numbers ``float64`` (integers and
  floats together too), booleans ``bool``, strings ``string``; a Parquet column's declared
  type when every file declares the same one;
- anything else (kinds mixed, objects or lists in JSONL, integers beyond int64, all null)
  → ``string``, each value written the way the input had it: strings as they are, numbers
  and booleans as JSON writes them (``7``, ``1.5``, ``true``), objects and lists as JSON.

Every part carries every column (null where a row has none). An input column named like one
of ours is passed through as ``input_<name>``; if the input has that name too, that is an
error naming both, never one column silently overwriting the other.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from schemas.output import OUTPUT_COLUMNS, OUTPUT_SCHEMA, passthrough_name

#: Input fields that are not passed through (they make the request).
RESERVED = frozenset({"id", "messages", "params"})
_INT64 = (-(2**63), 2**63 - 1)


class PassthroughError(ValueError):
    """The input's columns cannot all be passed through as they are named."""


@dataclass(frozen=True)
class InputSchema:
    """What the input decided: the passthrough columns' Arrow schema, and how ids read.

    ``mixed_ids``: some ids are integers and others strings — ``7`` and ``"7"`` would be the
    same id, so rows with integer ids are refused (``schemas.rows``).
    """

    passthrough: pa.Schema = field(default_factory=lambda: pa.schema([]))
    mixed_ids: bool = False

    def to_json(self) -> dict[str, Any]:
        """For ``_manifest.json``: readable column types, and the exact schema to reuse."""
        return {
            "columns": [{"name": f.name, "type": str(f.type)} for f in self.passthrough],
            "arrow_schema": base64.b64encode(self.passthrough.serialize().to_pybytes()).decode(),
            "mixed_ids": self.mixed_ids,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSchema:
        """The schema a manifest recorded."""
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["arrow_schema"])))
        return cls(schema, bool(data.get("mixed_ids", False)))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


def _arrow_kind(type_: pa.DataType) -> str:
    if pa.types.is_boolean(type_):
        return "bool"
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_floating(type_):
        return "float"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return "string"
    return f"arrow:{type_}"


class InputColumns:
    """Accumulates the input's columns and the kinds of their values; ``decide`` makes the schema."""

    def __init__(self) -> None:
        self._kinds: dict[str, set[str]] = {}  # by input name, in order of first appearance
        self._arrow: dict[str, pa.DataType] = {}
        self._id_kinds: set[str] = set()

    def observe(self, record: Mapping[str, Any]) -> None:
        """One JSONL row's values."""
        for name, value in record.items():
            if name == "id":
                if value is not None:
                    self._id_kinds.add(_kind(value))
                continue
            kinds = self._kinds.setdefault(name, set())
            if name not in RESERVED and value is not None:
                kinds.add(_kind(value))

    def observe_schema(self, schema: pa.Schema) -> None:
        """A Parquet file's declared columns."""
        for f in schema:
            kind = _arrow_kind(f.type)
            if f.name == "id":
                self._id_kinds.add(kind)
                continue
            self._kinds.setdefault(f.name, set()).add(kind)
            if kind.startswith("arrow:"):
                self._arrow[f.name] = f.type

    def decide(self) -> InputSchema:
        """The passthrough schema; ``PassthroughError`` if two input columns would land on one name."""
        names = [n for n in self._kinds if n not in RESERVED]
        taken = set(names)
        for name in names:
            out = passthrough_name(name)
            if out != name and (out in taken or out in OUTPUT_COLUMNS):
                raise PassthroughError(f"input column `{name}` is passed through as `{out}` (it is an output "
                                       f"column's name), and the input has a column `{out}` too: rename one of them")
        fields = [pa.field(passthrough_name(n), self._type(n)) for n in names]
        mixed = "string" in self._id_kinds and "int" in self._id_kinds
        return InputSchema(pa.schema(fields), mixed)

    def _type(self, name: str) -> pa.DataType:
        kinds = self._kinds[name]
        if kinds == {"int"}:
            return pa.int64()
        if kinds and kinds <= {"int", "float"}:
            return pa.float64()
        if kinds == {"bool"}:
            return pa.bool_()
        if len(kinds) == 1 and next(iter(kinds)).startswith("arrow:"):
            return self._arrow[name]
        return pa.string()


def render(value: Any) -> str | None:
    """A value as text the way the input wrote it: strings unquoted, the rest as JSON writes them."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a float NaN / inf in strict mode never comes here; circular data might
        return str(value)


def column(values: Iterable[Any], type_: pa.DataType) -> pa.Array:
    """One passthrough column's values as ``type_`` (rendered as text for a string column)."""
    if pa.types.is_string(type_):
        return pa.array([render(v) for v in values], type=type_)
    values = list(values)
    if pa.types.is_floating(type_):
        values = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return pa.array(values, type=type_)


def with_labels(labels: pa.Schema | None, passthrough: pa.Schema) -> pa.Schema:
    """A labeling job's label columns, then the passthrough columns: what follows our columns in every part.

    ``PassthroughError`` when an input column has a label column's name (it would shadow the label).
    """
    if labels is None:
        return passthrough
    clash = sorted(set(labels.names) & set(passthrough.names))
    if clash:
        raise PassthroughError(f"input column `{clash[0]}` has the name of a label column of the job's `response` "
                               "schema: rename the input column (or the schema's property)")
    return pa.schema([*labels, *passthrough])


def part_schema(passthrough: pa.Schema) -> pa.Schema:
    """Every part's schema: our columns, then the passthrough columns."""
    return pa.schema([*OUTPUT_SCHEMA, *passthrough])


def output_table(records: list[dict[str, Any]], passthrough: pa.Schema | None = None) -> pa.Table:
    """One part's table: our columns typed by ``OUTPUT_SCHEMA``, then ``passthrough`` (null where absent).

    Without ``passthrough`` the records' own columns are typed by the same rules as an input's.
    A record's key that the schema does not have is not written.
    """
    if passthrough is None:
        seen = InputColumns()
        for record in records:
            seen.observe({k: v for k, v in record.items() if k not in OUTPUT_COLUMNS and k != "id"})
        passthrough = seen.decide().passthrough
    arrays = [pa.array([r.get(f.name) for r in records], type=f.type) for f in OUTPUT_SCHEMA]
    arrays += [column((r.get(f.name) for r in records), f.type) for f in passthrough]
    return pa.Table.from_arrays(arrays, schema=part_schema(passthrough))


def conform(table: pa.Table, passthrough: pa.Schema) -> pa.Table | None:
    """An earlier part's table in today's schema (columns added as nulls, retyped, dropped when gone from
    the input); ``None`` when it has that schema already."""
    target = part_schema(passthrough)
    if table.schema.remove_metadata().equals(target):
        return None
    arrays = []
    for f in target:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(len(table), type=f.type))
        elif table.schema.field(f.name).type.equals(f.type):
            arrays.append(table.column(f.name).combine_chunks())
        elif f.name in OUTPUT_COLUMNS:
            arrays.append(table.column(f.name).cast(f.type).combine_chunks())
        else:
            arrays.append(column(table.column(f.name).to_pylist(), f.type))
    return pa.Table.from_arrays(arrays, schema=target.with_metadata(table.schema.metadata))
