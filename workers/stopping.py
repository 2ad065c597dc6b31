"""Why a run ended before every row was done."""

from __future__ import annotations

from enum import StrEnum


class StopReason(StrEnum):
    """A stop's cause, as the manifest records it (``stopped``) and the CLI's exit code tells it."""

    #: ``budget_usd`` would be exceeded by the next request.
    BUDGET = "budget"
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
