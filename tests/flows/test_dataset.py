"""The output folder is one dataset: pyarrow, pandas, polars and DuckDB read it as one table, values as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from flows.cli import main
from tests.endpoint import Endpoint, answer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


async def echo(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
    return web.json_response(answer())


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def write_job(folder: Path, url: str, input_: str, shard_rows: int = 2) -> Path:
    job = {"input": input_, "output": str(folder / "out"),
           "endpoint": {"url": url, "model": "mistral-large-2407", "api_key_env": "TEST_ECHO_KEY"},
           "prompt": {"template": "Say: {text}"}, "params": {"max_tokens": 10}, "shard_rows": shard_rows}
    path = folder / "job.yaml"
    path.write_text(json.dumps(job))
    return path


class TestOneDataset:
    """Mixed passthrough types across rows, parts and formats read back as one table."""

    def test_mixed_types_read_by_every_reader(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TEST_ECHO_KEY", "k-dataset-1234")
        data = tmp_path / "in"
        data.mkdir()
        jsonl = [{"id": "a", "text": "one", "n": 1, "tag": "x"},
                 {"id": "b", "text": "two", "n": "three", "tag": "y"},
                 {"id": "c", "text": "three", "n": 2.5},
                 {"id": "d", "text": "four", "n": True, "late": {"k": 1}}]  # `late` only in the last part
        (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
        pq.write_table(pa.table({"id": ["e"], "text": ["five"], "n": pa.array([7], pa.int64()),
                                 "tag": ["z"]}), data / "b.parquet")
        with Endpoint(echo) as endpoint:
            result = run(str(write_job(tmp_path, endpoint.url, str(data))))
        assert result.exit_code == 0, result.output[-3000:]
        out = tmp_path / "out"
        schemas = {pq.read_schema(p).remove_metadata() for p in out.glob("part-*.parquet")}
        assert len(schemas) == 1 and len(list(out.glob("part-*.parquet"))) == 3
        expected_n = ["1", "three", "2.5", "true", "7"]
        expected_late = [None, None, None, '{"k": 1}', None]

        table = ds.dataset(str(out)).to_table()
        assert table.column("n").to_pylist() == expected_n
        assert table.column("late").to_pylist() == expected_late
        assert table.column("tag").to_pylist() == ["x", "y", None, None, "z"]

        frame = pd.read_parquet(out)
        assert frame["n"].tolist() == expected_n and len(frame) == 5

        polars = pl.read_parquet(str(out / "*.parquet"))
        assert polars["n"].to_list() == expected_n and polars["late"].to_list() == expected_late

        duck = duckdb.connect().execute(f"select id, n from read_parquet('{out}/*.parquet') order by id").fetchall()
        assert duck == list(zip("abcde", expected_n, strict=True))

    def test_schema_kept_across_runs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Rows appended with a new type and a new column: earlier parts are brought to the new schema."""
        monkeypatch.setenv("TEST_ECHO_KEY", "k-dataset-1234")
        prompts = tmp_path / "p.jsonl"
        first = [{"id": f"r{i}", "text": f"t{i}", "n": i} for i in range(4)]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in first))
        with Endpoint(echo) as endpoint:
            job = write_job(tmp_path, endpoint.url, str(prompts))
            assert run(str(job)).exit_code == 0
            assert ds.dataset(str(tmp_path / "out")).schema.field("n").type == pa.int64()
            more = [{"id": "r4", "text": "t4", "n": "many", "extra": 1}]
            prompts.write_text("".join(json.dumps(r) + "\n" for r in first + more))
            result = run(str(job))
            assert result.exit_code == 0, result.output[-3000:]
            assert endpoint.requests == 5  # nothing paid twice
        out = tmp_path / "out"
        assert len({pq.read_schema(p).remove_metadata() for p in out.glob("part-*.parquet")}) == 1
        table = ds.dataset(str(out)).to_table()
        assert table.column("n").to_pylist() == ["0", "1", "2", "3", "many"]
        assert table.column("extra").to_pylist() == [None, None, None, None, 1]
        manifest = json.loads((out / "_manifest.json").read_text())
        assert {c["name"]: c["type"] for c in manifest["passthrough"]["columns"]} == {
            "text": "string", "n": "string", "extra": "int64"}

    def test_renaming_never_overwrites(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An input column `status` beside `input_status` is a job error naming both; `_seq` passes through."""
        monkeypatch.setenv("TEST_ECHO_KEY", "k-dataset-1234")
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(json.dumps({"id": "a", "text": "x", "status": "s", "input_status": "i"}) + "\n")
        with Endpoint(echo) as endpoint:
            result = run(str(write_job(tmp_path, endpoint.url, str(prompts))))
            assert result.exit_code == 2 and "`status`" in result.output and "`input_status`" in result.output
            assert endpoint.requests == 0
            prompts.write_text(json.dumps({"id": "a", "text": "x", "_seq": 41, "status": "s"}) + "\n")
            assert run(str(write_job(tmp_path, endpoint.url, str(prompts)))).exit_code == 0
        row = ds.dataset(str(tmp_path / "out")).to_table().to_pylist()[0]
        assert row["_seq"] == 41 and row["input_status"] == "s" and row["status"] == "ok"
