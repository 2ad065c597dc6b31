"""How a run shows its progress: a bar in the terminal, artifacts on the Prefect flow run.

- ``TerminalBar``: rows done of the total (when known), tokens/min admitted against the
  quota, cost so far and the time left; the CLI shows it on a terminal (``--progress``
  forces it, ``--no-progress`` hides it).
- ``ArtifactProgress``: a progress artifact on the flow run, updated every
  ``ARTIFACT_EVERY_S`` seconds, its description the same line as the bar's.
- ``summary_markdown``: the markdown table left on the flow run at the end — outcome
  counts, tokens, and the cost tally by model.

``listeners`` is where the CLI registers its bar before the flow starts; the flow adds
its artifact and hands both to the pipeline.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from flows.snapshot import Listener, Snapshot
from schemas import STATUSES

#: Listeners of the runs this process starts (the CLI's progress bar).
listeners: list[Listener] = []
ARTIFACT_EVERY_S = 10.0
PROGRESS_KEY = "promptbatch-progress"
SUMMARY_KEY = "promptbatch-summary"


def eta_s(snapshot: Snapshot, rows_before: int = 0) -> float | None:
    """Seconds left at the pace of this run so far (rows already done before it excluded)."""
    if snapshot.rows_total is None or snapshot.elapsed_s <= 0:
        return None
    done_now = snapshot.rows_done - rows_before
    if done_now <= 0:
        return None
    return max(0.0, (snapshot.rows_total - snapshot.rows_done) * snapshot.elapsed_s / done_now)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def describe(snapshot: Snapshot, rows_before: int = 0) -> str:
    """One line: rows, tokens/min against the quota, cost so far, time left."""
    total = f" of {snapshot.rows_total:,}" if snapshot.rows_total is not None else ""
    share = (f" ({snapshot.tokens_per_minute / snapshot.quota_tokens_per_minute:.0%} of quota)"
             if snapshot.quota_tokens_per_minute else "")
    if snapshot.learned_tokens_per_minute is not None:
        share += (f" · deployment admits ≈ {snapshot.learned_tokens_per_minute:,}/min, "
                  f"job says {snapshot.quota_tokens_per_minute:,}")
    return (f"{snapshot.rows_done:,}{total} rows · {snapshot.tokens_per_minute:,.0f} tokens/min{share} · "
            f"${snapshot.cost_usd:,.4f} · ETA {_clock(eta_s(snapshot, rows_before))}")


class ArtifactProgress:
    """A progress artifact on the current flow run, kept up to date."""

    def __init__(self, key: str = PROGRESS_KEY, rows_before: int = 0):
        self.key = key
        self.rows_before = rows_before
        self.artifact_id: UUID | None = None
        self._last = 0.0

    async def __call__(self, snapshot: Snapshot) -> None:
        from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

        now = time.monotonic()
        final = snapshot.rows_total is not None and snapshot.rows_done >= snapshot.rows_total
        if self.artifact_id is not None and now - self._last < ARTIFACT_EVERY_S and not final:
            return
        self._last = now
        percent = 100 * (snapshot.fraction or 0.0)
        line = describe(snapshot, self.rows_before)
        if self.artifact_id is None:
            self.artifact_id = await acreate_progress_artifact(percent, key=self.key, description=line)
        else:
            await aupdate_progress_artifact(self.artifact_id, percent, description=line)


class TerminalBar:
    """A rich progress bar on stderr; use as a context manager, register ``update`` as a listener."""

    def __init__(self, rows_before: int = 0):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.rows_before = rows_before
        console = Console(stderr=True)
        if not console.is_terminal:
            console.width = 160
        self._progress = Progress(TextColumn("[bold]promptbatch"), BarColumn(), TaskProgressColumn(),
                                  TextColumn("{task.description}"), console=console,
                                  transient=False, refresh_per_second=4)
        self._task = self._progress.add_task("starting", total=None)

    def __enter__(self) -> TerminalBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    async def update(self, snapshot: Snapshot) -> None:
        self._progress.update(self._task, completed=snapshot.rows_done, total=snapshot.rows_total,
                              description=describe(snapshot, self.rows_before))


def summary_markdown(manifest: dict[str, Any], report: tuple[str, str] | None = None) -> str:
    """The end-of-run artifact: outcome counts, tokens and the cost tally by model; ``report``:
    where the run's report is and its compact text (``flows.report``)."""
    rows, tokens, cost = manifest["rows"], manifest["tokens"], manifest["cost_usd"]
    lines = [
        f"# promptbatch run — {manifest['status']}", "",
        "| outcome | rows |", "|---|---:|",
        *(f"| {status} | {rows[status]:,} |" for status in STATUSES if status in rows),
        f"| **total** | **{rows['total']:,}** |", "",
        "| model | cost (USD) |", "|---|---:|",
        *(f"| {model} | {usd:,.6f} |" for model, usd in cost["by_model"].items()),
        f"| **total** | **{cost['total']:,.6f}** |", "",
        *(["Labels: " + "; ".join(f"{column} " + ", ".join(f"{v} {n:,}" for v, n in values.items())
                                   for column, values in manifest["labels"].items()), ""]
          if manifest.get("labels") else []),
        f"Tokens: {tokens['prompt']:,} prompt + {tokens['completion']:,} completion. "
        f"Prices as of {manifest['prices_as_of']}. Wall time {manifest['wall_time_s']:,.1f} s.",
    ]
    for url, found in (manifest.get("quota_learned") or {}).items():
        lines += ["", f"**Quota**: {url} admits ≈ {found['tokens_per_minute']:,} tokens/min and "
                  f"{found['requests_per_minute']:,} requests/min; the job says "
                  f"{found['job_says']['tokens_per_minute']:,} and {found['job_says']['requests_per_minute']:,}."]
    if manifest.get("bad_input"):
        lines += ["", f"Bad input: {manifest['bad_input']['rows']:,} rows (status `error`), first:"]
        lines += [f"- {line}" for line in manifest["bad_input"]["first"][:5]]
    if report is not None:
        where, text = report
        link = where if "://" in where else f"file://{where}"
        lines += ["", f"**Report**: [{where}]({link}) (charts of throughput against the quota, 429s, outcomes, "
                  "latency and cost)", "", "```", text, "```"]
    if manifest.get("workers"):
        lines += ["", "| worker | shards |", "|---|---|"]
        lines += [f"| {name} | {', '.join(map(str, shards))} |" for name, shards in manifest["workers"].items()]
    return "\n".join(lines) + "\n"
