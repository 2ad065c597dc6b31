"""The output table: our columns typed by OUTPUT_SCHEMA, passthrough columns after them."""

from __future__ import annotations

import pyarrow as pa

from schemas import OUTPUT_SCHEMA, Price
from workers import Completion, Outcome


def test_record_and_table_types() -> None:
    completion = Completion("r1", "m", "Ciao", "stop", 10, 2,
                            [{"token": "Ci", "logprob": -0.1, "top_logprobs": [{"token": "Ci", "logprob": -0.1}]}])
    ok = Outcome(0, "a", "ok", {"text": "hi", "n": 1}, completion, "mistral-large-2407", 1, 12.5, None, 10, 2)
    bad = Outcome(1, None, "error", {"n": "two"}, error="bad input: line 2")
    records = [ok.record(Price(2.0, 6.0)), bad.record(None)]
    assert records[0]["cost_usd"] == (10 * 2.0 + 2 * 6.0) / 1e6
    assert records[0]["total_tokens"] == 12
    from schemas import output_table

    table = output_table(records)
    assert table.schema.names[: len(OUTPUT_SCHEMA)] == OUTPUT_SCHEMA.names
    assert table.schema.field("logprobs").type == OUTPUT_SCHEMA.field("logprobs").type
    assert table.schema.field("text").type == pa.string()
    # `n` is an int in one row and a string in the other: a string column, each value as the input wrote it.
    assert table.column("n").to_pylist() == ["1", "two"]
    assert table.column("error").to_pylist() == [None, "bad input: line 2"]
