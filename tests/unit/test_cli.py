"""The CLI fails fast, with one line, on a job file it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.cli import main


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input: a.jsonl\noutput: o/\nendpoint: {url: http://127.0.0.1:1, model: mistral-nemo, key: x}\n",
         "unknown key `endpoint.key`"),
        ("input: a.jsonl\nendpoint: {url: http://127.0.0.1:1, model: mistral-nemo}\n", "missing key `output`"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_job_file_exits_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(text)
    result = CliRunner().invoke(main, ["run", str(job)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptbatch: ") and message in lines[0]


def test_missing_job_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such job file" in result.output


def test_endpoint_url_override_needs_one_endpoint(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("input: a.jsonl\noutput: o/\nendpoints:\n  - {url: http://a.test, model: mistral-nemo}\n")
    result = CliRunner().invoke(main, ["run", str(job), "--endpoint-url", "http://b.test"])
    assert result.exit_code == 2 and "--endpoint-url needs a job with a single `endpoint`" in result.output
