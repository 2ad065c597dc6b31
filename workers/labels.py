"""A labeling job's answers: how each mode is asked for, what an answer says, how a bad one is asked again.

Modes, as the request carries them (the schema is also stated in the system message in
every mode, ``schemas.response.with_instruction``, so the prompt billed is the same whichever
mode a deployment ends up taking):

- ``json_schema``: ``response_format: {type: json_schema, json_schema: {name, schema, strict}}``;
- ``json_object``: ``response_format: {type: json_object}``;
- ``tool``: one function whose parameters are the schema, and ``tool_choice`` forcing a call
  (``any`` on the mistral route; ``required``, the Azure AI Model Inference contract's word for it,
  on the other). The answer is the call's arguments.

``Modes`` is one deployment's list of modes still to try (``auto``: the strongest its route
accepts first, ``schemas.response.AUTO_ORDER``); a 400/422 refusing the current mode drops it
for the rest of the run, once per deployment.

An answer that does not validate is asked again with the conversation so far, the answer as
the assistant's turn and the validation error in a user turn. ``label_columns`` turns an
output record back into its label columns (from ``completion`` and ``logprobs``), so the
journal, resumed answers and duplicates need carry nothing more than the record itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from schemas.response import AUTO_ORDER, CONFIDENCE_SUFFIX, LABEL_PREFIX, ResponseSpec
from workers.completion import Completion

REASK_TEMPLATE = ("Your answer is not valid: {error}. Answer again with one JSON object valid under the schema "
                  "in the system message, and nothing else.")
#: Words an endpoint's refusal names when it does not take the mode it was asked for.
_REFUSAL_WORDS = {"json_schema": ("json_schema", "response_format", "schema"),
                  "json_object": ("json_object", "response_format"),
                  "tool": ("tool", "function")}


class Modes:
    """The structured-output modes one deployment may still be asked for, current first."""

    def __init__(self, response: ResponseSpec, api: str):
        self.response = response
        self.api = api
        self._left = list(AUTO_ORDER[api]) if response.mode == "auto" else [response.mode]

    @property
    def final(self) -> bool:
        """No other mode is left to fall back to."""
        return len(self._left) == 1

    @property
    def current(self) -> str:
        """The mode requests go out in now."""
        return self._left[0]

    def body_fields(self) -> dict[str, Any]:
        """The request fields that ask for the current mode."""
        response = self.response
        if self.current == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": response.name, "schema": response.schema_dict, "strict": True}}}
        if self.current == "json_object":
            return {"response_format": {"type": "json_object"}}
        function = {"name": response.name, "description": "Record the answer.", "parameters": response.schema_dict}
        return {"tools": [{"type": "function", "function": function}],
                "tool_choice": "any" if self.api == "mistral" else "required"}

    def refused(self, status: int | None, message: str, *, settled: bool) -> bool:
        """Whether an error answer refuses the current mode; if so (and another is left), move to the next.

        Before the deployment has taken a request in any mode (``settled`` false) every 400/422 is read as
        a refusal: Azure's refusal of ``json_schema`` says only "invalid input error". Afterwards only one
        that names the mode is.
        """
        if status not in (400, 422) or self.final:
            return False
        lowered = message.lower()
        if settled and not any(word in lowered for word in _REFUSAL_WORDS[self.current]):
            return False
        self._left.pop(0)
        return True


def answer_text(completion: Completion) -> str | None:
    """The answer's JSON text: the forced tool call's arguments when there is one, else the message."""
    if completion.tool_arguments is not None:
        return completion.tool_arguments
    return completion.content


def reask_messages(messages: tuple[dict[str, str], ...], answer: str | None,
                   error: str) -> tuple[dict[str, str], ...]:
    """The conversation asking again: the invalid answer as the assistant's turn, the error as the user's."""
    return (*messages, {"role": "assistant", "content": answer or ""},
            {"role": "user", "content": REASK_TEMPLATE.format(error=error)})


def confidence(logprobs: list[dict[str, Any]] | None, text: str | None, field: str, value: str) -> float | None:
    """The probability the model gave ``value`` for ``field``: exp of the summed logprobs of the tokens that
    wrote it; ``None`` without logprobs, or when the tokens do not spell the answer."""
    if not logprobs or text is None:
        return None
    pieces = [str(t.get("token", "")) for t in logprobs]
    spelled = "".join(pieces)
    match = re.search(r'"' + re.escape(field) + r'"\s*:\s*"(' + re.escape(value) + r')"', spelled)
    if match is None:
        return None
    start, end = match.span(1)
    total, at = 0.0, 0
    for piece, token in zip(pieces, logprobs, strict=True):
        if at < end and at + len(piece) > start:
            total += float(token["logprob"])
        at += len(piece)
    return math.exp(total)


def label_columns(response: ResponseSpec, record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's label columns: from its answer when its status is ``ok``, null otherwise."""
    empty: dict[str, Any] = {name: None for name in response.columns.names}
    if record.get("status") != "ok":
        return empty
    text = record.get("completion")
    value, error = response.check(text)
    if error is not None:
        return empty
    columns = {**empty, **response.label_values(value)}
    for field in response.enum_fields:
        chosen = value.get(field)
        if isinstance(chosen, str):
            columns[LABEL_PREFIX + field + CONFIDENCE_SUFFIX] = confidence(record.get("logprobs"), text, field, chosen)
    return columns
