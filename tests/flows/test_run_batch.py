"""The whole pipeline under Prefect: prompt sets in Azurite, the simulator over HTTP, Parquet out."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient
from click.testing import CliRunner

from flows.batch import run_batch
from flows.cli import main
from flows.storage import storage_for
from schemas import OUTPUT_SCHEMA, Params, Price, PromptSpec, build_row
from tests.conftest import Azurite, SimulatorProcess
from workers import AuthRejectedError
from workers.simulator import prompt_digest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

UNLIMITED = ("--requests-per-minute", "1000000", "--tokens-per-minute", "1000000000", "--latency", "0.002",
             "--per-token", "0")
PROMPT = {"system": "You translate English to Italian.", "template": "Translate to Italian: {text}"}
MODEL = "mistral-large-2407"
N_JSONL, N_PARQUET = 130, 70


def upload_prompt_sets(azurite: Azurite, container: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    lines = [json.dumps({"id": f"j{i}", "text": f"Line {i}: the weather is fine " * (1 + i % 4), "source": "jsonl",
                         "batch": i % 3}) for i in range(N_JSONL)]
    service.get_blob_client(container, "set/a.jsonl").upload_blob("\n".join(lines).encode())
    table = pa.table({"id": [f"p{i}" for i in range(N_PARQUET)],
                      "text": [f"Row {i} of the parquet set" for i in range(N_PARQUET)],
                      "source": ["parquet"] * N_PARQUET, "batch": [i % 3 for i in range(N_PARQUET)]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    service.get_blob_client(container, "set/b.parquet").upload_blob(sink.getvalue())


def read_output(folder: str) -> tuple[list[pa.Table], dict[str, Any]]:
    store = storage_for(folder)
    parts = [pq.read_table(io.BytesIO(store.read_bytes(loc)))
             for loc in store.expand(folder) if loc.endswith(".parquet")]
    manifest = json.loads(store.read_bytes(store.join(folder, "_manifest.json")))
    return parts, manifest


def job(url: str, container: str, api: str, logprobs: bool) -> dict[str, Any]:
    return {
        "input": f"az://{container}/set/*",
        "output": f"az://{container}/out/",
        "endpoint": {"url": url, "api": api, "model": MODEL, "api_key_env": "TEST_SIM_KEY",
                     "requests_per_minute": 600_000, "tokens_per_minute": 100_000_000},
        "prompt": PROMPT,
        "params": {"max_tokens": 60, "temperature": 0.2, "logprobs": logprobs, "top_logprobs": 2, "seed": 5},
        "shard_rows": 50,
    }


@pytest.mark.parametrize(
    ("api", "logprobs", "sim_logprobs"),
    [
        ("mistral", False, "openai"),
        ("azure-inference", True, "openai"),
        ("azure-inference", True, "legacy"),
        ("mistral", True, "reject"),  # asked, refused by the endpoint: the job still runs, logprobs null
    ],
)
def test_run_batch_on_azurite(blob_env: Azurite, simulator: Callable[..., SimulatorProcess],
                              monkeypatch: pytest.MonkeyPatch, api: str, logprobs: bool, sim_logprobs: str) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", "sim-key-123")
    sim = simulator(*UNLIMITED, "--model", MODEL, "--api-key", "sim-key-123", "--logprobs", sim_logprobs)
    container = f"run-{api}-{sim_logprobs}".lower()
    upload_prompt_sets(blob_env, container)

    state: Any = asyncio.run(run_batch(job(sim.url, container, api, logprobs), return_state=True))  # type: ignore[arg-type]
    assert state.is_completed(), state
    summary = state.result()
    assert summary["rows"] == {"total": 200, "ok": 200, "filtered": 0, "error": 0}

    parts, manifest = read_output(f"az://{container}/out/")
    assert len(parts) == 4  # 200 rows in shards of 50
    rows = pa.concat_tables(parts, promote_options="permissive").to_pylist()
    expected = [f"j{i}" for i in range(N_JSONL)] + [f"p{i}" for i in range(N_PARQUET)]
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert [parts[0].schema.field(n).type for n in OUTPUT_SCHEMA.names] == list(OUTPUT_SCHEMA.types)

    price = Price(2.0, 6.0)
    for r in rows:
        # Each completion answers its own prompt: the simulator stamps the prompt's digest on it.
        messages = build_row({"text": r["text"]}, 0, "w", PromptSpec(**PROMPT), Params()).messages
        assert r["completion"].startswith(f"[{prompt_digest(messages)}]"), r["id"]
        assert r["status"] == "ok" and r["error"] is None and r["attempts"] == 1
        assert r["source"] == ("jsonl" if r["id"].startswith("j") else "parquet") and r["batch"] in (0, 1, 2)
        assert r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"]
        assert r["cost_usd"] == pytest.approx(price.cost(r["prompt_tokens"], r["completion_tokens"]))
        assert r["model"] == MODEL and r["response_id"]
        if logprobs and sim_logprobs != "reject":
            assert r["logprobs"] and len(r["logprobs"]) == r["completion_tokens"]
            assert {"token", "logprob", "top_logprobs"} == set(r["logprobs"][0])
            assert len(r["logprobs"][0]["top_logprobs"]) == 2
        else:
            assert r["logprobs"] is None

    billed = sim.stats()
    assert sum(r["prompt_tokens"] for r in rows) == billed["billed_prompt_tokens"]
    assert sum(r["completion_tokens"] for r in rows) == billed["billed_completion_tokens"]

    assert manifest["rows"] == {"total": 200, "ok": 200, "filtered": 0, "error": 0}
    assert manifest["tokens"]["prompt"] == billed["billed_prompt_tokens"]
    assert manifest["tokens"]["completion"] == billed["billed_completion_tokens"]
    assert manifest["cost_usd"]["total"] == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-6)
    assert manifest["cost_usd"]["by_model"] == {MODEL: pytest.approx(manifest["cost_usd"]["total"], abs=1e-6)}
    assert [p["rows"] for p in manifest["parts"]] == [len(p) for p in parts]
    assert manifest["job_hash"] and manifest["inputs"] == [f"az://{container}/set/a.jsonl",
                                                           f"az://{container}/set/b.parquet"]


def test_rejected_key_fails_the_flow(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", "wrong")
    sim = simulator("--api-key", "right", "--latency", "0")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(500)))
    spec = {**job(sim.url, "unused", "mistral", False), "input": str(tmp_path / "p.jsonl"),
            "output": str(tmp_path / "out")}
    with pytest.raises(AuthRejectedError):
        asyncio.run(run_batch(spec))
    assert sim.stats()["unauthorized"] == 1  # the first answer stops the job


def test_key_from_a_prefect_secret_block(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    from flows.pipeline import JobError

    monkeypatch.delenv("TEST_SIM_KEY", raising=False)
    sim = simulator("--api-key", "sk-from-a-block-42", "--latency", "0")
    Secret(value="sk-from-a-block-42").save("promptbatch-test-key", overwrite=True)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(20)))
    spec = {**job(sim.url, "unused", "mistral", False), "input": str(tmp_path / "p.jsonl"),
            "output": str(tmp_path / "out")}
    spec["endpoint"] = {**spec["endpoint"], "api_key_secret": "promptbatch-test-key"}
    summary = asyncio.run(run_batch(spec))
    assert summary["rows"]["ok"] == 20 and sim.stats().get("unauthorized", 0) == 0

    spec["endpoint"]["api_key_secret"] = "no-such-block"
    with pytest.raises(JobError, match="Prefect Secret block 'no-such-block' not found"):
        asyncio.run(run_batch({**spec, "output": str(tmp_path / "out2")}))


def test_demo_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "demo"), "--rows", "40"])
    assert result.exit_code == 0, result.output
    assert "rows:     40 (40 ok, 0 filtered, 0 error)" in result.output
    assert "cost:     $" in result.output
    assert len(pq.read_table(tmp_path / "demo" / "output")) == 40


def test_cli_run_with_a_rejected_key_exits_3_with_one_line(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", "sk-wrong-0123456789")
    sim = simulator("--api-key", "right", "--latency", "0")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    spec = {**job(sim.url, "unused", "mistral", False), "input": str(tmp_path / "p.jsonl"),
            "output": str(tmp_path / "out")}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(spec))  # JSON is YAML
    result = CliRunner().invoke(main, ["run", str(job_file)])
    assert result.exit_code == 3
    failure = [line for line in result.output.splitlines() if line.startswith("promptbatch:")]
    assert len(failure) == 1 and "refused the job's key" in failure[0] and "HTTP 401" in failure[0]
    assert "sk-wrong-0123456789" not in result.output
