"""Re-runs that are right: rows follow their identity, never their position, through every kind of edit.

Each case runs the real CLI (in this process, under the session's Prefect server) against the
simulator over HTTP; the simulator stamps every answer with a digest of the conversation it
answers, and counts prompts it billed more than once, so "each answer is its own prompt's" and
"nothing paid twice" are checked against what the endpoint saw.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from flows.cli import main
from flows.journal import journal_segments, read_journal
from flows.storage import storage_for
from schemas import Params, PromptSpec, build_row
from tests.conftest import CliRun, SimulatorProcess
from tests.flows.test_resume import wait_until
from workers.simulator import prompt_digest

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "sim-key-reruns"
TEMPLATE = "Translate to Italian: {text}"


@pytest.fixture
def sim(simulator: Callable[..., SimulatorProcess], monkeypatch: pytest.MonkeyPatch) -> SimulatorProcess:
    monkeypatch.setenv("TEST_SIM_KEY", KEY)
    return simulator("--api-key", KEY, "--requests-per-minute", "600000", "--tokens-per-minute", "1000000000",
                     "--latency", "0.01", "--per-token", "0")


def row(i: int | str, text: str | None = None) -> dict[str, Any]:
    """A prompt row whose passthrough column names its own id (so a mix-up shows)."""
    return {"id": f"r{i}", "text": text or f"Row {i}: the harbour was quiet this morning", "k": f"k-r{i}"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_job(folder: Path, url: str, input_: str, output: str | None = None, **extra: Any) -> Path:
    job = {"input": input_, "output": output or str(folder / "out"),
           "endpoint": {"url": url, "model": "mistral-large-2407", "api_key_env": "TEST_SIM_KEY",
                        "requests_per_minute": 600_000, "tokens_per_minute": 1_000_000_000},
           "prompt": {"template": TEMPLATE}, "params": {"max_tokens": 30}, "shard_rows": 10, **extra}
    path = folder / "job.yaml"
    path.write_text(json.dumps(job))
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", "--no-progress", *args])


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def output(folder: Path) -> list[dict[str, Any]]:
    tables = [pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []


def assert_each_answers_its_own_row(rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    """Every input row exactly once, in input order, with its own passthrough and its own prompt's answer."""
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    by_id = {i["id"]: i for i in inputs}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["k"] == f"k-{r['id']}"
        messages = build_row({"text": by_id[r["id"]]["text"]}, 0, "w", PromptSpec(template=TEMPLATE),
                             Params()).messages
        assert r["completion"].startswith(f"[{prompt_digest(messages)}]"), r["id"]


def assert_paid_once(sim: SimulatorProcess, requests: int) -> None:
    stats = sim.stats()
    assert stats["prompts_billed_more_than_once"] == 0
    assert stats["billed_requests"] == requests


def test_rows_appended_are_sent_and_the_rest_kept(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(25)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    job = write_job(tmp_path, sim.url, str(prompts))
    ok(run(str(job)))
    rows += [row(i) for i in range(25, 40)]
    write_jsonl(prompts, rows)
    out = ok(run(str(job)))
    assert "rows:     40 (40 ok" in out and "inputs changed since the last run" in out
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    assert_paid_once(sim, 40)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["input_rows"] == 40 and manifest["rows"]["ok"] == 40


def test_an_edited_prompt_is_sent_again_and_only_it(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(30)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    job = write_job(tmp_path, sim.url, str(prompts))
    ok(run(str(job)))
    rows[5] = row(5, "Row 5, edited: the storm closed the port")
    write_jsonl(prompts, rows)
    ok(run(str(job)))
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    assert_paid_once(sim, 31)


def test_a_passthrough_edit_rewrites_the_part_and_sends_nothing(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(20)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    job = write_job(tmp_path, sim.url, str(prompts))
    ok(run(str(job)))
    part = tmp_path / "out" / "part-000000.parquet"
    untouched = (tmp_path / "out" / "part-000001.parquet").stat().st_mtime_ns
    rows[3] = {**rows[3], "k": "checked by hand"}
    write_jsonl(prompts, rows)
    ok(run(str(job)))
    assert [r.get("k") for r in pq.read_table(part).to_pylist()][3] == "checked by hand"
    assert (tmp_path / "out" / "part-000001.parquet").stat().st_mtime_ns == untouched  # its shard did not change
    # A column new to the input: every part gets it (null where the rows have none), answers kept.
    before = pq.read_table(tmp_path / "out" / "part-000001.parquet").to_pylist()
    rows[3] = {**rows[3], "note": "checked by hand"}
    write_jsonl(prompts, rows)
    ok(run(str(job)))
    assert [r.get("note") for r in pq.read_table(part).to_pylist()][3] == "checked by hand"
    after = pq.read_table(tmp_path / "out" / "part-000001.parquet").to_pylist()
    assert after == [{**r, "note": None} for r in before]
    assert_paid_once(sim, 20)


def test_deleted_rows_leave_the_output_and_nothing_is_sent(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(30)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    job = write_job(tmp_path, sim.url, str(prompts))
    ok(run(str(job)))
    rows = rows[:3] + rows[6:21]  # 12 rows gone: the layout shifts and the last two parts go
    write_jsonl(prompts, rows)
    out = ok(run(str(job)))
    assert "12 dropped" in out
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-000000.parquet",
                                                                         "part-000001.parquet"]
    assert_paid_once(sim, 30)


def test_a_row_inserted_at_the_top_after_a_budget_stop(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(30)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    stopped = run(str(write_job(tmp_path, sim.url, str(prompts), budget_usd=0.0015)))
    assert stopped.exit_code == 6, stopped.output[-3000:]
    journaled = [json.loads(line) for seg in (tmp_path / "out" / "_journal").glob("*.jsonl")
                 for line in seg.read_text().splitlines()]
    billed = sim.stats()["billed_requests"]
    assert 0 < len(journaled) == billed < 30
    # The stop counts what the journal holds, not only what reached a part.
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["rows"]["total"] == billed
    assert f"rows:     {billed} of 30" in stopped.output
    assert manifest["cost_usd"]["total"] == pytest.approx(sum(r["cost_usd"] for r in journaled))

    rows.insert(0, row("new", "A row put first after the stop"))
    write_jsonl(prompts, rows)
    ok(run(str(write_job(tmp_path, sim.url, str(prompts), budget_usd=1.0))))
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    assert_paid_once(sim, 31)
    assert not (tmp_path / "out" / "_journal").exists()


def test_a_fixed_parquet_file_with_retry_errors(tmp_path: Path, sim: SimulatorProcess) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"PAR1 this is not parquet")
    b_rows = [row(f"b{i}") for i in range(5)]
    write_jsonl(folder / "b.jsonl", b_rows)
    job = write_job(tmp_path, sim.url, str(folder), shard_rows=4)
    ok(run(str(job)))
    first = output(tmp_path / "out")
    assert [r["status"] for r in first] == ["error"] + ["ok"] * 5

    a_rows = [row(f"a{i}") for i in range(3)]
    pq.write_table(pa.Table.from_pylist(a_rows), folder / "a.parquet")
    ok(run(str(job), "--retry-errors"))
    assert_each_answers_its_own_row(output(tmp_path / "out"), a_rows + b_rows)
    assert_paid_once(sim, 8)


def test_an_unchanged_complete_output_sends_nothing(tmp_path: Path, sim: SimulatorProcess) -> None:
    rows = [row(i) for i in range(12)]
    job = write_job(tmp_path, sim.url, str(write_jsonl(tmp_path / "p.jsonl", rows)))
    ok(run(str(job)))
    again = ok(run(str(job)))
    assert "already complete" in again and "rows:     12 (12 ok" in again
    assert_paid_once(sim, 12)


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_lost_manifest_is_rebuilt_from_the_parts(tmp_path: Path, sim: SimulatorProcess, damage: str) -> None:
    rows = [row(i) for i in range(25)]
    job = write_job(tmp_path, sim.url, str(write_jsonl(tmp_path / "p.jsonl", rows)))
    ok(run(str(job)))
    manifest = tmp_path / "out" / "_manifest.json"
    if damage == "truncated":
        manifest.write_text(manifest.read_text()[:40])
    else:
        manifest.unlink()
    out = ok(run(str(job)))
    assert "manifest_rebuilt" in out and "rows:     25 (25 ok" in out
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    assert_paid_once(sim, 25)
    assert json.loads(manifest.read_text())["status"] == "complete"


def test_two_nights_write_two_dated_outputs_and_the_pointer_names_the_newest(
        tmp_path: Path, sim: SimulatorProcess) -> None:
    nights = {"2026-11-23": [row(i, f"Night one, story {i}") for i in range(12)],
              "2026-11-24": [row(i, f"Night two, story {i}") for i in range(15)]}
    for day, rows in nights.items():
        (tmp_path / "prompts" / day).mkdir(parents=True)
        write_jsonl(tmp_path / "prompts" / day / "news.jsonl", rows)
    job = write_job(tmp_path, sim.url, str(tmp_path / "prompts" / "{date}" / "*.jsonl"),
                    output=str(tmp_path / "completions" / "{date:%Y/%m/%d}"))
    for day in nights:
        ok(run(str(job), "--date", day))
    for day, rows in nights.items():
        folder = tmp_path / "completions" / day.replace("-", "/")
        assert_each_answers_its_own_row(output(folder), rows)
        manifest = json.loads((folder / "_manifest.json").read_text())
        assert manifest["date"] == day and manifest["output"] == str(folder)
    pointer = json.loads((tmp_path / "completions" / "latest.json").read_text())
    assert pointer["date"] == "2026-11-24" and pointer["output"] == str(tmp_path / "completions/2026/11/24")
    assert pointer["rows"]["ok"] == 15

    again = ok(run(str(job), "--date", "2026-11-23"))  # a redo of an older day never moves the pointer back
    assert "already complete" in again
    assert json.loads((tmp_path / "completions" / "latest.json").read_text())["date"] == "2026-11-24"
    assert_paid_once(sim, 27)


def test_a_dated_job_with_an_unknown_placeholder_is_refused(tmp_path: Path, sim: SimulatorProcess) -> None:
    job = write_job(tmp_path, sim.url, str(tmp_path / "{day}.jsonl"))
    refused = run(str(job))
    assert refused.exit_code == 2
    assert "unknown placeholder `{day}`" in refused.output
    bad_date = run(str(write_job(tmp_path, sim.url, str(tmp_path / "{date}.jsonl"))), "--date", "23/11/2026")
    assert bad_date.exit_code == 2 and "expected YYYY-MM-DD" in bad_date.output
    assert sim.stats().get("billed_requests", 0) == 0


def test_a_wholly_different_prompt_set_is_refused(tmp_path: Path, sim: SimulatorProcess) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [row(i) for i in range(5)])
    ok(run(str(write_job(tmp_path, sim.url, str(first)))))
    other = write_jsonl(tmp_path / "b.jsonl", [row(i) for i in range(5)])
    refused = run(str(write_job(tmp_path, sim.url, str(other))))
    assert refused.exit_code == 2
    line = [x for x in refused.output.splitlines() if x.startswith("promptbatch:")]
    assert len(line) == 1 and "other input files" in line[0] and "a.jsonl" in line[0]
    assert os.path.exists(tmp_path / "out" / "part-000000.parquet")


def test_one_writer_per_output(tmp_path: Path, sim: SimulatorProcess, simulator: Callable[..., SimulatorProcess],
                               cli: Callable[..., CliRun]) -> None:
    slow = simulator("--api-key", KEY, "--requests-per-minute", "600", "--tokens-per-minute", "1000000000",
                     "--latency", "0.05", "--per-token", "0")
    rows = [row(i) for i in range(400)]
    job = write_job(tmp_path, slow.url, str(write_jsonl(tmp_path / "p.jsonl", rows)), shard_rows=50)
    holder = cli("run", "--no-progress", str(job), env={"TEST_SIM_KEY": KEY})
    wait_until(lambda: slow.stats().get("billed_requests", 0) >= 5 or holder.process.poll() is not None, 120,
               "the first run to get going")
    assert holder.process.poll() is None, holder.output()[-3000:]

    started = time.monotonic()
    second = run(str(job))
    assert second.exit_code == 2 and time.monotonic() - started < 15
    line = [x for x in second.output.splitlines() if x.startswith("promptbatch:")]
    assert len(line) == 1 and f"pid {holder.process.pid}" in line[0] and socket.gethostname() in line[0]
    assert "released when that process exits" in line[0]

    os.killpg(holder.process.pid, signal.SIGKILL)
    holder.wait(10)
    billed = slow.stats()["billed_requests"]
    journaled = _journaled_rows(tmp_path / "out")
    fast = write_job(tmp_path, sim.url, str(tmp_path / "p.jsonl"), shard_rows=50)  # same job, a faster deployment
    resumed = ok(run(str(fast)))
    assert "rows:     400 (400 ok" in resumed
    assert_each_answers_its_own_row(output(tmp_path / "out"), rows)
    # Every row the holder journaled is resumed, and only those: what was in flight when it died (admitted
    # and billed, its answer not yet read) is sent again. That is a burst of the slow start at most, plus
    # answers a loaded machine had not read yet (29 seen beside the rest of the suite, 0 alone).
    assert sim.stats()["billed_requests"] == 400 - journaled
    assert 0 <= billed - journaled <= 40


def test_estimate_of_a_dated_job_reads_that_day(tmp_path: Path, sim: SimulatorProcess) -> None:
    for day, n in (("2026-11-23", 4), ("2026-11-24", 9)):
        (tmp_path / day).mkdir()
        write_jsonl(tmp_path / day / "p.jsonl", [row(i) for i in range(n)])
    job = write_job(tmp_path, sim.url, str(tmp_path / "{date}" / "*.jsonl"), output=str(tmp_path / "o" / "{date}"))
    result = CliRunner().invoke(main, ["estimate", str(job), "--json", "--date", "2026-11-24"])
    assert result.exit_code == 0, result.output[-3000:]
    report = json.loads(result.output[result.output.index("{\n"):])
    assert report["rows"]["total"] == 9
    assert sim.stats().get("billed_requests", 0) == 0


def _journaled_rows(folder: Path) -> int:
    """Rows in the journal's segments, read as a resuming run reads them (a line cut by the kill is no row)."""
    storage = storage_for(str(folder))
    return sum(1 for name in journal_segments(storage, str(folder))
               for record in read_journal(storage, str(folder), name) if "seq" in record)
