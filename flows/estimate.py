"""The Prefect flow ``estimate_job``: what a job will cost and how long it will take, nothing paid.

    list_inputs        which files the job's ``input`` names (task, shared with runs)
    count_prompts      every row, exact prompt tokens with each model's tokenizer (task, ``flows.estimate_counting``)
    sample_completions only with ``sample``: N rows sent for real, to calibrate completions (task,
                       ``flows.estimate_sampling``)

The figures (``workers.estimate``) go back to the caller as a dict, and onto the flow
run as a markdown artifact (key ``promptbatch-estimate``; drawn by ``flows.estimate_render``,
as is the terminal's table). Rows stream through: memory does not grow with the prompt
set. Without ``sample`` no request is sent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import structlog
from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from flows.batch import list_inputs, load_spec
from flows.estimate_counting import Counting, count_prompts
from flows.estimate_render import problem_lines, render_markdown, render_table, summary_rows
from flows.estimate_sampling import Sampled, sample_ceiling_usd, sample_completions
from flows.logs import guard_stdlib_logs
from flows.pipeline import JobError
from flows.schedule import RunDateError, run_date
from flows.storage import redact_location, storage_for
from schemas import JobSpec
from workers.estimate import Deployment, Fit, build_estimate, fit_completions

__all__ = [
    "ARTIFACT_KEY",
    "Counting",
    "Sampled",
    "count_prompts",
    "duplicate_saving",
    "estimate_job",
    "problem_lines",
    "render_markdown",
    "render_table",
    "sample_ceiling_usd",
    "sample_completions",
    "summary_rows",
]

log = structlog.get_logger(__name__)

ARTIFACT_KEY = "promptbatch-estimate"


@flow(name="promptbatch-estimate")
async def estimate_job(job: str | dict[str, Any], input: str | None = None, endpoint_url: str | None = None,
                       sample: int = 0, completion_ratio: float | None = None, seed: int = 0,
                       date: str | None = None, keep: bool = False) -> dict[str, Any]:
    """Estimate a job: exact prompt tokens, completion tokens and cost low/expected/high, duration.

    No request is sent unless ``sample`` > 0: then that many rows, drawn at random, are
    sent for real (and billed) to calibrate the completion figures. ``completion_ratio``
    (completion tokens per prompt token) gives the expected figure instead. ``date``: the
    day a dated ``input`` names (default: as for a run, ``flows.schedule``). ``keep``: leave the
    estimate in the job's output folder (``_estimate.json``), for the run's report to show
    beside the actuals; otherwise a dry run writes nothing there.
    """
    guard_stdlib_logs()
    if sample < 0:
        raise ValueError("sample must be 0 or more")
    day = await _day(date)
    spec = load_spec(job, input=input, endpoint_url=endpoint_url).on_date(day)
    files = list_inputs(spec)
    counting = count_prompts(spec, files, sample, seed, completion_ratio)
    fit, sample_report = None, None
    if sample and counting.sample:
        fit, sample_report = await _calibrate(spec, counting)
    report = _report(spec, files, counting, fit, completion_ratio, sample_report)
    await acreate_markdown_artifact(markdown=render_markdown(report), key=ARTIFACT_KEY,
                                   description="promptbatch estimate: tokens, cost and duration")
    if keep:
        await asyncio.to_thread(_leave_beside_output, spec, report)
    log.info("estimated", rows=counting.total_rows, prompt_tokens=report["tokens"]["prompt"],
             cost_expected_usd=report["cost_usd"]["expected"], cost_ceiling_usd=report["cost_usd"]["ceiling"])
    return report


async def _day(date: str | None) -> dt.date:
    """The day a dated ``input`` names, as for a run; a bad ``date`` is the job's error."""
    try:
        return await run_date(date)
    except RunDateError as exc:
        raise JobError(str(exc)) from None


async def _calibrate(spec: JobSpec, counting: Counting) -> tuple[Fit | None, dict[str, Any]]:
    """Send the sampled rows (paid; the most they can cost is logged first): the fit of their
    completion tokens, and what the sample did."""
    ceiling = sample_ceiling_usd(spec, counting.sample)
    log.warning("sampling", rows=len(counting.sample), paid=True, at_most_usd=round(ceiling, 6),
                endpoints=[e.url for e in spec.all_endpoints])
    sampled = await sample_completions(spec, counting.sample)
    fit = fit_completions(sampled.pairs) if sampled.pairs else None
    return fit, {
        "rows": len(counting.sample), "answered": len(sampled.pairs), "errors": len(sampled.errors),
        "first_errors": sampled.errors[:5], "cost_usd": round(sampled.cost_usd, 6),
        "prompt_tokens": sampled.prompt_tokens, "completion_tokens": sampled.completion_tokens,
        "fit": None if fit is None else {"completion_per_row": round(fit.per_row, 3),
                                         "completion_per_prompt_token": round(fit.per_prompt_token, 5)},
    }


def _deployments(spec: JobSpec) -> list[Deployment]:
    """Each endpoint's model, prices and quota, as the figures need them."""
    return [Deployment(spec.model_for(e).name, spec.price(e.model).input_per_mtok,
                       spec.price(e.model).output_per_mtok, e.tokens_per_minute, e.requests_per_minute)
            for e in spec.all_endpoints]


def _report(spec: JobSpec, files: list[str], counting: Counting, fit: Fit | None, completion_ratio: float | None,
            sample_report: dict[str, Any] | None) -> dict[str, Any]:
    """The estimate's figures, with what they were made of: the job, the sample, the counting pass."""
    basis = "sample" if fit is not None else ("ratio" if completion_ratio is not None else "none")
    deployments = _deployments(spec)
    report = build_estimate(counting.counts, deployments, total_rows=counting.total_rows,
                            bad_input=counting.bad_input, fit=fit, basis=basis)
    report["job"] = _job_facts(spec, files, counting, deployments)
    if completion_ratio is not None:
        report["tokens"]["completion"]["ratio"] = completion_ratio
    if spec.dedupes:
        report["duplicates"] = duplicate_saving(report, counting.duplicates)
    report["sample"] = sample_report
    report["counting"] = {"seconds": round(counting.seconds, 3), "rows_per_s": round(counting.rows_per_s)}
    if counting.empty_files:
        report["empty_inputs"] = counting.empty_files
    return report


def _job_facts(spec: JobSpec, files: list[str], counting: Counting, deployments: list[Deployment]) -> dict[str, Any]:
    """What the estimate was made for: the input, the job, its models and their prices."""
    return {
        "input": redact_location(spec.input), "files": len(files), "job_hash": spec.job_hash(),
        "models": list(counting.counts), "endpoints": len(spec.all_endpoints),
        "prices_per_mtok": {d.model: {"input": d.input_per_mtok, "output": d.output_per_mtok} for d in deployments},
        "prices_as_of": spec.prices_as_of(), "prices_overridden": sorted(spec.prices),
    }


def duplicate_saving(report: dict[str, Any], duplicates: int) -> dict[str, Any]:
    """What sending identical requests once saves: the copies, at the mean figures of a distinct request."""
    distinct = report["rows"]["to_send"]
    share = duplicates / distinct if distinct else 0.0
    cost = report["cost_usd"]
    return {"rows": duplicates, "distinct_requests": distinct,
            "prompt_tokens_saved": round(report["tokens"]["prompt"] * share),
            "saving_usd": {name: (None if cost[name] is None else round(cost[name] * share, 6))
                           for name in ("expected", "ceiling")}}


def _leave_beside_output(spec: JobSpec, report: dict[str, Any]) -> None:
    """Keep the estimate in the job's output folder (``_estimate.json``), for the run's report to
    show beside the actuals; a folder that cannot take it costs the estimate nothing."""
    from flows.report import ESTIMATE

    try:
        out = storage_for(spec.output)
        out.write_bytes(out.join(spec.output, ESTIMATE), json.dumps(report, indent=2).encode())
    except Exception as exc:
        log.warning("estimate_not_kept", output=redact_location(spec.output), error=repr(exc))
