"""``promptbatch estimate`` against what the same job really costs on the simulator, under Prefect."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from flows.batch import run_batch
from flows.estimate import ARTIFACT_KEY, estimate_job
from tests.conftest import Azurite, CliRun, SimulatorProcess
from tests.flows.test_faults import write_bad_inputs
from workers.tokens import TokenCounter

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

MODEL = "mistral-large-2407"
FAST = ("--requests-per-minute", "600000", "--tokens-per-minute", "100000000", "--latency", "0", "--per-token", "0")
WORDS = ("the council approved budget after debate heavy rain expected across north museum will reopen month "
         "researchers found regular walks improve sleep national team final match train services cities").split()


def job(url: str, input: str, output: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": input,
        "output": output,
        "endpoint": {"url": url, "model": MODEL, "api_key_env": "TEST_SIM_KEY", "requests_per_minute": 600_000,
                     "tokens_per_minute": 100_000_000},
        "prompt": {"system": "You translate English news into Italian.", "template": "Translate to Italian: {text}"},
        "params": {"max_tokens": 150},
        "shard_rows": 2_000,
        **extra,
    }


def prompt_set(rows: int, seed: int = 1) -> list[str]:
    """Translation rows of 3–120 words, some multi-turn conversations, some per-row max_tokens."""
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 120)))
        if i % 10 == 3:
            record: dict[str, Any] = {"id": f"r{i}", "messages": [
                {"role": "user", "content": "Translate to Italian: good morning"},
                {"role": "assistant", "content": "Buongiorno "},
                {"role": "user", "content": f"Now this: {text}"}]}
        else:
            record = {"id": f"r{i}", "text": text}
        if i % 17 == 5:
            record["params"] = {"max_tokens": 40}
        lines.append(json.dumps(record))
    return lines


def completion_figures(report: dict[str, Any]) -> str:
    c = report["tokens"]["completion"]
    return f"{c['expected']:,} ({c['low']:,}–{c['high']:,}, ceiling {c['ceiling']:,})"


def test_estimate_matches_the_bill_of_the_real_run(blob_env: Azurite, cli: Callable[..., CliRun], tmp_path: Path,
                                                   simulator: Callable[..., SimulatorProcess],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sim = simulator(*FAST)
    service = BlobServiceClient.from_connection_string(blob_env.connection_string)
    service.create_container("estimate")
    service.get_blob_client("estimate", "in/prompts.jsonl").upload_blob("\n".join(prompt_set(5_000)).encode())
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(job(sim.url, "az://estimate/in/prompts.jsonl", "az://estimate/out/")))

    estimate = cli("estimate", str(job_file), "--sample", "50", "--json", env={"TEST_SIM_KEY": "k"})
    assert estimate.wait() == 0, estimate.output()[-3000:]
    report = json.loads(estimate.stdout.read_text())
    sampled = sim.stats()
    assert sampled["billed_requests"] == 50 == report["sample"]["answered"]  # the sample, and nothing else
    assert "--sample 50 sends 50 real requests" in estimate.stderr.read_text()

    monkeypatch.setenv("TEST_SIM_KEY", "k")
    summary = asyncio.run(run_batch(str(job_file)))
    after = sim.stats()
    billed_prompt = after["billed_prompt_tokens"] - sampled["billed_prompt_tokens"]
    billed_completion = after["billed_completion_tokens"] - sampled["billed_completion_tokens"]

    print(f"estimate: prompt {report['tokens']['prompt']:,}, completion {completion_figures(report)}, "
          f"cost {report['cost_usd']}; run: prompt {billed_prompt:,}, completion {billed_completion:,}, "
          f"cost {summary['cost_usd']['total']:.6f}")
    assert summary["rows"]["ok"] == report["rows"]["to_send"] == 5_000
    assert report["tokens"]["prompt"] == billed_prompt == summary["tokens"]["prompt"]
    completion = report["tokens"]["completion"]
    assert completion["basis"] == "sample"
    assert abs(completion["expected"] - billed_completion) <= 0.15 * billed_completion, (completion, billed_completion)
    assert completion["low"] <= billed_completion <= completion["high"], (completion, billed_completion)
    cost = report["cost_usd"]
    assert cost["low"] <= summary["cost_usd"]["total"] <= cost["high"] <= cost["ceiling"]
    # The duration the quotas allow: the simulator's were the job's, so this run's charge set it.
    assert report["duration_s"]["quota_tokens"] == after["admitted_tokens"] - sampled["admitted_tokens"]


def test_a_dry_run_sends_nothing_and_names_the_rows_it_cannot_send(
        tmp_path: Path, cli: Callable[..., CliRun], simulator: Callable[..., SimulatorProcess],
        prefect_harness: str) -> None:
    sim = simulator(*FAST)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_bad_inputs(inputs)
    huge_answer = {"id": "huge-answer", "text": "short", "params": {"max_tokens": 131_072}}
    (inputs / "e.jsonl").write_text(json.dumps(huge_answer))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(job(sim.url, str(inputs), str(tmp_path / "out"))))

    shown = cli("estimate", str(job_file))  # no key in the environment: a dry run needs none
    assert shown.wait() == 0, shown.output()[-3000:]
    table = shown.stdout.read_text()
    report = asyncio.run(estimate_job(str(job_file), completion_ratio=0.5))
    assert sim.stats().get("requests", 0) == 0 and not (tmp_path / "out").exists()

    assert report["rows"] == {"total": 30, "to_send": 20, "bad_input": 8, "over_context": 2, "refused_by_template": 0}
    assert any("a.jsonl line 13: field `text`: missing" in line for line in report["bad_input"]["first"])
    assert any("d.parquet: not a readable Parquet file" in line for line in report["bad_input"]["first"])
    over = report["over_context"]["first"]
    assert "a.jsonl line 16: prompt of" in over[0] and "e.jsonl line 1: prompt of" in over[1]
    # Counted the reference way, row by row: the same total, and the ratio applied row by row.
    counter = TokenCounter(MODEL)
    good = [[{"role": "system", "content": "You translate English news into Italian."},
             {"role": "user", "content": f"Translate to Italian: good row {i}"}] for i in range(20)]
    prompts = [counter.reference_prompt_tokens(m) for m in good]
    assert report["tokens"]["prompt"] == sum(prompts)
    assert report["tokens"]["completion"]["expected"] == sum(min(150, round(0.5 * p)) for p in prompts)
    assert [Path(name).name for name in report["empty_inputs"]] == ["b-empty.jsonl"]

    assert f"{report['tokens']['prompt']:,}" in table and "prompt tokens (exact)" in table
    assert "8 rows bad input" in table and "a.jsonl line 11: not valid JSON" in table
    with httpx.Client(base_url=prefect_harness, timeout=30) as client:
        artifacts = client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [ARTIFACT_KEY]}}}).json()
    markdowns = [a["data"] for a in artifacts if a["type"] == "markdown"]
    assert any(f"| prompt tokens (exact) | {report['tokens']['prompt']:,} |" in m and "a.jsonl line 16" in m
               for m in markdowns)


def test_sample_and_ratio_are_one_or_the_other(tmp_path: Path, cli: Callable[..., CliRun]) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(job("http://127.0.0.1:9", str(tmp_path / "in.jsonl"), str(tmp_path / "out"))))
    run = cli("estimate", str(job_file), "--sample", "5", "--completion-ratio", "0.5")
    assert run.wait() == 2
    assert "give --sample or --completion-ratio, not both" in run.stderr.read_text()
