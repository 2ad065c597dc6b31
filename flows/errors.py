"""The two ways a job ends early: it cannot run as configured, or it was stopped part way."""

from __future__ import annotations

from typing import Any

from workers.stopping import StopReason


class JobError(RuntimeError):
    """The job cannot run as configured; the message says what to change."""


class JobStoppedError(RuntimeError):
    """The run stopped before every row was done (``reason``: the budget, or a signal).

    What finished is published and the manifest written; running the job again resumes.
    ``summary`` holds the manifest's totals.
    """

    def __init__(self, reason: StopReason, summary: dict[str, Any]):
        self.reason = StopReason(reason)
        self.summary = summary
        rows = summary["rows"]["total"]
        total = summary.get("input_rows")
        of = f" of {total}" if total is not None else ""
        if self.reason is StopReason.BUDGET:
            what = (f"budget_usd reached: ${summary['cost_usd']['total']:.4f} spent, {rows}{of} rows done; "
                    "raise budget_usd and run the job again to finish the rest")
        else:
            what = f"stopped by {reason} with {rows}{of} rows done; run the same command again to resume"
        super().__init__(what)
