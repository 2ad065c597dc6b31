"""Secrets out of text that came from outside: a server or gateway that echoes the request's headers.

Some gateways answer an error (and even a 200) with the request they received, headers and
all, so an answer can carry ``Authorization: Bearer <key>`` or ``api-key: <key>``. Whatever
an answer says goes on into the output's ``error`` column, the journal, Prefect's states
and the logs, so it is cleaned where it enters: the client replaces its own key's bytes
in every body before reading it, and ``mask`` replaces any bearer token and any value
after an ``Authorization``/``api-key`` name, whoever's key it is. ``flows.logs.scrub``
applies the same patterns to every log line and error message on the way out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MASK = "***"

# A bearer (or basic) credential, wherever it appears: `Bearer sk-…`, `"Bearer sk-…"`.
_BEARER = re.compile(r"\b(Bearer|Basic)(\s+|\\?[\"']?\s*[:=]\s*)(?!\*\*\*)[A-Za-z0-9\-._~+/=]{4,}", re.I)
# A header echoed as `name: value`, `"name": "value"`, `'name'='value'`, `name=value`.
_HEADER = re.compile(
    r"\b(authorization|proxy-authorization|api[-_]?key|x-api-key|ocp-apim-subscription-key)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)((?:Bearer|Basic)\s+)?(?!\*\*\*|(?:Bearer|Basic)\b)([^\s\"',;}&\\]{4,})",
    re.I,
)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets``, bearer tokens and echoed credential headers replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)


def mask_bytes(content: bytes, secrets: Iterable[str]) -> bytes:
    """``content`` with each secret's bytes (raw, and as JSON would escape it) replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, json.dumps(secret)[1:-1], json.dumps(secret)[1:-1].replace("/", "\\/")}:
            content = content.replace(form.encode(), MASK.encode())
    return content
