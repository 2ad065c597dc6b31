"""Scheduled runs: the run's date, and the pointer to the newest complete output.

The date a run's placeholders (``schemas.dates``) resolve to is, in order:

1. the run's ``date`` parameter (``--date YYYY-MM-DD`` on the CLI): backfill or redo a day;
2. in a flow run of a deployment, its *scheduled* start in the timezone of the
   deployment's schedule (a run scheduled for 01:00 Europe/Rome on the 24th is the
   24th's, although it is still the 23rd in UTC; a Prefect retry or a late start
   keeps the day it was scheduled for);
3. otherwise today, on this machine's clock.

After a dated output is complete, ``latest.json`` beside the dated folders names it
(folder, date, rows, cost). It is written in one atomic put and only after the manifest
says ``complete``; a backfill of an older day never moves it back.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from flows.storage import Storage, read_json_object, redact_location, storage_for
from schemas import pointer_folder

log = structlog.get_logger(__name__)

POINTER = "latest.json"


class RunDateError(ValueError):
    """A ``date`` that is not ``YYYY-MM-DD``."""


def parse_date(value: str) -> date:
    """``YYYY-MM-DD`` → a date; ``RunDateError`` naming the value otherwise."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RunDateError(f"--date {value!r}: expected YYYY-MM-DD") from None


async def run_date(given: str | None) -> date:
    """The date this run's placeholders resolve to (see the module docstring)."""
    if given:
        return parse_date(given)
    from prefect.runtime import deployment, flow_run

    scheduled = flow_run.scheduled_start_time
    if deployment.id and isinstance(scheduled, datetime):
        zone = await _schedule_zone(str(deployment.id))
        return scheduled.astimezone(zone).date()
    return date.today()


async def _schedule_zone(deployment_id: str) -> ZoneInfo:
    """The timezone of the deployment's first schedule that has one; UTC otherwise."""
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            found = await client.read_deployment(deployment_id)
    except Exception as exc:  # the date still resolves, in UTC; say so
        log.warning("schedule_timezone_unknown", error=repr(exc), using="UTC")
        return ZoneInfo("UTC")
    for entry in found.schedules or []:
        zone = getattr(entry.schedule, "timezone", None)
        if zone:
            return ZoneInfo(zone)
    return ZoneInfo("UTC")


def publish_pointer(output_template: str, output: str, day: date, manifest: dict[str, Any]) -> str | None:
    """Point ``latest.json`` at a complete dated output; its location, or ``None`` when not moved."""
    folder = pointer_folder(output_template)
    if folder is None:
        return None
    store = storage_for(folder if "://" in folder else output)
    location = store.join(folder, POINTER)
    current = read_pointer(store, location)
    if current is not None and str(current.get("date", "")) > day.isoformat():
        log.info("latest_pointer_kept", pointer=redact_location(location), newer=current.get("date"))
        return None
    pointer = {
        "output": redact_location(output),
        "date": day.isoformat(),
        "rows": manifest["rows"],
        "cost_usd": manifest["cost_usd"]["total"],
        "job_hash": manifest["job_hash"],
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_bytes(location, json.dumps(pointer, indent=2).encode())
    log.info("latest_pointer_published", pointer=redact_location(location), date=day.isoformat())
    return location


def read_pointer(store: Storage, location: str) -> dict[str, Any] | None:
    """The pointer's content; ``None`` when absent or unreadable (it is rewritten then)."""
    return read_json_object(store, location)
