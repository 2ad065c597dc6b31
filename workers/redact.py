"""Secrets out of every text that leaves the tool: one registry of what to hide and how to find it.

Some gateways answer an error (and even a 200) with the request they received, headers and
all, so an answer can carry ``Authorization: Bearer <key>`` or ``api-key: <key>``. Whatever
an answer says goes on into the output's ``error`` column, the journal, Prefect's states
and the logs, so it is cleaned where it enters: the client replaces its own key's bytes
in every body before reading it, and ``mask`` replaces any bearer token and any value
after an ``Authorization``/``api-key`` name, whoever's key it is.

On the way out, ``REDACTOR`` is the one registry: keys, SAS tokens and connection-string
account keys are added to it as soon as they are loaded, and its ``scrub`` masks them, any
SAS parameter or signature, any account key and everything ``mask`` finds, in every log
line, error message and report. A location is shown without its query string
(``Redactor.location``), where a SAS token would be.
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
# A SAS token's parameters in a URL's query, and its signature wherever it appears.
_SAS_PARAM = re.compile(r"([?&](?:sig|se|st|sp|sv|spr|srt|ss|sr|skoid|sktid|skt|ske|sks|skv)=)[^&\s'\"]+", re.I)
_SAS_SIG = re.compile(r"(sig=)[^&\s'\"]+", re.I)
# A storage connection string's account key.
_ACCOUNT_KEY = re.compile(r"(AccountKey=)[^;\s'\"]+", re.I)


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


class Redactor:
    """The secrets registered so far, and every pattern that finds a credential nobody registered."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Never show ``secret`` from now on (a value shorter than 4 characters is not kept)."""
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret, SAS parameter, account key and echoed credential masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _SAS_PARAM.sub(rf"\1{MASK}", text)
        text = _SAS_SIG.sub(rf"\1{MASK}", text)
        return mask(_ACCOUNT_KEY.sub(rf"\1{MASK}", text))

    @staticmethod
    def location(location: str) -> str:
        """A storage location fit to show: without its query string (where a SAS token would be)."""
        return location.split("?", 1)[0]


#: The registry the whole process shares.
REDACTOR = Redactor()
