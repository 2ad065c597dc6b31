"""What ``promptbatch run`` and ``promptbatch demo`` print when a job ends, or stops.

One block on stdout from the run's summary dict (``flows.batch.run_batch``): where the
output, manifest and report are, the rows by status, tokens, cost and time, then what
needs a look — bad input rows, empty input files, and quotas the deployments showed to
be other than the job says.
"""

from __future__ import annotations

from typing import Any

import click


def print_summary(result: dict[str, Any]) -> None:
    """The run's summary, a few lines on stdout."""
    rows, tokens, cost = result["rows"], result["tokens"], result["cost_usd"]
    if result.get("already_complete"):
        click.echo(f"already complete: {result['output']} holds every row of these inputs; nothing was sent")
    reconciled = result.get("reconciled")
    if reconciled:
        click.echo("inputs changed since the last run: " + "; ".join(reconciled["changes"][:5]))
        click.echo(f"reconciled by row id and content: {reconciled['answers_reused']} earlier answers kept for "
                   f"their rows, {reconciled['answers_dropped']} dropped (their rows are gone or changed), "
                   f"{reconciled['parts_rebuilt']} parts rebuilt")
    click.echo(f"output:   {result['output']}")
    click.echo(f"manifest: {result['manifest']}")
    if result.get("report"):
        click.echo(f"report:   {result['report']}")
    of = f" of {result['input_rows']}" if result.get("input_rows") is not None and result.get("stopped") else ""
    invalid = f", {rows['invalid']} invalid" if "invalid" in rows else ""
    click.echo(f"rows:     {rows['total']}{of} ({rows['ok']} ok, {rows['filtered']} filtered, {rows['error']} error"
               f"{invalid})"
               + (f"; {result['journaled_rows']} of them in the journal, not yet in a part"
                  if result.get("journaled_rows") else ""))
    click.echo(f"tokens:   {tokens['prompt']:,} prompt + {tokens['completion']:,} completion")
    by_model = ", ".join(f"{m} ${c:.4f}" for m, c in cost["by_model"].items())
    click.echo(f"cost:     ${cost['total']:.4f} ({by_model}; prices as of {result['prices_as_of']})")
    click.echo(f"time:     {result['wall_time_s']:.1f} s")
    bad = result.get("bad_input")
    if bad:
        click.echo(f"bad input: {bad['rows']} rows (status error; each named in the output's `error` column):")
        for line in bad["first"][:5]:
            click.echo(f"  {line}")
        if bad["rows"] > 5:
            click.echo(f"  … and {bad['rows'] - 5} more (the manifest lists the first {len(bad['first'])})")
    for name in result.get("empty_inputs", []):
        click.echo(f"empty input file: {name}")
    for url, found in (result.get("quota_learned") or {}).items():
        says = found["job_says"]
        click.echo(f"quota:    {url} admits ≈ {found['tokens_per_minute']:,} tokens/min and "
                   f"{found['requests_per_minute']:,} requests/min; the job says {says['tokens_per_minute']:,} "
                   f"and {says['requests_per_minute']:,} (set them in the job file, or `quota: auto`)")
