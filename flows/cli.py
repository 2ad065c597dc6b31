"""The ``promptbatch`` command line.

Exit codes: 0 every row reached a final outcome; 2 the job file or settings are wrong;
3 the deployment rejected the key (the job stopped at once); 4 storage failed;
5 stopped by SIGINT/SIGTERM; 6 the budget was reached. After 3–6, running the same
command again resumes: what finished is kept and not paid for twice.
Failures print one line on stderr that says what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from flows.cli_summary import print_summary as _print_summary
from flows.logs import adopt_console, configure, explained_failures, quiet_on_console, scrub


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"promptbatch: {scrub(message)}", err=True)
    sys.exit(code)


def _run_job(runner: Callable[[], Any]) -> dict[str, Any]:
    """Run a flow, turning the ways a job can fail into one line and an exit code."""
    from flows.batch import JobError
    from flows.lease import OutputBusyError
    from flows.pipeline import JobStoppedError
    from flows.storage import StorageError
    from schemas import JobFileError
    from workers import JobAbortedError, StopReason

    adopt_console()  # Prefect, loaded by now, has put its own console handler in place
    explained_failures[:] = [JobFileError, JobError, OutputBusyError, JobAbortedError, StorageError, OSError,
                             JobStoppedError]
    try:
        return asyncio.run(runner())
    except (JobFileError, JobError, OutputBusyError) as exc:
        _fail(2, str(exc))
    except JobAbortedError as exc:
        _fail(3, f"the deployment refused the job's key ({exc.describe()}); check the key and run again "
                 "(what finished is kept)")
    except StorageError as exc:
        _fail(4, f"storage: {exc}; what was committed is kept: run the job again to resume")
    except OSError as exc:  # local disk: read-only, full, permission denied
        where = f" {exc.filename}" if exc.filename else ""
        _fail(4, f"storage:{where}: {exc.strerror or exc}; what was committed is kept: run the job again to resume")
    except JobStoppedError as exc:
        _print_summary(exc.summary)
        _fail(6 if exc.reason is StopReason.BUDGET else 5, str(exc))


@click.group()
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr: concise text, or one JSON object per line.")
@click.option("--json-logs", is_flag=True, hidden=True, help="The same as --log-format json.")
def main(log_format: str, json_logs: bool) -> None:
    """Bulk chat completions against quota-limited Azure serverless Mistral deployments."""
    configure(log_format="json" if json_logs else log_format)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_", help="Override the job's `input`.")
@click.option("--output", help="Override the job's `output` folder.")
@click.option("--endpoint-url", help="Override the endpoint's `url` (jobs with one endpoint).")
@click.option("--retry-errors", is_flag=True, help="Also send again the rows an earlier run ended in `error`.")
@click.option("--overwrite", is_flag=True, help="Discard another job's results in the output folder.")
@click.option("--date", "day", metavar="YYYY-MM-DD",
              help="The day `{date}` in `input`/`output` names (default: today): backfill or redo a day.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="Show a progress bar on stderr (default: when stderr is a terminal).")
def run(job_file: str, input_: str | None, output: str | None, endpoint_url: str | None, retry_errors: bool,
        overwrite: bool, day: str | None, show_progress: bool | None) -> None:
    """Run JOB_FILE: every input row ends as one output row with a status.

    Running it again with the same output finishes what an earlier run left undone.
    """
    from flows.batch import JobError, load_spec, run_batch
    from flows.schedule import RunDateError, parse_date
    from flows.storage import redact_location
    from schemas import JobFileError

    try:  # a bad job file fails here, before Prefect starts or any request is sent
        spec = load_spec(job_file, input=input_, output=output, endpoint_url=endpoint_url)
        if day is not None:
            parse_date(day)
    except (JobFileError, JobError, RunDateError) as exc:
        _fail(2, str(exc))
    click.echo(f"reading {redact_location(spec.input)}, writing {redact_location(spec.output)}", err=True)
    with _progress_bar(show_progress):
        result = _run_job(lambda: run_batch(job_file, input=input_, output=output, endpoint_url=endpoint_url,
                                            retry_errors=retry_errors, overwrite=overwrite, date=day))
    _print_summary(result)


@contextlib.contextmanager
def _progress_bar(show: bool | None) -> Iterator[None]:
    """A progress bar on stderr while the flow runs (rows, tokens/min against the quota, cost, ETA)."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield
        return
    from flows.progress import TerminalBar, listeners

    with TerminalBar() as bar:
        listeners.append(bar.update)
        quiet_on_console.add("progress")  # the bar shows it; the run's logs keep it
        try:
            yield
        finally:
            listeners.remove(bar.update)
            quiet_on_console.discard("progress")


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_", help="Override the job's `input`.")
@click.option("--endpoint-url", help="Override the endpoint's `url` (jobs with one endpoint; used by --sample).")
@click.option("--sample", type=click.IntRange(min=0), default=0, show_default=True,
              help="Send this many rows, drawn at random, for real (billed) to calibrate completion tokens.")
@click.option("--completion-ratio", type=click.FloatRange(min=0),
              help="Expected completion tokens per prompt token (capped at max_tokens), instead of --sample.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample's random draw.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON instead of a table.")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="The day `{date}` in `input` names (default: today).")
@click.option("--keep", is_flag=True,
              help="Leave the estimate in the job's output folder (_estimate.json): the run's report shows it.")
def estimate(job_file: str, input_: str | None, endpoint_url: str | None, sample: int,
             completion_ratio: float | None, seed: int, as_json: bool, day: str | None, keep: bool) -> None:
    """Estimate JOB_FILE: exact prompt tokens, cost low/expected/high and duration, nothing sent.

    Only --sample N sends requests: N rows, billed like any other, said before they go.
    """
    from flows.batch import JobError, load_spec
    from flows.estimate import estimate_job, render_table
    from schemas import JobFileError

    if sample and completion_ratio is not None:
        _fail(2, "give --sample or --completion-ratio, not both")
    try:
        spec = load_spec(job_file, input=input_, endpoint_url=endpoint_url)
    except (JobFileError, JobError) as exc:
        _fail(2, str(exc))
    if sample:
        where = ", ".join(e.url for e in spec.all_endpoints)
        click.echo(f"promptbatch: --sample {sample} sends {sample} real requests to {where}; they are billed "
                   "(the most they can cost is logged before they go)", err=True)
    report = _run_job(lambda: estimate_job(job_file, input=input_, endpoint_url=endpoint_url, sample=sample,
                                           completion_ratio=completion_ratio, seed=seed, date=day,
                                           keep=keep))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_table(report)


@main.command()
@click.argument("output")
def report(output: str) -> None:
    """Write OUTPUT's _report.html: throughput against the quota, 429s, outcomes, latency, cost.

    OUTPUT is a finished (or stopped) job's output folder, local or in Blob Storage.
    """
    from flows.manifest import read_manifest
    from flows.report import write_report
    from flows.storage import StorageError, redact_location, storage_for

    try:
        store = storage_for(output)
        manifest = read_manifest(store, output)
        if manifest is None:
            _fail(2, f"{redact_location(output)}: no _manifest.json there (is it a promptbatch output folder?)")
        where, text = write_report(store, output, manifest)
    except StorageError as exc:
        _fail(4, f"storage: {exc}")
    except OSError as exc:
        _fail(4, f"storage: {exc.filename or output}: {exc.strerror or exc}")
    click.echo(text)
    click.echo(f"report:   {where}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, help="0 picks a free port.")
@click.option("--model", default="mistral-large-2407", show_default=True,
              help="Any catalog model or alias; another name needs --tokenizer.")
@click.option("--tokenizer", default=None,
              help="Bill with this tokenizer (v1 v2 v3 v7 v7m1 tekken tekken-240911, or a tokenizer file) "
                   "instead of the model's own.")
@click.option("--context-tokens", type=int, default=None, help="The model's context length (default: its own).")
@click.option("--api-key", envvar="PROMPTBATCH_SIM_KEY", help="Accept only this key (default: any).")
@click.option("--tokens-per-minute", default=200_000, show_default=True)
@click.option("--requests-per-minute", default=1_000, show_default=True)
@click.option("--window", "window_s", default=10.0, show_default=True, help="Quota enforcement window, seconds.")
@click.option("--latency", "latency_s", default=0.05, show_default=True, help="Seconds per answer, plus per token.")
@click.option("--per-token", "per_token_s", default=0.0005, show_default=True, help="Seconds per completion token.")
@click.option("--logprobs", type=click.Choice(["openai", "legacy", "reject"]), default="openai", show_default=True)
@click.option("--faults", default="", help="e.g. server_error=0.05,reset=0.02,hang=0.01,truncate=0.01,filter=0.01")
@click.option("--hang", "hang_s", default=600.0, show_default=True, help="Seconds a hung request stays open.")
@click.option("--seed", default=0, show_default=True)
@click.option("--revoke-after", type=int, help="Refuse the key (401) after this many completion requests.")
@click.option("--metering", type=click.Choice(["sliding", "bucket", "fixed"]), default="sliding", show_default=True,
              help="How the quota is metered: a sliding log, a token bucket of one window, clock-aligned windows.")
@click.option("--headers", "header_mode", type=click.Choice(["window", "minute", "sentinel", "none"]),
              default="window", show_default=True, help="What x-ratelimit-* headers count (sentinel: -1).")
@click.option("--retry-after/--no-retry-after", default=True, show_default=True, help="Say how long a 429 lasts.")
@click.option("--foreign-share", default=0.0, show_default=True, help="Another tenant's share of the quota.")
@click.option("--invalid-answers", default=0.0, show_default=True,
              help="Share of JSON / json_schema / tool-call answers that do not validate.")
@click.option("--refuse-json-schema", is_flag=True, help="Refuse response_format json_schema with 400, as Azure did.")
def simulate(host: str, port: int, model: str, tokenizer: str | None, context_tokens: int | None,
             api_key: str | None, tokens_per_minute: int,
             requests_per_minute: int, window_s: float, latency_s: float, per_token_s: float, logprobs: str,
             faults: str, hang_s: float, seed: int, revoke_after: int | None, metering: str, header_mode: str,
             retry_after: bool, foreign_share: float, invalid_answers: float, refuse_json_schema: bool) -> None:
    """Serve an Azure serverless Mistral lookalike on HOST:PORT until interrupted."""
    from flows.cli_simulate import serve_until_interrupted
    from workers.simulator import SimConfig, parse_faults
    from workers.tokens import TokenCounter

    try:
        config = SimConfig(model=model, tokenizer=tokenizer, context_tokens=context_tokens, api_key=api_key,
                           tokens_per_minute=tokens_per_minute,
                           requests_per_minute=requests_per_minute, window_s=window_s, latency_s=latency_s,
                           per_token_s=per_token_s, logprobs=logprobs,  # type: ignore[arg-type]
                           faults=parse_faults(faults), hang_s=hang_s, seed=seed, revoke_after=revoke_after,
                           metering=metering, headers=header_mode,  # type: ignore[arg-type]
                           retry_after=retry_after, foreign_share=foreign_share, invalid_answers=invalid_answers,
                           refuse_json_schema=refuse_json_schema)
        TokenCounter(config.model_info())  # a tokenizer that cannot load fails here, not on the first request
    except (ValueError, KeyError) as exc:
        _fail(2, str(exc))
    serve_until_interrupted(config, host, port)


@main.command()
@click.option("--dir", "folder", default="promptbatch-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--rows", default=200, show_default=True, help="How many prompts to translate.")
def demo(folder: str, rows: int) -> None:
    """Run the whole pipeline on embedded defaults: local files, the simulator on 127.0.0.1."""
    from flows.batch import run_batch
    from flows.demo import DEMO_KEY_ENV, DEMO_MODEL, demo_key, write_demo
    from workers.simulator import BackgroundSimulator, SimConfig

    key = demo_key()
    os.environ[DEMO_KEY_ENV] = key
    base = Path(folder)
    shutil.rmtree(base / "output", ignore_errors=True)
    with BackgroundSimulator(SimConfig(model=DEMO_MODEL, api_key=key)) as url:
        job_file = write_demo(base, rows, url)
        click.echo(f"demo: {rows} prompts in {base / 'prompts.jsonl'}, job {job_file}, simulator at {url}")
        result = _run_job(lambda: run_batch(str(job_file)))
    _print_summary(result)
    click.echo(f"Read it with: python -c \"import pyarrow.parquet as pq; "
               f"print(pq.read_table('{result['output']}').slice(0, 2).to_pylist())\"")
