"""Input records become PromptRows, or a BadRowError naming position and field."""

from __future__ import annotations

import pytest

from schemas import BadRowError, Params, PromptSpec, build_row

TEMPLATE = PromptSpec(system="You translate.", template="Translate: {text}")


class TestBuildRow:
    """build_row validates a record and carries its passthrough columns."""

    def test_template_and_system(self) -> None:
        row = build_row({"id": "a1", "text": "Hello", "lang": "it"}, 7, "p.jsonl line 8", TEMPLATE, Params())
        assert row.messages == ({"role": "system", "content": "You translate."},
                                {"role": "user", "content": "Translate: Hello"})
        assert (row.id, row.seq) == ("a1", 7)
        assert row.passthrough == {"text": "Hello", "lang": "it"}

    def test_messages_win_over_template(self) -> None:
        row = build_row({"messages": [{"role": "user", "content": "Hi"}]}, 0, "w", TEMPLATE, Params())
        assert row.messages[0] == {"role": "system", "content": "You translate."}
        assert row.messages[-1] == {"role": "user", "content": "Hi"}

    def test_derived_id_is_stable_and_content_based(self) -> None:
        a = build_row({"text": "Hello"}, 0, "w", TEMPLATE, Params())
        b = build_row({"text": "Hello"}, 5, "w", TEMPLATE, Params())
        c = build_row({"text": "Hello!"}, 0, "w", TEMPLATE, Params())
        assert a.id == b.id != c.id
        assert a.id.startswith("sha-")

    def test_row_params_override_job_params(self) -> None:
        row = build_row({"text": "x", "params": {"max_tokens": 9}}, 0, "w", TEMPLATE, Params(temperature=0.3))
        assert (row.params.max_tokens, row.params.temperature) == (9, 0.3)

    def test_output_column_names_are_not_shadowed(self) -> None:
        row = build_row({"text": "x", "status": "draft"}, 0, "w", TEMPLATE, Params())
        assert row.passthrough == {"text": "x", "input_status": "draft"}

    @pytest.mark.parametrize(
        ("record", "field"),
        [
            ({"other": 1}, "text"),
            ({"messages": []}, "messages"),
            ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
            ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages"),
            ({"text": "x", "params": {"max_tokens": -1}}, "params.max_tokens"),
            ({"text": "x", "params": {"colour": 1}}, "params.colour"),
            ({"text": "x", "id": ["not", "a", "string"]}, "id"),
        ],
    )
    def test_bad_rows_name_where_and_field(self, record: dict[str, object], field: str) -> None:
        with pytest.raises(BadRowError) as caught:
            build_row(record, 3, "p.jsonl line 4", TEMPLATE, Params())
        assert caught.value.field == field
        assert caught.value.seq == 3
        assert str(caught.value).startswith(f"p.jsonl line 4: field `{field}`")

    def test_no_template_no_messages(self) -> None:
        with pytest.raises(BadRowError, match="no `prompt.template`"):
            build_row({"text": "x"}, 0, "w", PromptSpec(), Params())
