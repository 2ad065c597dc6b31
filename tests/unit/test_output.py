"""The output table: our columns typed by OUTPUT_SCHEMA, passthrough columns after them."""

from __future__ import annotations

import pyarrow as pa

from schemas import OUTPUT_SCHEMA, Price, Refusal, RefusalKind, Status
from workers import Completion, Draft, Outcome


def test_record_and_table_types() -> None:
    completion = Completion("r1", "m", "Ciao", "stop", 10, 2,
                            [{"token": "Ci", "logprob": -0.1, "top_logprobs": [{"token": "Ci", "logprob": -0.1}]}])
    draft = Draft(0, "a", {"text": "hi", "n": 1}, "mistral-large-2407", "d0", "https://x", Status.OK, completion,
                  attempts=1, latency_ms=12.5, prompt_tokens=4, completion_tokens=2,
                  earlier_prompt_tokens=6)  # an answer asked again: both requests' tokens are billed
    ok = draft.finish(Price(2.0, 6.0))
    bad = Outcome.refused(1, None, Refusal(RefusalKind.BAD_INPUT, "line 2"), passthrough={"n": "two"})
    records = [ok.record(), bad.record()]
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
