"""Logging: structlog, configured once, with secrets redacted from every event.

Keys, SAS tokens and connection-string account keys are registered here as soon as
they are loaded; the ``redact`` processor replaces them (and any ``sig=`` SAS
signature) wherever they appear in an event, before it is rendered.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from workers.redact import mask

_secrets: set[str] = set()
_SAS_SIG = re.compile(r"(sig=)[^&\s'\"]+", re.I)
_ACCOUNT_KEY = re.compile(r"(AccountKey=)[^;\s'\"]+", re.I)


def register_secret(value: str | None) -> None:
    """Never show ``value`` in a log line from now on."""
    if value and len(value) >= 4:
        _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret, SAS signature and echoed credential masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    text = _SAS_SIG.sub(r"\1***", text)
    # Credentials echoed by an endpoint or gateway, whoever's they are (``workers.redact``).
    return mask(_ACCOUNT_KEY.sub(r"\1***", text))


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: scrub every string value of the event."""
    return {k: scrub(v) if isinstance(v, str) else v for k, v in event.items()}


class ScrubFilter(logging.Filter):
    """A ``logging`` filter that scrubs a record's message and traceback (Prefect's own logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def guard_stdlib_logs() -> None:
    """Scrub every record that reaches a ``logging`` handler (Prefect's console and API handlers)."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
                                       if name.startswith("prefect")]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                handler.addFilter(ScrubFilter())


def secrets_of_connection_string(conn: str | None) -> None:
    """Register the account key (and any SAS) a storage connection string carries."""
    for part in (conn or "").split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() in ("accountkey", "sharedaccesssignature"):
            register_secret(value.strip())


def configure(json_lines: bool = False, level: int = logging.INFO) -> None:
    """Set up structlog for the CLI and flows: redacted, to stderr."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
