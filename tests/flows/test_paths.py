"""Paths and job files at their edges: `~`, relative paths, output inside the input, a file, a read-only disk."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from flows.cli import main
from tests.endpoint import Endpoint, answer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


async def echo(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
    return web.json_response(answer())


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoint]:
    monkeypatch.setenv("TEST_ECHO_KEY", "k-paths-1234")
    with Endpoint(echo) as running:
        yield running


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def write_job(path: Path, url: str, input_: str, output: str, extra: str = "") -> Path:
    path.write_text(f"input: {input_}\noutput: {output}\n"
                    f"endpoint: {{url: '{url}', model: mistral-large-2407, api_key_env: TEST_ECHO_KEY}}\n"
                    f"prompt: {{template: 'Say: {{text}}'}}\nparams: {{max_tokens: 10}}\n{extra}")
    return path


def prompts(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(n)))
    return path


def one_failure_line(result: Result) -> str:
    """The run failed with one `promptbatch:` line and no traceback."""
    assert "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.output.splitlines() if line.startswith("promptbatch:")]
    assert len(lines) == 1, result.output[-3000:]
    return lines[0]


class TestResolved:
    """`~` is the home folder and a relative path the working directory's, printed as resolved."""

    def test_home_and_relative(self, tmp_path: Path, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.chdir(work)
        prompts(work / "p.jsonl")
        result = run(str(write_job(work / "job.yaml", endpoint.url, "p.jsonl", "~/out")))
        assert result.exit_code == 0, result.output[-3000:]
        assert f"reading {work / 'p.jsonl'}, writing {home / 'out'}" in result.output
        assert (home / "out" / "part-000000.parquet").exists() and not (work / "~").exists()
        manifest = json.loads((home / "out" / "_manifest.json").read_text())
        assert manifest["inputs"] == [str(work / "p.jsonl")]


class TestOutputInsideInput:
    """An output folder that is the input folder never lists its own parts as prompts."""

    def test_same_folder(self, tmp_path: Path, endpoint: Endpoint) -> None:
        data = tmp_path / "data"
        data.mkdir()
        prompts(data / "p.jsonl", 4)
        job = write_job(tmp_path / "job.yaml", endpoint.url, str(data), str(data))
        assert run(str(job)).exit_code == 0
        again = run(str(job))
        assert again.exit_code == 0 and "already complete" in again.output, again.output[-3000:]
        assert endpoint.requests == 4
        assert ds.dataset(str(data), format="parquet",
                          exclude_invalid_files=True).count_rows() == 4


class TestStorageFailures:
    """An output that is a file exits 2, a read-only disk 4: one line each, no traceback."""

    def test_output_is_a_file(self, tmp_path: Path, endpoint: Endpoint) -> None:
        (tmp_path / "taken").write_text("not a folder")
        job = write_job(tmp_path / "job.yaml", endpoint.url, str(prompts(tmp_path / "p.jsonl")),
                        str(tmp_path / "taken"))
        result = run(str(job))
        assert result.exit_code == 2
        assert "is a file, not a folder" in one_failure_line(result)
        assert endpoint.requests == 0

    def test_read_only_disk(self, tmp_path: Path, endpoint: Endpoint) -> None:
        disk = tmp_path / "ro"
        disk.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(disk)],
                                 capture_output=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only disk here: {mounted.stderr.decode().strip()}")
        try:
            job = write_job(tmp_path / "job.yaml", endpoint.url, str(prompts(tmp_path / "p.jsonl")),
                            str(disk / "out"))
            result = run(str(job))
        finally:
            subprocess.run(["umount", str(disk)], check=True)
        assert result.exit_code == 4
        assert "Read-only file system" in one_failure_line(result)

    def test_duplicate_key(self, tmp_path: Path, endpoint: Endpoint) -> None:
        job = write_job(tmp_path / "job.yaml", endpoint.url, str(prompts(tmp_path / "p.jsonl")),
                        str(tmp_path / "out"), extra=f"output: {tmp_path / 'elsewhere'}\n")
        result = run(str(job))
        assert result.exit_code == 2 and "duplicate key `output`" in one_failure_line(result)


class TestIds:
    """Ids 7 and "7" in one input do not collide: the integer one is a bad-input row; `true` is refused."""

    def test_ids(self, tmp_path: Path, endpoint: Endpoint) -> None:
        rows = [{"id": 7, "text": "a"}, {"id": "7", "text": "b"}, {"id": True, "text": "c"}]
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        job = write_job(tmp_path / "job.yaml", endpoint.url, str(tmp_path / "p.jsonl"), str(tmp_path / "out"))
        result = run(str(job))
        assert result.exit_code == 0, result.output[-3000:]
        out = ds.dataset(str(tmp_path / "out")).to_table().to_pylist()
        assert [(r["id"], r["status"]) for r in out] == [(None, "error"), ("7", "ok"), (None, "error")]
        assert "same id as \"7\"" in out[0]["error"] and "got bool True" in out[2]["error"]
