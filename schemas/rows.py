"""Input rows: from a JSONL object or Parquet record to a ``PromptRow`` ready to send.

A row carries ``messages`` (a list of ``{role, content}``) or the fields the job's
template names; an optional ``id`` (derived from the content when absent); optional
``params`` overriding the job's sampling parameters for that row; and any other
columns, which are passed through to the output. A row that cannot be sent raises
``BadRowError`` naming its position and field; the caller turns it into an ``error``
output row so the good rows still run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas.job import Params, PromptSpec
from schemas.output import passthrough_name
from schemas.response import with_instruction

ROLES = frozenset({"system", "user", "assistant", "tool"})
_RESERVED = frozenset({"id", "messages", "params"})


class BadRowError(ValueError):
    """An input row that cannot become a request."""

    def __init__(self, where: str, field: str, reason: str, *, seq: int = 0, row_id: str | None = None):
        self.where = where
        self.field = field
        self.reason = reason
        self.seq = seq
        self.row_id = row_id
        super().__init__(f"{where}: field `{field}`: {reason}" if field else f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class PromptRow:
    """One validated request-to-be, with what the output row needs to carry along.

    ``seq`` numbers the rows of a job's whole input from 0 and decides the output part;
    ``where`` names the row for people (``news/a.jsonl line 12``). ``digest`` stands for
    the request itself (its messages and parameters): with ``id`` it is the row's
    identity when a re-run decides which earlier answers still belong to which rows.
    """

    seq: int
    where: str
    id: str
    messages: tuple[dict[str, str], ...]
    params: Params
    passthrough: Mapping[str, Any]
    digest: str = ""



#: One row as read from the input: ready to plan, or why it could not be built.
RowRead = PromptRow | BadRowError


def build_row(record: Mapping[str, Any], seq: int, where: str, prompt: PromptSpec, params: Params, *,
              mixed_ids: bool = False, instruction: str | None = None) -> PromptRow:
    """Validate one input record and turn it into a ``PromptRow``; ``BadRowError`` if it cannot be sent.

    An integer id becomes its decimal text (``7`` → ``"7"``), unless ``mixed_ids`` (other rows of the
    input have string ids: ``7`` and ``"7"`` would be one id): then the row is refused. Any other
    type of id (``true``, ``1.5``, an object) is refused. ``instruction`` (a labeling job's schema, stated)
    ends the system message, so it is counted, digested and billed as part of the prompt.
    """
    row_id = record.get("id")
    try:
        row_id = _id(row_id, where, mixed_ids)
        if record.get("messages") is not None:
            messages = _messages(record["messages"], where, prompt)
        else:
            messages = _from_template(record, where, prompt)
        row_params = _params(record.get("params"), where, params)
        if instruction is not None:
            messages = with_instruction(messages, instruction)
    except BadRowError as exc:
        exc.seq = seq
        exc.row_id = row_id if isinstance(row_id, str) else None
        raise
    passthrough = {passthrough_name(k): v for k, v in record.items() if k not in _RESERVED}
    return PromptRow(
        seq=seq,
        where=where,
        id=row_id or derive_id(messages, row_params),
        messages=messages,
        params=row_params,
        passthrough=passthrough,
        digest=request_digest(messages, row_params),
    )


def _id(value: Any, where: str, mixed_ids: bool) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRowError(where, "id", f"must be a string or an integer, got {type(value).__name__} {value!r}")
    if mixed_ids:
        raise BadRowError(where, "id", f"is the number {value} while other ids of the input are strings "
                                       f"(it would be the same id as \"{value}\"): write ids of one type")
    return str(value)


def derive_id(messages: tuple[dict[str, str], ...], params: Params) -> str:
    """A stable id from a row's content, for prompt sets that carry none."""
    blob = json.dumps([list(messages), params.model_dump(exclude_defaults=True)], sort_keys=True)
    return "sha-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


def request_digest(messages: tuple[dict[str, str], ...], params: Params) -> str:
    """A digest of what is sent for a row (messages and every parameter): equal digests, equal requests.

    The model and the job's own settings are covered by the job's hash; this covers what
    differs from row to row. 128 bits: no two different requests of a job share one.
    """
    blob = json.dumps([list(messages), params.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _messages(value: Any, where: str, prompt: PromptSpec) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise BadRowError(where, "messages", "must be a non-empty list of {role, content}")
    messages: list[dict[str, str]] = []
    for i, message in enumerate(value):
        at = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise BadRowError(where, at, "must be an object with `role` and `content`")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRowError(where, f"{at}.role", f"must be one of {sorted(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise BadRowError(where, f"{at}.content", f"must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if prompt.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": prompt.system})
    if messages[-1]["role"] not in ("user", "tool"):
        raise BadRowError(where, "messages", "the last message must be from the user or a tool")
    return tuple(messages)


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def _from_template(record: Mapping[str, Any], where: str, prompt: PromptSpec) -> tuple[dict[str, str], ...]:
    if prompt.template is None:
        raise BadRowError(where, "messages", "missing, and the job has no `prompt.template`")
    try:
        text = prompt.template.format_map(_Fields(record))
    except KeyError as exc:
        raise BadRowError(where, str(exc.args[0]), "missing: the prompt template uses it") from None
    except (IndexError, ValueError, AttributeError) as exc:
        raise BadRowError(where, "prompt.template", f"cannot be filled: {exc}") from None
    messages = [{"role": "user", "content": text}]
    if prompt.system:
        messages.insert(0, {"role": "system", "content": prompt.system})
    return tuple(messages)


def _params(value: Any, where: str, params: Params) -> Params:
    if value is None:
        return params
    if not isinstance(value, Mapping):
        raise BadRowError(where, "params", "must be an object")
    try:
        return Params.model_validate({**params.model_dump(exclude_unset=True), **value})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "params." + ".".join(str(p) for p in first["loc"])
        reason = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise BadRowError(where, field, reason) from None
