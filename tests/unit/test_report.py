"""The report: what it draws is what the metrics hold; it opens offline; no secret in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flows.cli import main
from flows.logs import register_secret
from flows.metrics import Recorder, write_metrics
from flows.report import REPORT, plotted, render_html, text_summary, write_report
from flows.storage import storage_for
from tests.report_page import Page

URL = "https://mistral-large-xyz.eastus2.inference.ai.azure.com"
T0 = 1_800_000_000.0


def busy_recorder() -> Recorder:
    """Six buckets: the job states 200,000 tokens/min, the deployment admits 40,000; 429s early on."""
    r = Recorder()
    requests = tokens = refused = 0
    for bucket in range(6):
        now = T0 + bucket * 10 + 5
        requests, tokens = requests + 12, tokens + 6_000
        refused += 3 if bucket < 2 else 0
        r.sample(now, URL, "mistral-large-2407", requests=requests, tokens=tokens, responses_429=refused,
                 pauses=refused, quota=(200_000, 1_000), learned=(40_000, 200))
        for i in range(10):
            r.row(now, URL, "mistral-large-2407", "error" if i == 9 else "ok", prompt_tokens=100,
                  completion_tokens=50, cost_usd=0.0005, latency_ms=300 + 40 * i, attempts=1)
    return r


def manifest_for(data: dict[str, Any]) -> dict[str, Any]:
    t = data["totals"]
    return {"status": "complete", "job_hash": "abc", "output": "/data/out", "rows": t["rows"],
            "tokens": {"prompt": t["prompt_tokens"], "completion": t["completion_tokens"]},
            "cost_usd": {"total": t["cost_usd"], "by_model": data["cost"]["by_model"]}, "wall_time_s": 60.0,
            "prices_as_of": "2026-11-23",
            "quota_learned": {URL: {"tokens_per_minute": 40_000, "requests_per_minute": 200,
                                    "job_says": {"tokens_per_minute": 200_000, "requests_per_minute": 1_000}}}}


class TestReport:
    """Series, totals and text of a 429-heavy run whose job overstates the quota."""

    def test_series_match_the_metrics(self) -> None:
        data = plotted(busy_recorder())
        d = data["deployments"][URL]
        assert d["tokens_per_min"] == [36_000.0] * 6 and d["responses_429"] == [3, 3, 0, 0, 0, 0]
        assert d["tokens_utilization"] == pytest.approx(0.18) and d["tokens_of_learned"] == pytest.approx(0.9)
        assert data["totals"]["rows"] == {"total": 60, "ok": 54, "filtered": 0, "error": 6}
        assert data["cost"]["cumulative"][-1] == pytest.approx(0.03)

        page = Page()
        page.feed(render_html(data, manifest_for(data)))
        assert page.data == data
        assert page.series[f"tokens_per_min:{URL}"] == 6 and page.series[f"learned_tpm:{URL}"] == 6
        assert f"quota_tpm:{URL}" not in page.series  # 5× above what is admitted: off the chart, said in its label
        assert page.series[f"responses_429:{URL}"] == 2 and page.series[f"pauses:{URL}"] == 2
        assert page.series["rows:ok"] == 6 and page.series["rows:error"] == 6 and page.series["rows:filtered"] == 0
        assert page.series["latency_p50"] == 6 and page.series["cost_cumulative"] == 6

    def test_offline_and_text(self) -> None:
        data = plotted(busy_recorder())
        html = render_html(data, manifest_for(data))
        assert "<script src" not in html and "http://www.w3.org/2000/svg" in html and "<link" not in html
        text = text_summary(data, {**manifest_for(data), "rows": {"total": 70}})
        assert "18% (90% of learned)" in text and "429s: 6, pauses: 6" in text
        assert "metrics cover 60 of the output's 70" in text

    def test_written_beside_the_output_without_secrets(self, tmp_path: Path) -> None:
        secret = "sv=2024&sig=abcdefghSECRET"
        register_secret("k-report-secret-77")
        store = storage_for(str(tmp_path))
        write_metrics(store, str(tmp_path), busy_recorder())
        manifest = manifest_for(plotted(busy_recorder()))
        manifest["output"] = f"/data/out?{secret} k-report-secret-77"
        where, text = write_report(store, str(tmp_path), manifest)
        html = (tmp_path / REPORT).read_text()
        assert where == str(tmp_path / REPORT) and "SECRET" not in html and "k-report-secret-77" not in html
        assert "429s" in text

    def test_an_empty_run_still_renders(self) -> None:
        data = plotted(Recorder())
        assert "promptbatch run" in render_html(data, manifest_for(data))
        short = Recorder()
        short.sample(T0, URL, "mistral-large-2407", requests=1, tokens=500, responses_429=0, pauses=0,
                     quota=(200_000, 1_000), learned=(200_000, 1_000))
        assert plotted(short)["deployments"][URL]["tokens_utilization"] is None  # one bucket: too short to tell

    def test_the_command(self, tmp_path: Path) -> None:
        refused = CliRunner().invoke(main, ["report", str(tmp_path)])
        assert refused.exit_code == 2 and "no _manifest.json" in refused.output
        store = storage_for(str(tmp_path))
        write_metrics(store, str(tmp_path), busy_recorder())
        (tmp_path / "_manifest.json").write_text(json.dumps(manifest_for(plotted(busy_recorder()))))
        done = CliRunner().invoke(main, ["report", str(tmp_path)])
        assert done.exit_code == 0 and f"report:   {tmp_path / REPORT}" in done.output
        assert "429s: 6" in done.output and (tmp_path / REPORT).stat().st_size > 5_000
