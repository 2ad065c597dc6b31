"""A labeling job through the CLI under Prefect: the summary and the manifest count labels, invalid rows, copies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.cli import main
from tests.conftest import SimulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "label-run-key-5521"


def test_labeling_job_end_to_end(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LABEL_RUN_KEY", KEY)
    sim = simulator("--requests-per-minute", "1000000", "--tokens-per-minute", "100000000", "--latency", "0",
                    "--per-token", "0", "--model", "mistral-small-2402", "--api-key", KEY)
    texts = [f"review {i % 40}" + (" [[invalid]]" if i % 40 == 0 else "") for i in range(60)]  # 20 copies
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                               for i, t in enumerate(texts)))
    job = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out"), "shard_rows": 25,
           "endpoint": {"url": sim.url, "model": "mistral-small-2402", "api_key_env": "TEST_LABEL_RUN_KEY"},
           "prompt": {"template": "Label: {text}"}, "params": {"max_tokens": 24},
           "response": {"labels": {"sentiment": ["positive", "negative", "neutral"]}, "reask": 1}}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))

    result = CliRunner().invoke(main, ["run", "--no-progress", str(path)])
    assert result.exit_code == 0, result.output[-3000:]
    assert "(58 ok, 0 filtered, 0 error, 2 invalid)" in result.output
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows"] == {"total": 60, "ok": 58, "filtered": 0, "error": 0, "invalid": 2}
    assert manifest["duplicates"] == 20 and sum(manifest["labels"]["label_sentiment"].values()) == 58
    assert manifest["tokens"]["prompt"] == sim.stats()["billed_prompt_tokens"]
    assert sim.stats()["billed_requests"] == 40 + 1  # the distinct requests and one re-ask of the marked one
