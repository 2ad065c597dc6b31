"""Structured answers: what the simulated deployment writes when asked for JSON, a schema or a tool call.

The request says what it wants: ``tools`` (the first function's parameters are the schema; the
answer is a call to it), ``response_format: {type: json_schema}`` (its schema), or
``response_format: {type: json_object}`` (the schema, if any, as the system message states it
after ``JSON Schema:``). The answer is an instance of the schema drawn from the conversation's
digest, so the same conversation always gets the same answer; a set share of answers (and every
answer to a conversation containing ``[[invalid]]``) is not valid: half not JSON at all, half
JSON that breaks the schema (a value outside an enum, a required key missing, a wrong type).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

_WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()
_SCHEMA_MARK = "JSON Schema:"


@dataclass(frozen=True, slots=True)
class Wanted:
    """What kind of structured answer a request asks for."""

    mode: str  # "tool", "json_schema" or "json_object"
    schema: dict[str, Any] | None
    name: str = "answer"


def wanted(body: dict[str, Any], messages: list[dict[str, Any]]) -> Wanted | None:
    """The structured answer ``body`` asks for; ``None`` for plain text."""
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function") or {}
        return Wanted("tool", function.get("parameters"), str(function.get("name") or "answer"))
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        definition = response_format.get("json_schema") or {}  # type: ignore[union-attr]
        return Wanted("json_schema", definition.get("schema"), str(definition.get("name") or "answer"))
    if kind == "json_object":
        return Wanted("json_object", stated_schema(messages))
    return None


def stated_schema(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON Schema a system message states after ``JSON Schema:``, if one does."""
    for message in messages:
        content = str(message.get("content", ""))
        if message.get("role") == "system" and _SCHEMA_MARK in content:
            text = content.split(_SCHEMA_MARK, 1)[1].lstrip()
            try:
                schema, _ = json.JSONDecoder().raw_decode(text)
            except ValueError:
                return None
            return schema if isinstance(schema, dict) else None
    return None


def instance(schema: Any, rng: random.Random) -> Any:
    """A value valid under ``schema`` (the subset of JSON Schema labeling jobs use)."""
    if not isinstance(schema, dict):
        return rng.choice(_WORDS)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for union in ("anyOf", "oneOf"):
        if isinstance(schema.get(union), list) and schema[union]:
            return instance(schema[union][0], rng)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: instance(prop, rng) for name, prop in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [instance(schema.get("items", {}), rng) for _ in range(rng.randint(1, 3))]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 10)))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 1))), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(_WORDS)


def invalid(schema: Any, rng: random.Random) -> str:
    """An answer that does not validate: not JSON at all, or JSON breaking ``schema``."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if rng.random() < 0.5 or not isinstance(properties, dict) or not properties:
        return f"Sure! Here is my answer: {rng.choice(_WORDS)}."
    value = instance(schema, rng)
    enums = [name for name, prop in properties.items() if isinstance(prop, dict) and prop.get("enum")]
    required = [name for name in schema.get("required") or [] if name in value]
    if enums:
        value[enums[0]] = "not-a-" + enums[0]
    elif required:
        del value[required[0]]
    else:
        value[next(iter(properties))] = {"unexpected": True}
    return json.dumps(value)


def answer(want: Wanted, digest: str, seed: int, bad: bool, rng: random.Random) -> str:
    """The answer's JSON text (the tool call's arguments in ``tool`` mode)."""
    if bad:
        return invalid(want.schema, rng)
    if want.schema is None:
        return json.dumps({"answer": random.Random(f"{seed}:{digest}").choice(_WORDS)})
    return json.dumps(instance(want.schema, random.Random(f"{seed}:{digest}")), separators=(", ", ": "))
