"""The numbers behind the run's report: every series it draws, from the run's metrics.

``plotted`` is pure: it reads a ``flows.metrics.Recorder`` (one bucket per start,
deployment and model) and returns plain lists and dicts, which the page
(``flows.report``) draws and embeds as JSON for anyone who wants the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.metrics import LATENCY_BINS, LATENCY_EDGES_MS, Bucket, Recorder, percentile
from schemas import STATUSES


def plotted(recorder: Recorder) -> dict[str, Any]:
    """Every series the report draws, as plain lists, and the totals they add up to."""
    width = recorder.width
    starts = sorted({k[0] for k in recorder.buckets})
    sums = _sums(recorder, starts)
    return {
        "width_s": width, "starts": starts, "deployments": _deployments(recorder),
        "rows_per_min": {s: [n * 60 / width for n in sums.rows[s]] for s in STATUSES}, "rows": sums.rows,
        "latency": {"edges_ms": list(LATENCY_EDGES_MS), "hist": sums.total.latency,
                    **{f"p{q}": [percentile(h, q / 100) for h in sums.hist_at] for q in (50, 90, 99)}},
        "cost": {"cumulative": _cumulative(sums.cost_at),
                 "by_model": {m: round(c, 6) for m, c in sorted(sums.by_model.items())}},
        "totals": _totals(sums.total),
    }


@dataclass
class _Sums:
    """Every series' buckets added up: per start (rows by status, latency, cost), per model, in all."""

    rows: dict[str, list[int]]
    hist_at: list[list[int]]
    cost_at: list[float]
    by_model: dict[str, float] = field(default_factory=dict)
    total: Bucket = field(default_factory=Bucket)


def _sums(recorder: Recorder, starts: list[float]) -> _Sums:
    at = {s: i for i, s in enumerate(starts)}
    sums = _Sums(rows={s: [0] * len(starts) for s in STATUSES}, hist_at=[[0] * LATENCY_BINS for _ in starts],
                 cost_at=[0.0] * len(starts))
    for (start, _url, model), b in sorted(recorder.buckets.items()):
        i = at[start]
        for status in STATUSES:
            sums.rows[status][i] += b.by_status.get(status, 0)
        sums.hist_at[i] = [x + y for x, y in zip(sums.hist_at[i], b.latency, strict=True)]
        sums.cost_at[i] += b.cost_usd
        if model:
            sums.by_model[model] = sums.by_model.get(model, 0.0) + b.cost_usd
        sums.total.merge(b)
    return sums


def _deployments(recorder: Recorder) -> dict[str, dict[str, Any]]:
    """Each deployment's series over time, and how much of its quota it used."""
    deployments: dict[str, dict[str, Any]] = {}
    for (start, url, model), b in sorted(recorder.buckets.items()):
        if not url:
            continue
        d = deployments.setdefault(url, {"model": model, "t": [], "tokens_per_min": [], "requests_per_min": [],
                                         "quota_tpm": [], "learned_tpm": [], "quota_rpm": [], "learned_rpm": [],
                                         "responses_429": [], "pauses": []})
        d["t"].append(start)
        d["tokens_per_min"].append(b.tokens_charged * 60 / recorder.width)
        d["requests_per_min"].append(b.requests * 60 / recorder.width)
        d["quota_tpm"].append(b.quota_tpm)
        d["learned_tpm"].append(b.learned_tpm)
        d["quota_rpm"].append(b.quota_rpm)
        d["learned_rpm"].append(b.learned_rpm)
        d["responses_429"].append(b.responses_429)
        d["pauses"].append(b.pauses)
    for d in deployments.values():
        _add_utilization(d)
    return deployments


def _add_utilization(d: dict[str, Any]) -> None:
    """A deployment's mean charge per minute over its stated quota, and over its learned one."""
    # The first and last buckets are partly idle (the run starts and ends inside them): left out
    # of the utilization when there are full buckets between them.
    full = range(1, len(d["t"]) - 1)  # a run of two buckets or less is too short to tell
    for kind, quota_key in (("tokens", "quota_tpm"), ("requests", "quota_rpm")):
        quota = next((q for q in reversed(d[quota_key]) if q), None)
        used = sum(d[f"{kind}_per_min"][i] for i in full) / len(full) if full else 0.0
        d[f"{kind}_utilization"] = used / quota if quota and full else None
        found = next((q for q in reversed(d[quota_key.replace("quota", "learned")]) if q), None)
        d[f"{kind}_of_learned"] = used / found if found and found != quota and full else None


def _cumulative(cost_at: list[float]) -> list[float]:
    cumulative, running = [], 0.0
    for c in cost_at:
        running += c
        cumulative.append(round(running, 6))
    return cumulative


def _totals(total: Bucket) -> dict[str, Any]:
    """The run's totals, as the manifest counts them: `invalid` (a labeling job's) only when there are some."""
    return {"rows": {"total": total.rows, **{s: n for s in STATUSES
                                            if (n := total.by_status.get(s, 0)) or s != "invalid"}},
            "prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "cost_usd": round(total.cost_usd, 6), "requests_charged": total.requests,
            "tokens_charged": total.tokens_charged, "responses_429": total.responses_429,
            "pauses": total.pauses, "retries": max(0, total.attempts - total.rows),
            **{f"latency_p{q}_ms": percentile(total.latency, q / 100) for q in (50, 90, 99)}}
