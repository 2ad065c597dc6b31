"""Planning a row: what it charges and may cost, or a typed refusal naming the row and the field."""

from __future__ import annotations

from schemas import Params, Planned, Price, PromptRow, PromptSpec, Refusal, RefusalKind, build_row, plan_counted
from schemas.plan import untokenizable


def row(max_tokens: int = 100) -> PromptRow:
    return build_row({"id": "r1", "text": "Ciao"}, 0, "a.jsonl line 1", PromptSpec(template="{text}"),
                     Params(max_tokens=max_tokens))


def test_a_row_that_fits_is_charged_its_billed_prompt_plus_max_tokens_and_priced_at_its_worst() -> None:
    planned = plan_counted(row(), 40, context_tokens=1000, model="m", charge=lambda n: round(n * 1.1),
                           price=Price(2.0, 6.0))
    assert isinstance(planned, Planned)
    assert (planned.prompt_tokens, planned.charge) == (40, 44 + 100)
    assert planned.worst_usd == (44 * 2.0 + 100 * 6.0) / 1e6
    unpriced = plan_counted(row(), 40, context_tokens=1000, model="m", charge=lambda n: n, price=None)
    assert isinstance(unpriced, Planned) and unpriced.worst_usd == 0.0


def test_a_row_over_the_context_is_refused_naming_the_row() -> None:
    refused = plan_counted(row(max_tokens=961), 40, context_tokens=1000, model="mistral-small",
                           charge=lambda n: n, price=None)
    assert isinstance(refused, Refusal) and refused.kind is RefusalKind.OVER_CONTEXT
    assert refused.error == ("bad input: a.jsonl line 1: prompt of 40 tokens plus max_tokens 961 exceeds the "
                             "1000-token context of mistral-small")
    # Exactly at the context still fits.
    assert isinstance(plan_counted(row(max_tokens=960), 40, context_tokens=1000, model="m", charge=lambda n: n,
                                   price=None), Planned)


def test_an_untokenizable_row_names_the_field() -> None:
    refused = untokenizable(row(), "roles must alternate")
    assert refused.kind is RefusalKind.BAD_INPUT and refused.reason == "roles must alternate"
    assert refused.detail == "a.jsonl line 1: field `messages`: roles must alternate"
