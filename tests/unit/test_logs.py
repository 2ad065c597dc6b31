"""One stream of events: rendered readable, scrubbed, in one console format (or JSON lines)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from flows.logs import (
    ConsoleFormatter,
    ConsoleHandler,
    ScrubFilter,
    configure,
    explained_failures,
    quiet_on_console,
    register_secret,
    render,
)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Events as the ``promptbatch`` logger hands them on (outside a Prefect run)."""
    configure(console=False)
    handler = Capture()
    logger = logging.getLogger("promptbatch")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        structlog.reset_defaults()


class TestEvents:
    """An event becomes one ``logging`` record: its name and fields as text, the fields kept beside."""

    def test_rendered_with_its_fields(self, captured: Capture) -> None:
        structlog.get_logger("t").info("job_started", inputs=2, output="/data/out", endpoints=["https://a"],
                                       note="two words", skipped=None, share=0.123456789)
        (record,) = captured.records
        assert record.getMessage() == ('job_started inputs=2 output=/data/out endpoints=["https://a"] '
                                       'note="two words" share=0.123457')
        assert record.promptbatch["inputs"] == 2 and record.levelno == logging.INFO  # type: ignore[attr-defined]

    def test_secrets_are_masked_everywhere(self, captured: Capture) -> None:
        register_secret("k-logs-secret-4242")
        structlog.get_logger("t").warning("rate_limited", error="Bearer k-logs-secret-4242",
                                          nested={"urls": ["https://x/?sig=abcdef&sv=1"]})
        (record,) = captured.records
        assert "k-logs-secret-4242" not in record.getMessage() and "abcdef" not in record.getMessage()
        assert "abcdef" not in json.dumps(record.promptbatch)  # type: ignore[attr-defined]
        assert record.levelno == logging.WARNING

    def test_render_puts_the_traceback_last(self) -> None:
        event = {"event": "failed", "level": "error", "exception": "Traceback…", "n": 1}
        assert render(event) == "failed n=1\nTraceback…"


class TestConsole:
    """Prefect's records and promptbatch's events share one format; warnings stand out."""

    def record(self, message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
        record = logging.LogRecord("prefect.flow_runs", level, __file__, 1, message, None, None)
        record.__dict__.update(extra)
        return record

    def test_text(self) -> None:
        text = ConsoleFormatter("text")
        line = text.format(self.record("Finished in state Completed()", flow_run_name="bold-fox"))
        assert line.endswith(" info    bold-fox: Finished in state Completed()")
        ours = self.record("quota_learned tokens_per_minute=40000", logging.WARNING,
                           promptbatch={"event": "quota_learned"}, flow_run_name="bold-fox")
        assert text.format(ours).endswith(" WARNING quota_learned tokens_per_minute=40000")
        assert "\x1b[1;33m" in ConsoleFormatter("text", color=True).format(ours)

    def test_json(self) -> None:
        lines = ConsoleFormatter("json")
        ours = json.loads(lines.format(self.record("progress rows=3", promptbatch={
            "event": "progress", "rows": 3, "level": "info", "timestamp": "2026-12-01T10:00:00Z"})))
        assert ours == {"timestamp": "2026-12-01T10:00:00Z", "level": "info", "event": "progress", "rows": 3}
        theirs = json.loads(lines.format(self.record("Finished in state Completed()", flow_run_name="bold-fox")))
        assert theirs["event"] == "Finished in state Completed()" and theirs["run"] == "bold-fox"

    def test_the_bar_hides_progress_lines(self, capsys: pytest.CaptureFixture[str]) -> None:
        handler = ConsoleHandler()
        handler.setFormatter(ConsoleFormatter("text"))
        quiet_on_console.add("progress")
        try:
            handler.emit(self.record("progress rows=3", promptbatch={"event": "progress"}))
            handler.emit(self.record("job_finished rows=3", promptbatch={"event": "job_finished"}))
        finally:
            quiet_on_console.discard("progress")
        err = capsys.readouterr().err
        assert "job_finished" in err and "progress" not in err

    def test_failures_the_cli_explains_show_no_traceback(self) -> None:
        text = ConsoleFormatter("text")
        for failure, shown in ((LookupError("no such job"), False), (ZeroDivisionError("bug"), True)):
            try:
                raise failure
            except Exception:
                record = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception",
                                           None, sys.exc_info())
            ScrubFilter().filter(record)
            explained_failures[:] = [LookupError]
            try:
                assert ("Traceback" in text.format(record)) is shown
            finally:
                explained_failures.clear()
