"""The output contract: the Arrow schema of every Parquet part and the row statuses.

Users' downstream jobs read these columns by name; add columns, never rename one.
Columns a prompt set carries beyond ``id``, ``messages`` and ``params`` follow these,
typed once for the whole output (``schemas.passthrough``) and renamed ``input_<name>``
where they would shadow one of ours.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import pyarrow as pa


class Status(StrEnum):
    """How a row ended: the ``status`` column's values (a ``Status`` is its own string)."""

    OK = "ok"
    FILTERED = "filtered"
    ERROR = "error"
    #: A labeling job's answer never validated against its schema, re-asks included.
    INVALID = "invalid"


STATUSES: Final = tuple(s.value for s in Status)

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
        ("usage_estimated", pa.bool_()),
        # The id of the row whose answer this one carries: its request was identical, it was sent once.
        ("duplicate_of", pa.string()),
    ]
)
OUTPUT_COLUMNS: Final = frozenset(OUTPUT_SCHEMA.names)


def passthrough_name(name: str) -> str:
    """The output column an input column is passed through as."""
    return f"input_{name}" if name in OUTPUT_COLUMNS else name
