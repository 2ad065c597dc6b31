"""Real parts for the tests: Azurite, the simulator as its own process, Prefect's harness."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
# The emulator's published well-known development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def azurite_command() -> str:
    """The ``azurite-blob`` executable: the repo's own install (see README), else PATH."""
    local = ROOT / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-blob")
    if found is None:
        raise RuntimeError("azurite-blob not found: run `npm install --prefix .azurite azurite@3.35.0` (see README)")
    return found


@dataclass
class Azurite:
    """A running Azurite blob service."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.account_url};")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="azurite-")
    proc = subprocess.Popen(
        [azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )
    try:
        wait_for_port(port, 30, proc)
        yield Azurite(port, proc)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def blob_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """Point ``az://`` locations at Azurite through the connection string."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL", raising=False)
    return azurite


@dataclass
class SimulatorProcess:
    """``promptbatch simulate`` running in its own process."""

    url: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture
def simulator() -> Iterator[Callable[..., SimulatorProcess]]:
    """Start simulators with ``simulator(--option value ...)``; all are stopped after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> SimulatorProcess:
        errors = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import main; main()", "simulate", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=ROOT,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on " not in line:
            proc.kill()
            proc.wait()
            errors.seek(0)
            raise RuntimeError(f"simulator did not start: {line!r} {errors.read()[-2000:]}")
        url = line.split("listening on ", 1)[1].split()[0]
        return SimulatorProcess(url, proc)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (its start-up takes ~20 s here)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
