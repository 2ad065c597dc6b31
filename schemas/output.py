"""The output contract: the Arrow schema of every Parquet part and the row statuses.

Users' downstream jobs read these columns by name; add columns, never rename one.
Columns a prompt set carries beyond ``id``, ``messages`` and ``params`` follow these,
passed through unchanged (renamed ``input_<name>`` where they would shadow one of ours).
"""

from __future__ import annotations

import json
from typing import Final, Literal

import pyarrow as pa

Status = Literal["ok", "filtered", "error"]
STATUSES: Final = ("ok", "filtered", "error")

TOP_LOGPROB = pa.struct([("token", pa.string()), ("logprob", pa.float64())])
TOKEN_LOGPROB = pa.struct(
    [("token", pa.string()), ("logprob", pa.float64()), ("top_logprobs", pa.list_(TOP_LOGPROB))]
)

OUTPUT_SCHEMA: Final = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),
        ("completion", pa.string()),
        ("finish_reason", pa.string()),
        ("logprobs", pa.list_(TOKEN_LOGPROB)),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("model", pa.string()),
        ("response_id", pa.string()),
        ("latency_ms", pa.float64()),
        ("attempts", pa.int32()),
        ("error", pa.string()),
        ("request_digest", pa.string()),
    ]
)
OUTPUT_COLUMNS: Final = frozenset(OUTPUT_SCHEMA.names)


def passthrough_name(name: str) -> str:
    """The output column an input column is passed through as."""
    return f"input_{name}" if name in OUTPUT_COLUMNS else name


def output_table(records: list[dict[str, object]]) -> pa.Table:
    """Build one part's table: our columns typed by ``OUTPUT_SCHEMA``, the rest inferred."""
    extra: list[str] = []
    seen = set(OUTPUT_COLUMNS)
    for record in records:
        for key in record:
            if key not in seen:
                seen.add(key)
                extra.append(key)
    columns = {name: [r.get(name) for r in records] for name in OUTPUT_SCHEMA.names}
    arrays = [pa.array(columns[f.name], type=f.type) for f in OUTPUT_SCHEMA]
    fields = list(OUTPUT_SCHEMA)
    for name in extra:
        values = [r.get(name) for r in records]
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed types across rows (a number here, a string there): keep them as JSON text.
            array = pa.array([None if v is None else json.dumps(v, default=str) for v in values])
        arrays.append(array)
        fields.append(pa.field(name, array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
