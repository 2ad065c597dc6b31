"""Logging: one stream of events, redacted, shown where users look.

Every promptbatch event is a structlog call. The chain merges context, stamps it,
scrubs secrets from every value (``redact``), renders it as one line
(``job_started inputs=1 output=/data/out …``) and hands it to the standard ``logging``
machinery (``forward``):

- inside a Prefect flow or task run, to the run's logger, so the event is in the
  run's logs (the UI's Logs tab, ``prefect flow-run logs``) with its fields readable;
- outside one, to the ``promptbatch`` logger.

Either way it reaches the console through the root logger's handler. The CLI owns
that handler (``adopt_console``): Prefect's own records and promptbatch's events come
out in one concise format (``--log-format text``) or as JSON lines (``json``), warnings
standing out. A flow run started by a Prefect worker keeps Prefect's console format.

Keys, SAS tokens and connection-string account keys are registered as soon as they are
loaded, in the process's one registry of secrets (``workers.redact.REDACTOR``); ``scrub``
masks them (and any SAS signature, account key or echoed credential) in every event,
before it is rendered, and ``ScrubFilter`` in every ``logging`` record (Prefect's own).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from workers.redact import REDACTOR

FORMATS = ("text", "json")
#: Events the console leaves out while a progress bar shows the same figures (the run's logs keep them).
quiet_on_console: set[str] = set()
#: Failures the CLI explains in one line of its own: the console shows no traceback for them (the run's logs
#: in Prefect keep it).
explained_failures: list[type[BaseException]] = []
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "exception": logging.ERROR}
_console: dict[str, Any] = {"format": None}


def register_secret(value: str | None) -> None:
    """Never show ``value`` in a log line from now on."""
    REDACTOR.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret, SAS signature and echoed credential masked."""
    return REDACTOR.scrub(text)


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list | tuple):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: scrub every string of the event, inside lists and mappings too."""
    return {k: _scrubbed(v) for k, v in event.items()}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() or c in "=\"" for c in value) else json.dumps(value,
                                                                                                    ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bool | int) or value is None:
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def render(event: Mapping[str, Any]) -> str:
    """One event as one line: its name, then ``key=value`` for every field that is set."""
    fields = " ".join(f"{k}={_value(v)}" for k, v in event.items()
                      if k not in ("event", "level", "timestamp", "exception") and v is not None)
    line = f"{event.get('event', '')} {fields}".rstrip()
    if event.get("exception"):
        line += "\n" + str(event["exception"])
    return line


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger] | None:
    """The current Prefect flow or task run's logger; ``None`` outside one (or before Prefect is loaded)."""
    if "prefect.context" not in sys.modules:
        return None
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return None
    return get_run_logger()


def forward(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog's last processor: the event, rendered, to the run's logger or ``promptbatch``'s."""
    level = _LEVELS.get(str(event.get("level", method)), logging.INFO)
    target = _run_logger() or logging.getLogger("promptbatch")
    target.log(level, render(event), extra={"promptbatch": dict(event)})
    raise structlog.DropEvent


class ConsoleFormatter(logging.Formatter):
    """One line per record: ``HH:MM:SS level message`` (warnings upper-case, in colour on a terminal),
    or a JSON object per line; promptbatch's events keep their fields as JSON keys."""

    def __init__(self, fmt: str = "text", color: bool = False):
        super().__init__()
        self.fmt = fmt
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "promptbatch", None)
        message = record.getMessage()
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if self.fmt == "json":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
            if event is not None:
                body = {"timestamp": event.get("timestamp", stamp), "level": record.levelname.lower(),
                        **{k: v for k, v in event.items() if k not in ("timestamp", "level")}}
            else:
                body = {"timestamp": stamp, "level": record.levelname.lower(), "event": message,
                        "logger": record.name, **({"run": run} if run else {})}
                if record.exc_text and not self._explained(record):
                    body["exception"] = record.exc_text
            return json.dumps(body, ensure_ascii=False, default=str)
        level = record.levelname.lower() if record.levelno < logging.WARNING else record.levelname
        if self.color and record.levelno >= logging.WARNING:
            level = ("\x1b[1;31m" if record.levelno >= logging.ERROR else "\x1b[1;33m") + f"{level:<7}" + "\x1b[0m"
        else:
            level = f"{level:<7}"
        if event is None and run:
            message = f"{run}: {message}"
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {level} {message}"
        if record.exc_text and event is None and not self._explained(record):
            line += "\n" + record.exc_text
        return line

    @staticmethod
    def _explained(record: logging.LogRecord) -> bool:
        failure = record.exc_info[1] if record.exc_info else None
        return failure is not None and isinstance(failure, tuple(explained_failures))


class ConsoleHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when the record comes (a progress bar may have wrapped it)."""

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "promptbatch", None)
        if event is not None and event.get("event") in quiet_on_console:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


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


def adopt_console() -> None:
    """Put the console handler ``configure`` chose in place of Prefect's on the root logger.

    Called once Prefect is loaded (its logging set-up replaces the root's handlers) and at
    every flow's start; does nothing in a process whose logging ``configure`` did not set up.
    """
    fmt = _console["format"]
    if fmt is None:
        return
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, ConsoleHandler)]
    for handler in list(root.handlers):
        if type(handler).__name__ == "PrefectConsoleHandler":
            root.removeHandler(handler)
    if not ours:
        ours = [ConsoleHandler()]
        ours[0].addFilter(ScrubFilter())
        root.addHandler(ours[0])
    ours[0].setFormatter(ConsoleFormatter(fmt, color=fmt == "text" and sys.stderr.isatty()))


def guard_stdlib_logs() -> None:
    """At a flow's start: events routed to the run's logs, every ``logging`` handler scrubbed.

    Scrubs every record that reaches a handler of the root or of Prefect's loggers
    (Prefect's console and API handlers).
    """
    if not structlog.is_configured():
        configure(console=False)
    adopt_console()
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


def configure(json_lines: bool = False, level: int = logging.INFO, *, log_format: str | None = None,
              console: bool = True) -> None:
    """Set up the event stream (see the module docstring).

    ``console``: this process owns the console (the CLI, the benchmarks); ``log_format``
    ``text`` or ``json`` (``json_lines`` is the older spelling of ``json``).
    """
    fmt = log_format or ("json" if json_lines else "text")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            forward,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("promptbatch").setLevel(level)
    if console:
        _console["format"] = fmt
        adopt_console()
