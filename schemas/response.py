"""The answer a labeling job expects: the job file's ``response:`` block, its columns, its validation.

A ``response:`` block declares the JSON Schema every answer must satisfy — in full (``schema:``)
or in the short form for the common case (``labels: {sentiment: [positive, negative, neutral]}``:
each key a required property, a list its enum, a type name its type) — how the endpoint is asked
for it (``mode``) and how often an invalid answer is asked again (``reask``).

The schema's top-level properties become typed output columns named ``label_<property>``
(``label_`` keeps them apart from every column of ours); each enum property also gets
``label_<property>_confidence``, the probability the model gave the chosen value where the
endpoint returns logprobs. Validation uses ``jsonschema`` (draft 2020-12).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any, Literal

import jsonschema
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

ResponseMode = Literal["auto", "json_schema", "json_object", "tool"]
#: How each mode is asked for, strongest first: what ``auto`` tries, route by route. Mistral's published
#: contract (2024-08) declares ``response_format`` types ``text`` and ``json_object`` only, so ``json_schema``
#: goes out on the Azure AI Model Inference route alone.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "azure-inference": ("json_schema", "tool", "json_object"),
    "mistral": ("tool", "json_object"),
}
LABEL_PREFIX = "label_"
CONFIDENCE_SUFFIX = "_confidence"
_TYPE_NAMES = frozenset({"string", "integer", "number", "boolean"})
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class ResponseSpec(BaseModel):
    """The ``response:`` block of a job file."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    labels: dict[str, list[Any] | str] | None = None
    mode: ResponseMode = "auto"
    reask: int = Field(1, ge=0, le=5)
    #: The schema's name where the request carries one (``json_schema.name``, the tool's function name).
    name: str = Field("labels", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @model_validator(mode="after")
    def _one_schema(self) -> ResponseSpec:
        if (self.json_schema is None) == (self.labels is None):
            raise ValueError("give exactly one of `schema` or `labels`")
        if self.labels is not None:
            for key, value in self.labels.items():
                if isinstance(value, list) and not value:
                    raise ValueError(f"`labels.{key}`: an empty list of values")
                if isinstance(value, str) and value not in _TYPE_NAMES:
                    raise ValueError(f"`labels.{key}`: {value!r} is neither a list of values nor one of "
                                     f"{', '.join(sorted(_TYPE_NAMES))}")
        schema = self.schema_dict
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"`schema` is not a valid JSON Schema: {exc.message}") from None
        if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) \
                or not schema["properties"]:
            raise ValueError("`schema` must be an object schema with `properties` (they become the "
                             "output's label columns)")
        for prop in self.enum_fields:
            if prop + CONFIDENCE_SUFFIX in schema["properties"]:
                raise ValueError(f"`schema`: property `{prop}{CONFIDENCE_SUFFIX}` would share its column "
                                 f"with the confidence of `{prop}`: rename it")
        return self

    @cached_property
    def schema_dict(self) -> dict[str, Any]:
        """The JSON Schema answers must satisfy (the short form expanded)."""
        if self.json_schema is not None:
            return self.json_schema
        properties: dict[str, Any] = {}
        for key, value in (self.labels or {}).items():
            properties[key] = {"type": value} if isinstance(value, str) else _enum(value)
        return {"type": "object", "properties": properties, "required": list(properties),
                "additionalProperties": False}

    @property
    def properties(self) -> dict[str, Any]:
        """The schema's top-level properties by name."""
        props: dict[str, Any] = self.schema_dict["properties"]
        return props

    @cached_property
    def enum_fields(self) -> tuple[str, ...]:
        """Top-level properties whose values are an enum of strings (counted in the manifest, with confidence)."""
        return tuple(name for name, prop in self.properties.items() if _string_enum(prop))

    @cached_property
    def columns(self) -> pa.Schema:
        """The label columns every part of the output carries, in the schema's order."""
        fields = []
        for name, prop in self.properties.items():
            fields.append(pa.field(LABEL_PREFIX + name, arrow_type(prop, top=True)))
            if name in self.enum_fields:
                fields.append(pa.field(LABEL_PREFIX + name + CONFIDENCE_SUFFIX, pa.float64()))
        return pa.schema(fields)

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator:
        return jsonschema.Draft202012Validator(self.schema_dict)

    def instruction(self) -> str:
        """What the system message says in every mode, so the model knows the shape it must answer in."""
        return ("Answer with one JSON object and nothing else. It must be valid under this JSON Schema:\n"
                + json.dumps(self.schema_dict, separators=(",", ":")))

    def check(self, text: str | None) -> tuple[Any, str | None]:
        """``(value, None)`` when ``text`` is a JSON document valid under the schema, else ``(None, why)``."""
        if text is None or not text.strip():
            return None, "the answer is empty"
        stripped = text.strip()
        fenced = _FENCE.match(stripped)  # a model asked for JSON sometimes wraps it in a code fence
        try:
            value = json.loads(fenced.group(1) if fenced else stripped)
        except ValueError as exc:
            return None, f"the answer is not JSON: {exc}"
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return value, None
        where = "/".join(str(p) for p in error.absolute_path) or "(the answer)"
        return None, f"{where}: {error.message}"[:500]

    def label_values(self, value: Any) -> dict[str, Any]:
        """A valid answer's top-level properties as the label columns' values (``None`` where absent)."""
        got = value if isinstance(value, dict) else {}
        return {LABEL_PREFIX + name: to_arrow_value(prop, got.get(name), top=True)
                for name, prop in self.properties.items()}


def _enum(values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, str) for v in values):
        return {"type": "string", "enum": list(values)}
    return {"enum": list(values)}


def _string_enum(prop: Any) -> bool:
    return isinstance(prop, dict) and isinstance(prop.get("enum"), list) and bool(prop["enum"]) \
        and all(isinstance(v, str) for v in prop["enum"])


def _type_of(prop: dict[str, Any]) -> str | None:
    kind = prop.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the value's type, nullable anyway
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return kind if isinstance(kind, str) else None


def arrow_type(prop: Any, *, top: bool = False) -> pa.DataType:
    """The Arrow type of a schema property: enum → dictionary-encoded string (at the top level), integer →
    int64, number → float64, boolean, array → list, object with properties → struct; anything else (no
    type, unions, free objects) → string holding the value as JSON."""
    if not isinstance(prop, dict):
        return pa.string()
    if _string_enum(prop):
        return pa.dictionary(pa.int32(), pa.string()) if top else pa.string()
    kind = _type_of(prop)
    if kind == "string":
        return pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        return pa.list_(arrow_type(prop.get("items", {})))
    if kind == "object" and isinstance(prop.get("properties"), dict) and prop["properties"]:
        return pa.struct([pa.field(k, arrow_type(v)) for k, v in prop["properties"].items()])
    return pa.string()


def to_arrow_value(prop: Any, value: Any, *, top: bool = False) -> Any:
    """A validated value in the shape ``arrow_type(prop)`` holds."""
    if value is None:
        return None
    kind = arrow_type(prop, top=top)
    if pa.types.is_string(kind):
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_list(kind):
        return [to_arrow_value(prop.get("items", {}), v) for v in value]
    if pa.types.is_struct(kind):
        return {k: to_arrow_value(p, value.get(k)) for k, p in prop["properties"].items()}
    return value


def with_instruction(messages: tuple[dict[str, str], ...], instruction: str) -> tuple[dict[str, str], ...]:
    """The conversation with the schema's instruction at the end of its system message (one is added first)."""
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
        return (first, *messages[1:])
    return ({"role": "system", "content": instruction}, *messages)
