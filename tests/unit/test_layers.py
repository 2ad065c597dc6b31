"""Imports point one way: flows → workers → schemas. The engine never loads Prefect or Azure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_workers_and_schemas_load_neither_prefect_nor_azure() -> None:
    loaded = loaded_after("import workers, schemas, workers.simulator")
    assert "workers" in loaded and "schemas" in loaded
    assert not {"prefect", "azure", "flows"} & loaded


def test_schemas_load_no_engine() -> None:
    loaded = loaded_after("import schemas")
    assert not {"workers", "flows", "httpx", "aiohttp"} & loaded


def test_the_report_needs_no_prefect() -> None:
    """``promptbatch report`` reads a folder and writes a page: no Prefect to load, no server to start."""
    loaded = loaded_after("import flows.report, flows.metrics, flows.watch")
    assert "prefect" not in loaded
