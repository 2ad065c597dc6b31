"""Answers and secrets from an endpoint that misbehaves: a small aiohttp server here, the real CLI and Prefect.

The server (``tests.endpoint``) echoes the request's headers back in 200, 400, 401 and 500
answers, leaves usage out, bills impossible usage or asks for an eleven-day pause; each case
checks what the job wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from flows.cli import main
from tests.endpoint import Endpoint, answer, echo_headers
from workers import TokenCounter

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "sk-echo-5e9d1c7b3a2f4e6d8c0b"
OTHER = "gw-upstream-9a8b7c6d5e4f"  # a gateway's own token, echoed too: masked by its shape
TEMPLATE = "Say: {text}"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ECHO_KEY", KEY)


def write_job(folder: Path, url: str, texts: list[str], **extra: Any) -> Path:
    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(texts)]
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n")
    endpoint = {"url": url, "model": "mistral-large-2407", "api_key_env": "TEST_ECHO_KEY",
                "requests_per_minute": 600_000, "tokens_per_minute": 1_000_000_000, **extra.pop("endpoint", {})}
    job = {"input": str(folder / "in.jsonl"), "output": str(folder / "out"), "endpoint": endpoint,
           "prompt": {"template": TEMPLATE}, "params": {"max_tokens": 30}, "shard_rows": 4, "max_attempts": 2,
           **extra}
    path = folder / "job.yaml"
    path.write_text(json.dumps(job))
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def rows(folder: Path) -> list[dict[str, Any]]:
    return ds.dataset(str(folder)).to_table().to_pylist()


def text_of(request_body: dict[str, Any]) -> str:
    return str(request_body["messages"][-1]["content"])


def files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


class TestSecretsEchoed:
    """A key echoed back in 200/400/401/500 answers is in no byte the job wrote."""

    def test_key_nowhere(self, tmp_path: Path) -> None:
        from prefect.logging.handlers import APILogWorker
        from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

        tried: set[str] = set()
        revoked = {"now": False}

        async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            echoed = f"{echo_headers(request)}; upstream Authorization: Bearer {OTHER}"
            if revoked["now"]:
                return web.json_response({"error": {"code": "Unauthorized", "message": f"bad key in {echoed}"}},
                                         status=401)
            text = text_of(body)
            if "four-hundred" in text:
                return web.json_response({"error": {"message": f"refused; you sent {echoed}"}}, status=400)
            if "five-hundred" in text and text not in tried:
                tried.add(text)
                return web.json_response({"detail": f"upstream failed for {echoed}"}, status=500)
            return web.json_response(answer(f"You sent {echoed}"))

        with Endpoint(handler) as endpoint:
            job = write_job(tmp_path, endpoint.url, ["plain", "four-hundred", "five-hundred", "plain two", "x"])
            first = run(str(job))
            assert first.exit_code == 0, first.output[-3000:]
            revoked["now"] = True
            second = run(str(job), "--output", str(tmp_path / "out2"))
            assert second.exit_code == 3, second.output[-3000:]
            assert f"Bearer {KEY}" in endpoint.keys  # the server had the key to echo
        APILogWorker.drain_all(timeout=10)

        haystack = [first.output, second.output]
        for folder in (tmp_path / "out", tmp_path / "out2"):
            for path in files_under(folder):
                haystack.append(path.read_bytes().decode("latin-1"))
                if path.suffix == ".parquet":
                    haystack.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
        prefect_files = list(files_under(database.parent)) + list(files_under(Path(PREFECT_HOME.value())))
        for path in prefect_files:
            if path.stat().st_size < 200_000_000:
                haystack.append(path.read_bytes().decode("latin-1"))
        everything = "\n".join(haystack)
        assert "You sent" in everything and "refused; you sent" in everything and "Bearer ***" in everything
        assert database.exists() and any(p.name.startswith(database.name) for p in prefect_files)
        assert KEY not in everything
        assert OTHER not in everything


class TestUsage:
    """Usage is checked: missing → counted with the tokenizer and flagged; impossible → an error row."""

    def test_missing_usage_is_counted_and_flagged(self, tmp_path: Path) -> None:
        async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            return web.json_response(answer("Ciao a tutti, amici miei", omit_usage=True))

        with Endpoint(handler) as endpoint:
            result = run(str(write_job(tmp_path, endpoint.url, [f"hello {i}" for i in range(5)])))
        assert result.exit_code == 0, result.output[-3000:]
        counter = TokenCounter("mistral-large-2407")
        for row in rows(tmp_path / "out"):
            prompt = counter.prompt_tokens([{"role": "user", "content": TEMPLATE.format(text=row["text"])}])
            assert row["status"] == "ok" and row["usage_estimated"] is True
            assert row["prompt_tokens"] == prompt
            assert row["completion_tokens"] == len(counter.text_tokens("Ciao a tutti, amici miei"))
            assert row["cost_usd"] > 0

    def test_budget_holds_without_usage(self, tmp_path: Path) -> None:
        async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            return web.json_response(answer(" ".join(["parola"] * 12), omit_usage=True))

        with Endpoint(handler) as endpoint:
            job = write_job(tmp_path, endpoint.url, [f"hello {i}" for i in range(40)], budget_usd=0.001)
            result = run(str(job))
        assert result.exit_code == 6, result.output[-3000:]
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert 0 < manifest["cost_usd"]["total"] <= 0.001
        assert manifest["rows"]["total"] < 40

    def test_impossible_usage_is_an_error_row(self, tmp_path: Path) -> None:
        bills = {"negative": -5, "huge": 10**12, "fraction": 2.5}

        async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            text = text_of(body)
            bill = next((v for k, v in bills.items() if k in text), 3)
            return web.json_response(answer(usage={"prompt_tokens": 10, "completion_tokens": bill}))

        with Endpoint(handler) as endpoint:
            result = run(str(write_job(tmp_path, endpoint.url, ["negative", "huge", "fraction", "fine"])))
        assert result.exit_code == 0, result.output[-3000:]
        by_text = {r["text"]: r for r in rows(tmp_path / "out")}
        for text in bills:
            row = by_text[text]
            assert row["status"] == "error" and "unreadable answer" in row["error"], row
            assert row["attempts"] == 2 and row["cost_usd"] == 0
        assert by_text["fine"]["status"] == "ok" and by_text["fine"]["completion_tokens"] == 3
        manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
        assert 0 < manifest["cost_usd"]["total"] < 0.001


class TestWaits:
    """A retry-after of eleven days is cut to `max_retry_after_s`, and the log says so."""

    def test_retry_after_capped_and_logged(self, tmp_path: Path) -> None:
        async def handler(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            if n == 2:
                return web.json_response({"error": {"message": "slow down"}}, status=429,
                                         headers={"retry-after": "999999"})
            return web.json_response(answer())

        with Endpoint(handler) as endpoint:
            job = write_job(tmp_path, endpoint.url, [f"t{i}" for i in range(3)],
                            endpoint={"max_retry_after_s": 0.2}, max_attempts=3)
            result = run(str(job))
        assert result.exit_code == 0, result.output[-3000:]
        assert "retry_after_capped" in result.output and "999999" in result.output
        assert all(r["status"] == "ok" for r in rows(tmp_path / "out"))
