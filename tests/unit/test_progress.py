"""What the progress bar and the artifacts say."""

from __future__ import annotations

from flows.pipeline import Snapshot
from flows.progress import describe, eta_s, summary_markdown


def test_progress_line_names_rows_rate_against_quota_cost_and_eta() -> None:
    snap = Snapshot(rows_done=250, rows_total=1000, tokens_per_minute=180_000, quota_tokens_per_minute=200_000,
                    cost_usd=1.5, elapsed_s=60)
    assert eta_s(snap) == 180  # 750 rows left at 250 a minute
    line = describe(snap)
    assert "250 of 1,000 rows" in line and "180,000 tokens/min (90% of quota)" in line
    assert "$1.5000" in line and "ETA 3:00" in line
    # Rows an earlier run finished do not count towards this run's pace.
    assert eta_s(snap, rows_before=200) == 750 * 60 / 50


def test_unknown_total_gives_no_eta() -> None:
    snap = Snapshot(10, None, 0, 200_000, 0.0, 5)
    assert eta_s(snap) is None and "ETA –" in describe(snap) and " of " not in describe(snap).split("rows")[0]


def test_summary_table_has_outcomes_and_cost_by_model() -> None:
    manifest = {"status": "complete", "rows": {"total": 12, "ok": 10, "filtered": 1, "error": 1},
                "tokens": {"prompt": 1200, "completion": 800}, "prices_as_of": "2026-11-23", "wall_time_s": 3.2,
                "cost_usd": {"total": 0.0072, "by_model": {"mistral-large-2407": 0.0072}},
                "workers": {"w1": [0, 2], "w2": [1]}}
    text = summary_markdown(manifest)
    assert "| ok | 10 |" in text and "| error | 1 |" in text and "| mistral-large-2407 | 0.007200 |" in text
    assert "| w1 | 0, 2 |" in text and "| w2 | 1 |" in text
    linked = summary_markdown(manifest, ("/data/out/_report.html", "http://a: 2 429s"))
    assert "[/data/out/_report.html](file:///data/out/_report.html)" in linked and "http://a: 2 429s" in linked
