"""Pacing over real HTTP: headers that mean nothing, and a quota the job got wrong, learned and said.

Short windows and high rates keep these to seconds; the real-time figures per world come from
``python -m benchmarks.quota --matrix``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flows.cli import main
from tests.conftest import SimulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "sim-key-pacing"


def job(tmp_path: Path, url: str, rows: int, tpm: int, rpm: int, window_s: float) -> Path:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "text": f"Story {i}: " + "the harbour was quiet " *
                                           (1 + i % 4)}) + "\n" for i in range(rows)))
    spec: dict[str, Any] = {
        "input": str(prompts), "output": str(tmp_path / "out"),
        "endpoint": {"url": url, "model": "mistral-large-2407", "api_key_env": "TEST_SIM_KEY",
                     "tokens_per_minute": tpm, "requests_per_minute": rpm, "quota_window_s": window_s},
        "prompt": {"template": "Translate to Italian: {text}"}, "params": {"max_tokens": 256}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    return path


def utilization(stats: dict[str, Any], tpm: int) -> float:
    span = stats["last_admission"] - stats["first_admission"]
    return stats["admitted_tokens"] / (tpm / 60 * span)


@pytest.mark.parametrize("headers", ["sentinel", "none"])
def test_headers_at_minus_one_or_absent_do_not_slow_the_job(
        tmp_path: Path, simulator: Callable[..., SimulatorProcess], monkeypatch: pytest.MonkeyPatch,
        headers: str) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", KEY)
    sim = simulator("--api-key", KEY, "--tokens-per-minute", "600000", "--requests-per-minute", "3000",
                    "--window", "2", "--headers", headers, "--latency", "0.05", "--per-token", "0.0005")
    result = CliRunner().invoke(main, ["run", "--no-progress", str(job(tmp_path, sim.url, 160, 600_000, 3_000, 2))])
    assert result.exit_code == 0, result.output[-3000:]
    stats = sim.stats()
    # The job once read -1 as "nothing left" and crawled at a tenth of the quota.
    # A handful of 429s while the pool finds this log is not a bucket (50 requests/s against 2 s windows:
    # what is in flight when a lesson lands is refused too); the real-time shares are in the benchmark.
    assert utilization(stats, 600_000) >= 0.85 and stats.get("rate_limited", 0) <= 10, stats


def test_an_overstated_quota_is_learned_and_said(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIM_KEY", KEY)
    sim = simulator("--api-key", KEY, "--tokens-per-minute", "120000", "--requests-per-minute", "600",
                    "--window", "2", "--headers", "none", "--latency", "0.05", "--per-token", "0.0005")
    result = CliRunner().invoke(main, ["run", "--no-progress",
                                       str(job(tmp_path, sim.url, 120, 600_000, 3_000, 2))])  # 5× the real one
    assert result.exit_code == 0, result.output[-3000:]
    assert "quota_learned" in result.output and "the deployment admits ≈" in result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    (found,) = manifest["quota_learned"].values()
    assert 100_000 <= found["tokens_per_minute"] <= 130_000 and found["job_says"]["tokens_per_minute"] == 600_000
    assert "admits ≈" in result.output.split("quota:    ", 1)[1]  # the summary says it too
    stats = sim.stats()
    # At 50 requests/s against a 2 s window the few requests in flight when each lesson is drawn
    # are refused too; the real-time figure (40,000 tokens/min, 10 s windows) is in the benchmark.
    # 13-14 alone (before and after the shared-quota change); beside the suite on two cores 23 and 33 were
    # seen, a loaded client having more in flight at each lesson: the bound catches a storm, not that.
    assert stats.get("rate_limited", 0) <= 40, stats
