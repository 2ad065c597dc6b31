"""The Prefect flow ``estimate_job``: what a job will cost and how long it will take, nothing paid.

    list_inputs        which files the job's ``input`` names (task, shared with runs)
    count_prompts      every row, exact prompt tokens with each model's tokenizer (task)
    sample_completions only with ``sample``: N rows sent for real, to calibrate completions (task)

The figures (``workers.estimate``) go back to the caller as a dict, and onto the flow
run as a markdown artifact (key ``promptbatch-estimate``). Rows stream through: memory
does not grow with the prompt set. Without ``sample`` no request is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.batch import list_inputs, load_spec
from flows.inputs import Reading, iter_items
from flows.logs import guard_stdlib_logs
from flows.pipeline import JobError, api_key, lane_for
from flows.schedule import RunDateError, run_date
from flows.storage import redact_location, storage_for
from schemas import BadRowError, JobSpec, ModelInfo, PromptRow
from workers import Engine, Outcome, RetryPolicy, TokenCounter, TokenizeError
from workers.counting import CountingPool
from workers.estimate import Counts, Deployment, Listed, Reservoir, build_estimate, fit_completions

log = structlog.get_logger(__name__)

ARTIFACT_KEY = "promptbatch-estimate"


@dataclass
class Counting:
    """What one pass over the prompt set found."""

    counts: dict[str, Counts]
    bad_input: Listed
    total_rows: int
    sample: list[PromptRow]
    seconds: float
    empty_files: list[str] = field(default_factory=list)
    #: Rows whose request is identical to an earlier row's: not sent when the job dedupes (not counted above).
    duplicates: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0


def _models(spec: JobSpec) -> list[ModelInfo]:
    """The job's distinct models, as the job resolves them, in endpoint order."""
    models: dict[str, ModelInfo] = {}
    for endpoint in spec.all_endpoints:
        model = spec.model_for(endpoint)
        models.setdefault(model.name, model)
    return list(models.values())


@task(name="count-prompts", cache_policy=NO_CACHE)
def count_prompts(spec: JobSpec, files: list[str], sample: int = 0, seed: int = 0,
                  completion_ratio: float | None = None, progress_every_s: float = 10.0,
                  processes: int | None = None) -> Counting:
    """Count every row's prompt tokens exactly, with the tokenizer of each of the job's models.

    Batches are counted here and by ``processes`` worker processes (default: one per
    core but one; see ``workers.counting``), so every core counts. Also
    keeps a uniform sample of ``sample`` rows that will be sent (they fit the first
    model's context and template), for ``sample_completions``.
    """
    models = _models(spec)
    counts = {m.name: Counts(m.name, m.context_tokens, completion_ratio, exact=m.exact) for m in models}
    bad_input = Listed()
    reservoir: Reservoir[PromptRow] = Reservoir(sample, seed)
    reading = Reading()
    started = last = time.monotonic()

    # 64 bits of each request digest seen: for a job that dedupes, a copy is neither counted nor sent.
    seen: set[int] | None = set() if spec.dedupes else None
    duplicates = 0

    def built() -> Iterator[tuple[list[PromptRow], list[tuple[dict[str, str], ...]]]]:
        nonlocal duplicates
        for batch in iter_items(spec, storage_for(spec.input), files, batch=2048, reading=reading):
            rows: list[PromptRow] = []
            for item in batch:
                if isinstance(item, BadRowError):
                    bad_input.add(str(item))
                elif isinstance(item, PromptRow):
                    if seen is not None:
                        key = int(item.digest[:16], 16)
                        if key in seen:
                            duplicates += 1
                            continue
                        seen.add(key)
                    rows.append(item)
            yield rows, [row.messages for row in rows]

    with CountingPool(models, processes) as pool:
        for rows, results in pool.map(built()):
            sendable = [True] * len(rows)
            for first, model in enumerate(models):
                tally = counts[model.name]
                for i, (row, result) in enumerate(zip(rows, results[model.name], strict=True)):
                    if isinstance(result, TokenizeError):
                        tally.refuse(row.where, str(result))
                        fits = False
                    else:
                        fits = tally.add(row.where, result, row.params.max_tokens)
                    if first == 0:
                        sendable[i] = fits
            if sample:
                for row, fits in zip(rows, sendable, strict=True):
                    if fits:
                        reservoir.offer(row)
            now = time.monotonic()
            if now - last >= progress_every_s and rows:
                last = now
                done = rows[-1].seq + 1
                log.info("counting", rows=done, rows_per_s=round(done / (now - started)))
    seconds = time.monotonic() - started
    total = reading.rows or 0
    log.info("counted", rows=total, seconds=round(seconds, 2), rows_per_s=round(total / seconds) if seconds else None)
    return Counting(counts, bad_input, total, reservoir.items, seconds, reading.empty_files, duplicates)


@dataclass
class Sampled:
    """The sampled rows' real outcomes."""

    pairs: list[tuple[int, int]]
    errors: list[str]
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


@task(name="sample-completions", cache_policy=NO_CACHE)
async def sample_completions(spec: JobSpec, rows: list[PromptRow]) -> Sampled:
    """Send ``rows`` for real (paid) through the job's deployments and collect their usage."""
    keys = [await api_key(e) for e in spec.all_endpoints]
    lanes = [lane_for(e, key, spec.price(e.model), model=spec.model_for(e), response=spec.response)
             for e, key in zip(spec.all_endpoints, keys, strict=True)]
    engine = Engine(lanes, RetryPolicy(max_attempts=spec.max_attempts), grace_s=spec.stop_grace_s)
    outcomes: list[Outcome] = []

    async def items() -> AsyncIterator[PromptRow]:
        for row in rows:
            yield row

    async def sink(outcome: Outcome) -> None:
        outcomes.append(outcome)

    try:
        await engine.run(items(), sink)
    finally:
        for lane in lanes:
            await lane.client.aclose()
    answered = [o for o in outcomes if o.status != "error"]
    cost = sum(spec.price(o.model).cost(o.prompt_tokens, o.completion_tokens) for o in outcomes if o.model)
    return Sampled(
        pairs=[(o.prompt_tokens, o.completion_tokens) for o in answered],
        errors=[o.error or "error" for o in outcomes if o.status == "error"],
        cost_usd=cost,
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
    )


def sample_ceiling_usd(spec: JobSpec, rows: list[PromptRow]) -> float:
    """The most the sampled rows can cost: each at its prompt plus max_tokens, at the priciest model."""
    worst = max((spec.price(e.model) for e in spec.all_endpoints), key=lambda p: p.input_per_mtok + p.output_per_mtok)
    counter = TokenCounter(spec.model_for(spec.all_endpoints[0]))
    prompts = counter.count_many([row.messages for row in rows])
    return sum(worst.cost(p if isinstance(p, int) else 0, row.params.max_tokens)
               for row, p in zip(rows, prompts, strict=True))


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
    try:
        day = await run_date(date)
    except RunDateError as exc:
        raise JobError(str(exc)) from None
    spec = load_spec(job, input=input, endpoint_url=endpoint_url).on_date(day)
    files = list_inputs(spec)
    counting = count_prompts(spec, files, sample, seed, completion_ratio)
    fit = None
    sample_report: dict[str, Any] | None = None
    if sample and counting.sample:
        ceiling = sample_ceiling_usd(spec, counting.sample)
        log.warning("sampling", rows=len(counting.sample), paid=True, at_most_usd=round(ceiling, 6),
                    endpoints=[e.url for e in spec.all_endpoints])
        sampled = await sample_completions(spec, counting.sample)
        if sampled.pairs:
            fit = fit_completions(sampled.pairs)
        sample_report = {
            "rows": len(counting.sample), "answered": len(sampled.pairs), "errors": len(sampled.errors),
            "first_errors": sampled.errors[:5], "cost_usd": round(sampled.cost_usd, 6),
            "prompt_tokens": sampled.prompt_tokens, "completion_tokens": sampled.completion_tokens,
            "fit": None if fit is None else {"completion_per_row": round(fit.per_row, 3),
                                             "completion_per_prompt_token": round(fit.per_prompt_token, 5)},
        }
    basis = "sample" if fit is not None else ("ratio" if completion_ratio is not None else "none")
    deployments = [Deployment(spec.model_for(e).name, spec.price(e.model).input_per_mtok,
                              spec.price(e.model).output_per_mtok, e.tokens_per_minute, e.requests_per_minute)
                   for e in spec.all_endpoints]
    report = build_estimate(counting.counts, deployments, total_rows=counting.total_rows,
                            bad_input=counting.bad_input, fit=fit, basis=basis)
    report["job"] = {
        "input": redact_location(spec.input), "files": len(files), "job_hash": spec.job_hash(),
        "models": list(counting.counts), "endpoints": len(spec.all_endpoints),
        "prices_per_mtok": {d.model: {"input": d.input_per_mtok, "output": d.output_per_mtok} for d in deployments},
        "prices_as_of": spec.prices_as_of(), "prices_overridden": sorted(spec.prices),
    }
    if completion_ratio is not None:
        report["tokens"]["completion"]["ratio"] = completion_ratio
    if spec.dedupes:
        report["duplicates"] = duplicate_saving(report, counting.duplicates)
    report["sample"] = sample_report
    report["counting"] = {"seconds": round(counting.seconds, 3), "rows_per_s": round(counting.rows_per_s)}
    if counting.empty_files:
        report["empty_inputs"] = counting.empty_files
    await acreate_markdown_artifact(markdown=render_markdown(report), key=ARTIFACT_KEY,
                                   description="promptbatch estimate: tokens, cost and duration")
    if keep:
        await asyncio.to_thread(_leave_beside_output, spec, report)
    log.info("estimated", rows=counting.total_rows, prompt_tokens=report["tokens"]["prompt"],
             cost_expected_usd=report["cost_usd"]["expected"], cost_ceiling_usd=report["cost_usd"]["ceiling"])
    return report


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


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def _tokens(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The estimate as (figure, value) lines, shared by the terminal table and the artifact."""
    rows, tokens, cost, duration = report["rows"], report["tokens"], report["cost_usd"], report["duration_s"]
    completion = tokens["completion"]
    basis = {"sample": f"fitted on {report['sample']['answered']} sampled rows, 95% interval" if report.get("sample")
             else "sample", "ratio": f"{completion.get('ratio')} × prompt tokens, capped at max_tokens",
             "none": "no basis given: --sample N or --completion-ratio R"}[completion["basis"]]
    lines = [
        ("rows", f"{rows['total']:,} ({rows['to_send']:,} to send, {rows['bad_input']:,} bad input, "
                 f"{rows['over_context']:,} over the context, "
                 f"{rows['refused_by_template']:,} refused by the template)"),
        (("prompt tokens (exact)", _tokens(tokens["prompt"])) if tokens.get("prompt_exact", True) else
         ("prompt tokens (approximate)", f"{_tokens(tokens['prompt'])} ({_tokens(tokens['prompt_low'])} – "
                                         f"{_tokens(tokens['prompt_high'])}: "
                                         f"{', '.join(tokens['approximate_models'])} counted with a tokenizer "
                                         "not its own)")),
        ("completion tokens expected", f"{_tokens(completion['expected'])} ({basis})"),
        ("completion tokens low – high", f"{_tokens(completion['low'])} – {_tokens(completion['high'])}"),
        ("completion tokens ceiling", f"{_tokens(completion['ceiling'])} (every row writes max_tokens)"),
        ("cost expected", _usd(cost["expected"])),
        ("cost low – high", f"{_usd(cost['low'])} – {_usd(cost['high'])}"),
        ("cost ceiling", f"{_usd(cost['ceiling'])} (prompts alone {_usd(cost['prompt'])})"),
        ("duration at quota", f"{_duration(duration['at_quota'])} (bound by {duration['binding']}/min: "
                              f"{duration['tokens_per_minute']:,} tokens/min, {duration['requests_per_minute']:,} "
                              f"requests/min; quota charged {duration['quota_tokens']:,} tokens)"),
        ("prices", ", ".join(f"{m} ${p['input']:g}/${p['output']:g} per M tokens"
                             for m, p in report["job"]["prices_per_mtok"].items())
         + (" (the job's own" if report["job"]["prices_as_of"] == "job" else f" (as of {report['job']['prices_as_of']}")
         + (f"; job overrides {', '.join(report['job']['prices_overridden'])})" if report["job"]["prices_overridden"]
            else ")")),
        ("counted", f"{report['counting']['rows_per_s']:,} rows/s ({report['counting']['seconds']:.1f} s)"),
    ]
    if report.get("duplicates", {}).get("rows"):
        d = report["duplicates"]
        lines.insert(1, ("duplicates (sent once)", f"{d['rows']:,} rows repeat an earlier request: "
                                                   f"{d['distinct_requests']:,} distinct requests sent, saving "
                                                   f"{_tokens(d['prompt_tokens_saved'])} prompt tokens, "
                                                   f"{_usd(d['saving_usd']['expected'])} expected, "
                                                   f"{_usd(d['saving_usd']['ceiling'])} at the ceiling"))
    if report.get("sample"):
        s = report["sample"]
        lines.append(("sample (paid)", f"{s['rows']} rows sent, {s['answered']} answered, {s['errors']} errors, "
                                       f"{_usd(s['cost_usd'])}"))
    return lines


def problem_lines(report: dict[str, Any]) -> list[tuple[str, list[str], int]]:
    """(heading, first rows named, count) for each kind of row that will not be sent."""
    kinds = [("bad input", "bad_input"), ("over the context", "over_context"),
             ("refused by the template", "refused_by_template")]
    return [(title, report[key]["first"], report[key]["rows"]) for title, key in kinds if report[key]["rows"]]


def render_markdown(report: dict[str, Any]) -> str:
    """The estimate as a markdown artifact: a table, then the rows that will not be sent."""
    lines = ["# promptbatch estimate", "",
             f"Job `{report['job']['job_hash']}` on `{report['job']['input']}` "
             f"({report['job']['files']} files, models {', '.join(report['job']['models'])}).", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in summary_rows(report)]
    for title, first, count in problem_lines(report):
        lines += ["", f"## {count:,} rows {title}", ""] + [f"- {line}" for line in first]
        if count > len(first):
            lines.append(f"- … and {count - len(first):,} more")
    return "\n".join(lines) + "\n"


def render_table(report: dict[str, Any]) -> None:
    """The estimate as a table on the terminal, then the rows that will not be sent."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"promptbatch estimate — {report['job']['input']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console = Console(soft_wrap=True)  # rows named in full, wherever the output goes
    if not console.is_terminal:
        console.width = 160
    console.print(table, soft_wrap=False)
    for title, first, count in problem_lines(report):
        console.print(f"{count:,} rows {title}:", style="bold")
        for line in first[:5]:
            console.print(f"  {line}", markup=False, highlight=False)
        if count > 5:
            console.print(f"  … and {count - 5:,} more (--json lists the first {len(first)})")
