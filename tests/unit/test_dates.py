"""Dated locations: placeholders checked when the job is read, resolved from the run's date."""

from __future__ import annotations

from datetime import date

import pytest

from schemas import JobFileError, parse_job, placeholders, pointer_folder, resolve

DAY = date(2026, 11, 23)
JOB = "endpoint: {{url: http://x, model: mistral-large-2407}}\ninput: {input}\noutput: {output}\n"


class TestResolve:
    """Each placeholder and escape, filled in from a day."""

    @pytest.mark.parametrize(("template", "expected"), [
        ("az://c/news/{date}/", "az://c/news/2026-11-23/"),
        ("out/{date:%Y/%m/%d}/", "out/2026/11/23/"),
        ("out/{date:%Y}-w{date:%V}", "out/2026-w48"),
        ("out/{{literal}}/{date}", "out/{literal}/2026-11-23"),
        ("plain/folder/", "plain/folder/"),
    ])
    def test_filled(self, template: str, expected: str) -> None:
        assert resolve(template, DAY) == expected

    @pytest.mark.parametrize(("template", "message"), [
        ("out/{day}/", "unknown placeholder `{day}`"),
        ("out/{date:%Y-%H}/", "`%H` is not part of a date"),
        ("out/{date/", "unmatched `{`"),
        ("out/date}/", "unmatched `}`"),
    ])
    def test_refused(self, template: str, message: str) -> None:
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}").replace("%", "%")):
            placeholders(template)


class TestPointerFolder:
    """``latest.json`` sits above the first dated segment; undated outputs have none."""

    @pytest.mark.parametrize(("template", "expected"), [
        ("az://completions/news/{date}/", "az://completions/news"),
        ("out/{date:%Y}/{date:%m}/", "out"),
        ("{date}/", "."),
        ("out/latest/", None),
    ])
    def test_folder(self, template: str, expected: str | None) -> None:
        assert pointer_folder(template) == expected


class TestJobFile:
    """The job file names a bad placeholder by its key, before anything runs."""

    def test_unknown_placeholder_names_the_key(self) -> None:
        with pytest.raises(JobFileError, match=r"`output`: unknown placeholder `\{when\}`"):
            parse_job(JOB.format(input="p.jsonl", output="out/{when}/"))

    def test_on_date_resolves_both(self) -> None:
        spec = parse_job(JOB.format(input="p/{date}/*.jsonl", output="o/{date:%Y%m%d}/"))
        assert spec.dated
        resolved = spec.on_date(DAY)
        assert (resolved.input, resolved.output) == ("p/2026-11-23/*.jsonl", "o/20261123/")
        assert resolved.job_hash() == spec.job_hash()  # a night's date is not part of the job

    def test_override_is_checked(self) -> None:
        spec = parse_job(JOB.format(input="p.jsonl", output="o/"))
        with pytest.raises(JobFileError, match="--output: unknown placeholder"):
            spec.with_overrides(output="o/{today}/")
