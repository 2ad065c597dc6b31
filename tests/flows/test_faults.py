"""Faults, bad input and secrets, end to end: the simulator's faults, Azurite, the CLI, Prefect's records."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from flows.batch import run_batch
from tests.conftest import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, CliRun, SimulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

MODEL = "mistral-large-2407"


def job(url: str, input: str, output: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": input,
        "output": output,
        "endpoint": {"url": url, "model": MODEL, "api_key_env": "TEST_SIM_KEY", "requests_per_minute": 600_000,
                     "tokens_per_minute": 100_000_000, **extra.pop("endpoint", {})},
        "prompt": {"template": "Translate to Italian: {text}"},
        "params": {"max_tokens": 30},
        "shard_rows": 100,
        **extra,
    }


def blob_rows(azurite: Azurite, container: str, prefix: str) -> list[dict[str, Any]]:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.get_container_client(container)
    tables = [pq.read_table(io.BytesIO(client.download_blob(b.name).readall()))
              for b in client.list_blobs(name_starts_with=prefix + "part-") if b.name.endswith(".parquet")]
    return pa.concat_tables(tables).to_pylist()


def test_fault_matrix_every_row_once_with_a_status(blob_env: Azurite, simulator: Callable[..., SimulatorProcess],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", "k")
    sim = simulator("--requests-per-minute", "600000", "--tokens-per-minute", "100000000", "--latency", "0.005",
                    "--per-token", "0", "--hang", "30",
                    "--faults", "server_error=0.05,reset=0.02,hang=0.01,truncate=0.01,filter=0.01,filter_400=0.01")
    service = BlobServiceClient.from_connection_string(blob_env.connection_string)
    service.create_container("faults")
    lines = [json.dumps({"id": f"f{i}", "text": f"Sentence {i} about the sea"}) for i in range(500)]
    service.get_blob_client("faults", "in/p.jsonl").upload_blob("\n".join(lines).encode())
    spec = job(sim.url, "az://faults/in/p.jsonl", "az://faults/out/", endpoint={"timeout_s": 1.0}, max_attempts=6)

    summary = asyncio.run(run_batch(spec))
    rows = blob_rows(blob_env, "faults", "out/")
    assert sorted(r["id"] for r in rows) == sorted(f"f{i}" for i in range(500))  # none lost, none doubled
    stats = sim.stats()
    assert stats["fault_server_error"] and stats["fault_reset"] and stats["fault_hang"] and stats["fault_truncate"]
    for r in rows:
        assert r["status"] in ("ok", "filtered", "error")
        if r["status"] == "ok":
            assert r["completion"] and r["error"] is None and r["attempts"] >= 1
        elif r["status"] == "filtered":
            assert r["finish_reason"] == "content_filter" and r["error"] is None
        else:  # attempts spent: the reason says so
            assert r["attempts"] == 6 and "gave up after 6 attempts" in r["error"]
    by_status = {s: sum(r["status"] == s for r in rows) for s in ("ok", "filtered", "error")}
    assert by_status["filtered"] >= 1 and by_status["ok"] >= 450
    assert max(r["attempts"] for r in rows) > 1
    assert summary["rows"] == {"total": 500, **by_status}
    assert not [b for b in service.get_container_client("faults").list_blobs(name_starts_with="out/_journal/")]


def write_bad_inputs(folder: Path) -> None:
    good = [{"id": f"g{i}", "text": f"good row {i}"} for i in range(20)]
    lines = [json.dumps(r) for r in good[:10]]
    lines += [
        '{"id": "broken", "text": ',                                                      # line 11
        json.dumps(["not", "an", "object"]),                                              # line 12
        json.dumps({"id": "no-text", "body": "the template needs `text`"}),              # line 13
        json.dumps({"id": "bad-role", "messages": [{"role": "robot", "content": "hi"}]}),  # line 14
        json.dumps({"id": "bad-content", "messages": [{"role": "user", "content": 42}]}),  # line 15
        json.dumps({"id": "too-long", "text": "word " * 140_000}),                        # line 16
    ]
    lines += [json.dumps(r) for r in good[10:]]
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "b-empty.jsonl").write_text("")
    pq.write_table(pa.table({"id": ["w1", "w2"], "body": ["no text column", "here either"]}), folder / "c.parquet")
    (folder / "d.parquet").write_bytes(b"this is not parquet at all")


def test_bad_input_is_reported_by_position_and_good_rows_run(tmp_path: Path, cli: Callable[..., CliRun],
                                                             simulator: Callable[..., SimulatorProcess]) -> None:
    sim = simulator("--requests-per-minute", "600000", "--tokens-per-minute", "100000000", "--latency", "0")
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bad_inputs(inputs)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(job(sim.url, str(inputs), str(tmp_path / "out"))))

    run = cli("run", str(job_file), env={"TEST_SIM_KEY": "k"})
    assert run.wait() == 0, run.output()[-3000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert len(rows) == 20 + 6 + 2 + 1  # good rows, bad lines, bad Parquet rows, the unreadable file
    assert all(r["status"] == "ok" for r in rows if (r["id"] or "").startswith("g"))
    errors = [r["error"] for r in rows if r["status"] == "error"]
    expected = [
        "a.jsonl line 11: not valid JSON",
        "a.jsonl line 12: expected a JSON object, got list",
        "a.jsonl line 13: field `text`: missing",
        "a.jsonl line 14: field `messages[0].role`: must be one of",
        "a.jsonl line 15: field `messages[0].content`: must be a string, got int",
        "a.jsonl line 16: prompt of",
        "c.parquet row 1: field `text`: missing",
        "c.parquet row 2: field `text`: missing",
        "d.parquet: not a readable Parquet file",
    ]
    assert len(errors) == len(expected)
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith("bad input: ") and start in error, error
    assert "exceeds the 131072-token context of mistral-large-2407" in errors[5]
    assert sim.stats().get("requests", 0) == 20  # bad rows never reach the endpoint

    out = run.output()
    assert "bad input: 9 rows" in out and "a.jsonl line 11: not valid JSON" in out
    assert "empty input file: " in out and "b-empty.jsonl" in out
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["bad_input"]["rows"] == 9 and "a.jsonl line 11: not valid JSON" in manifest["bad_input"]["first"][0]
    assert manifest["rows"] == {"total": 29, "ok": 20, "filtered": 0, "error": 9}


def prefect_records(api_url: str) -> str:
    """Everything Prefect's server keeps about the session's runs: runs, task runs, logs, artifacts."""
    dumps = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for route in ("/flow_runs/filter", "/task_runs/filter", "/logs/filter", "/artifacts/filter"):
            offset = 0
            while True:
                page = client.post(route, json={"limit": 200, "offset": offset}).raise_for_status().json()
                dumps.append(json.dumps(page))
                if len(page) < 200:
                    break
                offset += 200
    return "\n".join(dumps)


def test_secrets_appear_nowhere_the_job_wrote(tmp_path: Path, azurite: Azurite, cli: Callable[..., CliRun],
                                              simulator: Callable[..., SimulatorProcess], prefect_harness: str) -> None:
    key = "sk-live-7f3a9c0e5b1d4e2f8a6b"
    sim = simulator("--api-key", key, "--latency", "0", "--faults", "server_error=0.1",
                    "--requests-per-minute", "600000", "--tokens-per-minute", "100000000")  # the job's quota
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container("secrets")
    lines = [json.dumps({"id": f"s{i}", "text": f"secret row {i}"}) for i in range(120)]
    service.get_blob_client("secrets", "in/p.jsonl").upload_blob("\n".join(lines).encode())
    sas = generate_container_sas(AZURITE_ACCOUNT, "secrets", account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    add=True, create=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    signature = [p for p in sas.split("&") if p.startswith("sig=")][0].removeprefix("sig=")
    env = {"TEST_SIM_KEY": key, "AZURE_STORAGE_ACCOUNT_URL": azurite.account_url, "AZURE_STORAGE_SAS_TOKEN": sas}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(job(sim.url, "az://secrets/in/p.jsonl", "az://secrets/out/")))

    ok = cli("--json-logs", "run", str(job_file), env=env)
    assert ok.wait() == 0, ok.output()[-3000:]
    # A rejected key, and storage that refuses the SAS: failures must not print them either.
    wrong = cli("run", str(job_file), "--output", "az://secrets/out2/", env={**env, "TEST_SIM_KEY": key + "x"})
    assert wrong.wait() == 3
    denied = cli("run", str(job_file), "--output", "az://secrets/out3/",
                 env={**env, "AZURE_STORAGE_SAS_TOKEN": sas.replace(signature, signature[:-4] + "AAAA")})
    assert denied.wait() == 4, denied.output()[-3000:]

    written = [run.output() for run in (ok, wrong, denied)]
    client = service.get_container_client("secrets")
    for blob in client.list_blobs():
        if blob.name.startswith("in/"):
            continue
        data = client.download_blob(blob.name).readall()
        written.append(data.decode("latin-1"))
        if blob.name.endswith(".parquet"):  # compressed: search its values too
            written.append(json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str))
    written.append(prefect_records(prefect_harness))
    everything = "\n".join(written)
    assert "s119" in everything and "secret row" in everything  # the haystack holds the job's output
    for secret in (key, signature, AZURITE_KEY):
        assert secret not in everything
