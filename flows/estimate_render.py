"""The estimate as people read it: a table on the terminal and a markdown artifact.

Both show the same (figure, value) lines (``summary_rows``), then the rows that will
not be sent (``problem_lines``). They read the estimate's dict only, as
``flows.estimate.estimate_job`` returns it.
"""

from __future__ import annotations

from typing import Any


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def _tokens(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {secs:02d} s" if minutes else f"{secs} s")


def _rows_line(rows: dict[str, Any]) -> tuple[str, str]:
    return ("rows", f"{rows['total']:,} ({rows['to_send']:,} to send, {rows['bad_input']:,} bad input, "
                    f"{rows['over_context']:,} over the context, "
                    f"{rows['refused_by_template']:,} refused by the template)")


def _prompt_line(tokens: dict[str, Any]) -> tuple[str, str]:
    if tokens.get("prompt_exact", True):
        return "prompt tokens (exact)", _tokens(tokens["prompt"])
    return ("prompt tokens (approximate)", f"{_tokens(tokens['prompt'])} ({_tokens(tokens['prompt_low'])} – "
                                           f"{_tokens(tokens['prompt_high'])}: "
                                           f"{', '.join(tokens['approximate_models'])} counted with a tokenizer "
                                           "not its own)")


def _completion_basis(report: dict[str, Any]) -> str:
    """What the expected completion tokens rest on."""
    completion = report["tokens"]["completion"]
    return {"sample": f"fitted on {report['sample']['answered']} sampled rows, 95% interval" if report.get("sample")
            else "sample", "ratio": f"{completion.get('ratio')} × prompt tokens, capped at max_tokens",
            "none": "no basis given: --sample N or --completion-ratio R"}[completion["basis"]]


def _duration_line(duration: dict[str, Any]) -> tuple[str, str]:
    return ("duration at quota", f"{_duration(duration['at_quota'])} (bound by {duration['binding']}/min: "
                                 f"{duration['tokens_per_minute']:,} tokens/min, {duration['requests_per_minute']:,} "
                                 f"requests/min; quota charged {duration['quota_tokens']:,} tokens)")


def _prices_line(job: dict[str, Any]) -> tuple[str, str]:
    return ("prices", ", ".join(f"{m} ${p['input']:g}/${p['output']:g} per M tokens"
                                for m, p in job["prices_per_mtok"].items())
            + (" (the job's own" if job["prices_as_of"] == "job" else f" (as of {job['prices_as_of']}")
            + (f"; job overrides {', '.join(job['prices_overridden'])})" if job["prices_overridden"] else ")"))


def _duplicates_line(d: dict[str, Any]) -> tuple[str, str]:
    return ("duplicates (sent once)", f"{d['rows']:,} rows repeat an earlier request: "
                                      f"{d['distinct_requests']:,} distinct requests sent, saving "
                                      f"{_tokens(d['prompt_tokens_saved'])} prompt tokens, "
                                      f"{_usd(d['saving_usd']['expected'])} expected, "
                                      f"{_usd(d['saving_usd']['ceiling'])} at the ceiling")


def _sample_line(s: dict[str, Any]) -> tuple[str, str]:
    return ("sample (paid)", f"{s['rows']} rows sent, {s['answered']} answered, {s['errors']} errors, "
                             f"{_usd(s['cost_usd'])}")


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The estimate as (figure, value) lines, shared by the terminal table and the artifact."""
    tokens, cost = report["tokens"], report["cost_usd"]
    completion = tokens["completion"]
    lines = [
        _rows_line(report["rows"]),
        _prompt_line(tokens),
        ("completion tokens expected", f"{_tokens(completion['expected'])} ({_completion_basis(report)})"),
        ("completion tokens low – high", f"{_tokens(completion['low'])} – {_tokens(completion['high'])}"),
        ("completion tokens ceiling", f"{_tokens(completion['ceiling'])} (every row writes max_tokens)"),
        ("cost expected", _usd(cost["expected"])),
        ("cost low – high", f"{_usd(cost['low'])} – {_usd(cost['high'])}"),
        ("cost ceiling", f"{_usd(cost['ceiling'])} (prompts alone {_usd(cost['prompt'])})"),
        _duration_line(report["duration_s"]),
        _prices_line(report["job"]),
        ("counted", f"{report['counting']['rows_per_s']:,} rows/s ({report['counting']['seconds']:.1f} s)"),
    ]
    if report.get("duplicates", {}).get("rows"):
        lines.insert(1, _duplicates_line(report["duplicates"]))
    if report.get("sample"):
        lines.append(_sample_line(report["sample"]))
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
