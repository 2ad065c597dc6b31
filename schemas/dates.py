"""Dated locations: ``input`` and ``output`` that name the run's date.

A scheduled job reads today's prompts and writes today's results, so its locations
carry placeholders, resolved once per run from the run's date:

- ``{date}`` — ``2026-11-23``;
- ``{date:FORMAT}`` — any ``strftime`` format, e.g. ``{date:%Y/%m/%d}`` → ``2026/11/23``;
- ``{{`` and ``}}`` — a literal brace.

Anything else in braces is an error that names it, found when the job file is read.
Only the day is known to a placeholder (a run's date, not its time), so a format
asking for hours or minutes is refused too: a re-run must resolve to the same folder.
"""

from __future__ import annotations

import re
from datetime import date

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
#: ``strftime`` directives that depend on more than the day.
_TIME_OF_DAY = set("HIMSpfzZXcrRTsEO")


def placeholders(template: str) -> list[str]:
    """The placeholders in a location (``date``, ``date:%Y/%m``); ``ValueError`` naming a bad one."""
    found = []
    for match in _FIELD.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        field = match.group(1)
        if field is None:
            raise ValueError(f"unmatched `{token}` (write `{token * 2}` for a literal brace)")
        name, _, fmt = field.partition(":")
        if name != "date":
            raise ValueError(f"unknown placeholder `{{{field}}}` (the only one is `{{date}}` or `{{date:FORMAT}}`)")
        if fmt:
            directives = set(re.findall(r"%-?(.)", fmt))
            bad = sorted(directives & _TIME_OF_DAY)
            if bad:
                raise ValueError(f"placeholder `{{{field}}}`: `%{bad[0]}` is not part of a date")
        found.append(field)
    return found


def resolve(template: str, day: date) -> str:
    """The location with its placeholders filled in from ``day``."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        _, _, fmt = match.group(1).partition(":")
        return day.strftime(fmt) if fmt else day.isoformat()

    placeholders(template)  # raises on anything unknown
    return _FIELD.sub(fill, template)


def pointer_folder(template: str) -> str | None:
    """Where ``latest.json`` goes for a dated output: the folder above its first dated segment.

    ``az://completions/news/{date}/`` → ``az://completions/news``; ``None`` when the
    output names no date (there is only one folder: nothing to point at).
    """
    if not placeholders(template):
        return None
    head = template[: _first_field(template)].replace("{{", "{").replace("}}", "}")
    return head.rsplit("/", 1)[0] if "/" in head else "."


def _first_field(template: str) -> int:
    for match in _FIELD.finditer(template):
        if match.group(0) not in ("{{", "}}"):
            return match.start()
    return len(template)
