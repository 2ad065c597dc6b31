"""The ``response:`` block: short form, schema checks, typed columns, validation, confidence."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest

from flows.estimate import duplicate_saving
from flows.manifest import build_manifest
from flows.parts import summarize
from schemas import JobFileError, Params, PromptSpec, ResponseSpec, build_row, job_from_dict, with_labels
from schemas.passthrough import PassthroughError, output_table
from schemas.response import arrow_type, with_instruction
from workers.labels import confidence, label_columns, reask_messages

SENTIMENT = {"labels": {"sentiment": ["positive", "negative", "neutral"]}}


def job(response: dict[str, Any], api: str = "mistral", **extra: Any) -> Any:
    return job_from_dict({"input": "p.jsonl", "output": "o", "response": response, **extra,
                          "endpoint": {"url": "http://x", "api": api, "model": "mistral-small-2402"}})


class TestResponseBlock:
    """The block is validated like the rest of the job file."""

    def test_short_form_expands_to_a_strict_object_schema(self) -> None:
        spec = ResponseSpec.model_validate({"labels": {"sentiment": ["positive", "negative"], "score": "integer"}})
        assert spec.schema_dict == {
            "type": "object", "additionalProperties": False, "required": ["sentiment", "score"],
            "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]},
                           "score": {"type": "integer"}}}
        assert (spec.mode, spec.reask, spec.enum_fields) == ("auto", 1, ("sentiment",))

    @pytest.mark.parametrize(("response", "message"), [
        ({"labels": {"s": []}}, "`labels.s`: an empty list"),
        ({"labels": {"s": "colour"}}, "neither a list of values"),
        ({"schema": {"type": "objekt"}}, "not a valid JSON Schema"),
        ({"schema": {"type": "string"}}, "must be an object schema"),
        ({**SENTIMENT, "schema": {"type": "object", "properties": {"a": {}}}}, "exactly one of"),
        ({**SENTIMENT, "mode": "xml"}, "response.mode"),
        ({**SENTIMENT, "reask": 9}, "response.reask"),
        ({**SENTIMENT, "colour": 1}, "unknown key `response.colour`"),
        ({"labels": {"s": ["a"], "s_confidence": "number"}}, "share its column"),
    ])
    def test_bad_blocks_name_the_key(self, response: dict[str, Any], message: str) -> None:
        with pytest.raises(JobFileError, match=message):
            job(response)

    def test_json_schema_is_refused_on_the_mistral_route_and_taken_on_azure(self) -> None:
        with pytest.raises(JobFileError, match="json_schema is not in the mistral route's published contract"):
            job({**SENTIMENT, "mode": "json_schema"})
        assert job({**SENTIMENT, "mode": "json_schema"}, api="azure-inference").response.mode == "json_schema"

    def test_response_format_and_response_are_exclusive(self) -> None:
        with pytest.raises(JobFileError, match="params.response_format"):
            job(SENTIMENT, params={"response_format": {"type": "json_object"}})

    def test_dedupe_defaults_on_for_labeling_only_and_the_block_enters_the_hash(self) -> None:
        labeling = job(SENTIMENT)
        plain = job_from_dict({"input": "p.jsonl", "output": "o",
                               "endpoint": {"url": "http://x", "model": "mistral-small-2402"}})
        assert labeling.dedupes and not plain.dedupes and not job(SENTIMENT, dedupe=False).dedupes
        assert labeling.job_hash() != plain.job_hash() != job({**SENTIMENT, "reask": 3}).job_hash()

    def test_the_instruction_ends_the_system_message_and_the_digest(self) -> None:
        spec = ResponseSpec.model_validate(SENTIMENT)
        prompt = PromptSpec(system="Label it.", template="{text}")
        row = build_row({"text": "fine"}, 0, "w", prompt, Params(), instruction=spec.instruction())
        assert row.messages[0]["content"].startswith("Label it.\n\nAnswer with one JSON object")
        assert row.digest != build_row({"text": "fine"}, 0, "w", prompt, Params()).digest
        assert with_instruction(({"role": "user", "content": "x"},), "I")[0] == {"role": "system", "content": "I"}


class TestColumns:
    """Schema properties become typed columns that never shadow ours."""

    @pytest.mark.parametrize(("prop", "expected"), [
        ({"type": "string", "enum": ["a", "b"]}, pa.dictionary(pa.int32(), pa.string())),
        ({"type": "integer"}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"type": ["integer", "null"]}, pa.int64()),
        ({"type": "array", "items": {"type": "string", "enum": ["x"]}}, pa.list_(pa.string())),
        ({"type": "object", "properties": {"n": {"type": "number"}, "t": {"type": "array", "items": {}}}},
         pa.struct([("n", pa.float64()), ("t", pa.list_(pa.string()))])),
        ({"type": "object"}, pa.string()),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, pa.string()),
    ])
    def test_arrow_types(self, prop: dict[str, Any], expected: pa.DataType) -> None:
        assert arrow_type(prop, top=True) == expected

    def test_label_columns_follow_ours_and_a_clash_is_refused(self) -> None:
        spec = ResponseSpec.model_validate({"labels": {"sentiment": ["p", "n"], "stars": "integer"}})
        assert spec.columns.names == ["label_sentiment", "label_sentiment_confidence", "label_stars"]
        schema = with_labels(spec.columns, pa.schema([("text", pa.string())]))
        assert schema.names[-1] == "text"
        with pytest.raises(PassthroughError, match="`label_stars`"):
            with_labels(spec.columns, pa.schema([("label_stars", pa.int64())]))

    def test_a_part_with_labels_and_nulls(self) -> None:
        spec = ResponseSpec.model_validate({"labels": {"sentiment": ["p", "n"], "stars": "integer"}})
        ok = {"id": "a", "status": "ok", "completion": '{"sentiment": "p", "stars": 4}'}
        invalid = {"id": "b", "status": "invalid", "completion": "nope"}
        records = [{**r, **label_columns(spec, r)} for r in (ok, invalid)]
        table = output_table(records, with_labels(spec.columns, pa.schema([])))
        assert table.column("label_sentiment").to_pylist() == ["p", None]
        assert table.column("label_stars").type == pa.int64() and table.column("label_stars").to_pylist() == [4, None]


class TestValidation:
    """Every answer is parsed and checked with jsonschema; the error says why."""

    SPEC = ResponseSpec.model_validate({"labels": {"sentiment": ["positive", "negative"], "stars": "integer"}})

    @pytest.mark.parametrize(("text", "error"), [
        ('{"sentiment": "positive", "stars": 5}', None),
        ('```json\n{"sentiment": "negative", "stars": 1}\n```', None),
        ('{"sentiment": "happy", "stars": 5}', "sentiment: 'happy' is not one of"),
        ('{"sentiment": "positive"}', "'stars' is a required property"),
        ('{"sentiment": "positive", "stars": "5"}', "stars: '5' is not of type 'integer'"),
        ('{"sentiment": "positive", "stars": 5, "x": 1}', "Additional properties"),
        ("Sure! positive.", "not JSON"),
        ("", "empty"),
        (None, "empty"),
    ])
    def test_check(self, text: str | None, error: str | None) -> None:
        value, why = self.SPEC.check(text)
        if error is None:
            assert why is None and value["sentiment"] in ("positive", "negative")
        else:
            assert value is None and why is not None and error in why

    def test_reask_carries_the_answer_and_the_error(self) -> None:
        asked = reask_messages(({"role": "user", "content": "x"},), "nope", "the answer is not JSON")
        assert asked[1] == {"role": "assistant", "content": "nope"}
        assert asked[2]["role"] == "user" and "the answer is not JSON" in asked[2]["content"]


class TestConfidence:
    """The probability of the chosen enum value, from the tokens that wrote it; null without logprobs."""

    TOKENS = [("{\"", -0.01), ("sent", 0.0), ("iment", 0.0), ("\":", 0.0), (" \"", -0.02), ("pos", -0.2),
              ("itive", -0.1), ("\"}", 0.0)]

    def logprobs(self) -> list[dict[str, Any]]:
        return [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in self.TOKENS]

    def test_from_the_value_tokens(self) -> None:
        text = "".join(t for t, _ in self.TOKENS)
        assert math.isclose(confidence(self.logprobs(), text, "sentiment", "positive") or 0, math.exp(-0.3))
        assert confidence(None, text, "sentiment", "positive") is None
        assert confidence(self.logprobs(), text, "sentiment", "negative") is None

    def test_in_the_label_columns(self) -> None:
        spec = ResponseSpec.model_validate(SENTIMENT)
        text = "".join(t for t, _ in self.TOKENS)
        columns = label_columns(spec, {"status": "ok", "completion": text, "logprobs": self.logprobs()})
        assert columns["label_sentiment"] == "positive"
        assert math.isclose(columns["label_sentiment_confidence"], math.exp(-0.3))
        assert label_columns(spec, {"status": "ok", "completion": text})["label_sentiment_confidence"] is None


def test_the_estimate_shows_what_copies_save() -> None:
    report = {"rows": {"to_send": 1500}, "tokens": {"prompt": 150_000}, "cost_usd": {"expected": 3.0, "ceiling": 6.0}}
    assert duplicate_saving(report, 500) == {"rows": 500, "distinct_requests": 1500, "prompt_tokens_saved": 50_000,
                                             "saving_usd": {"expected": 1.0, "ceiling": 2.0}}


def test_manifest_counts_rows_by_label_value() -> None:
    spec = job(SENTIMENT)
    records: list[dict[str, Any]] = [
        {"id": str(i), "status": "ok" if i else "invalid", "model": "m", "cost_usd": 0.0, "prompt_tokens": 1,
         "completion_tokens": 1, "label_sentiment": ["positive", "negative", "positive"][i]} for i in range(3)]
    records[0]["label_sentiment"] = None
    records[2]["duplicate_of"] = "1"
    parts = [summarize("a", 0, records[:2], enums=["label_sentiment"]),
             summarize("b", 1, records[2:], enums=["label_sentiment"])]
    manifest = build_manifest(spec, [], parts, status="complete", shard_rows=2, wall_time_s=1.0)
    assert manifest["labels"] == {"label_sentiment": {"negative": 1, "positive": 1}}
    assert manifest["duplicates"] == 1
    assert manifest["rows"] == {"total": 3, "ok": 2, "filtered": 0, "error": 0, "invalid": 1}
