"""The output lease on local disk and on Azurite: one holder at a time, a dead holder frees the folder."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobLeaseClient, BlobServiceClient
from structlog.testing import capture_logs

from flows.lease import LEASE_NAME, OutputBusyError, OutputLease, holder_info
from flows.storage import LocalStorage, storage_for
from tests.conftest import ROOT, Azurite

pytestmark = [pytest.mark.integration]

# A run that takes the lease and then hangs, to be killed with SIGKILL.
HOLDER = """
import sys, time
from flows.lease import OutputLease, holder_info
from flows.storage import LocalStorage
OutputLease(LocalStorage(), sys.argv[1], holder_info("child-run")).acquire()
print("held", file=sys.stderr, flush=True)  # structlog writes to stdout
time.sleep(600)
"""


def lapse_time(message: str) -> dt.datetime:
    """The time a blob lease's busy message says it lapses by."""
    found = re.search(r"lapses by (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC unless renewed", message)
    assert found, message
    return dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)


def new_output(azurite: Azurite) -> str:
    """``az://<a new container>/out/``."""
    container = f"lease-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    return f"az://{container}/out/"


class TestLocalLease:
    """flock on local disk."""

    def test_second_lease_is_refused_naming_the_holder(self, tmp_path: Path) -> None:
        folder = str(tmp_path / "out")
        first = OutputLease(LocalStorage(), folder, holder_info("run-1"))
        first.acquire()
        with pytest.raises(OutputBusyError) as busy:
            OutputLease(LocalStorage(), folder, holder_info("run-2")).acquire()
        message = str(busy.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, flow run run-1, since " in message
        assert message.endswith("released when that process exits") and "\n" not in message
        assert busy.value.holder["pid"] == os.getpid()
        again = pickle.loads(pickle.dumps(busy.value))  # Prefect pickles a flow's exception
        assert str(again) == message and again.holder == busy.value.holder

        first.release()
        first.release()
        assert (tmp_path / "out" / LEASE_NAME).exists()  # left behind, and it blocks nothing
        with OutputLease(LocalStorage(), folder, holder_info("run-3")) as third:
            assert not third.lost
        with OutputLease(LocalStorage(), folder, holder_info("run-4")):
            pass

    def test_a_killed_holder_frees_the_folder_at_once(self, tmp_path: Path) -> None:
        folder = str(tmp_path / "out")
        child = subprocess.Popen([sys.executable, "-c", HOLDER, folder], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert child.stderr is not None and child.stderr.readline().strip() == "held"
            with pytest.raises(OutputBusyError, match=f"pid {child.pid}, flow run child-run"):
                OutputLease(LocalStorage(), folder, holder_info("run-2")).acquire()
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            OutputLease(LocalStorage(), folder, holder_info("run-2")).acquire()  # no waiting at all
        finally:
            child.kill()
            child.wait(10)


class TestBlobLease:
    """A blob lease on Azurite."""

    def test_second_lease_is_refused_until_the_first_is_released(self, blob_env: Azurite) -> None:
        folder = new_output(blob_env)
        store = storage_for(folder)
        with OutputLease(store, folder, holder_info("run-1")) as first:
            with pytest.raises(OutputBusyError) as busy:
                OutputLease(store, folder, holder_info("run-2")).acquire()
            assert not first.lost
        message = str(busy.value)
        assert message.startswith(f"{folder} is being written by another run (host {socket.gethostname()}, "
                                  f"pid {os.getpid()}, flow run run-1, since ")
        assert "\n" not in message
        now = dt.datetime.now(dt.UTC)
        assert now < lapse_time(message) <= now + dt.timedelta(seconds=61)
        assert busy.value.holder["flow_run_id"] == "run-1"
        with OutputLease(store, folder, holder_info("run-2")):
            pass

    def test_a_retry_of_the_same_flow_run_takes_its_lease_back(self, blob_env: Azurite) -> None:
        folder = new_output(blob_env)
        store = storage_for(folder)
        lease_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "flow-run/1"))
        crashed = OutputLease(store, folder, holder_info("1"), lease_id=lease_id)
        crashed.acquire()
        crashed._stop_renewing()  # the first attempt died holding it
        with OutputLease(store, folder, holder_info("1"), lease_id=lease_id), pytest.raises(OutputBusyError):
            OutputLease(store, folder, holder_info("2")).acquire()
        with OutputLease(store, folder, holder_info("2")):
            pass

    def test_renewed_lease_holds_and_abandoned_one_lapses(self, blob_env: Azurite) -> None:
        kept_folder, dead_folder = new_output(blob_env), new_output(blob_env)
        kept = OutputLease(storage_for(kept_folder), kept_folder, holder_info("kept"), duration_s=15)
        dead = OutputLease(storage_for(dead_folder), dead_folder, holder_info("dead"), duration_s=15)
        kept.acquire()
        dead.acquire()
        dead._stop_renewing()  # a holder killed -9: never renews, never releases
        try:
            with pytest.raises(OutputBusyError) as busy:
                OutputLease(storage_for(dead_folder), dead_folder, holder_info("next")).acquire()
            lapse = lapse_time(str(busy.value))
            assert lapse <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=16)
            # "lapses by" is an upper bound
            time.sleep(max(0.0, (lapse - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)
            with OutputLease(storage_for(dead_folder), dead_folder, holder_info("next")):
                pass
            with pytest.raises(OutputBusyError, match="flow run kept"):
                OutputLease(storage_for(kept_folder), kept_folder, holder_info("next")).acquire()
            assert not kept.lost
        finally:
            kept.release()

    def test_a_broken_lease_is_lost(self, blob_env: Azurite) -> None:
        folder = new_output(blob_env)
        store = storage_for(folder)
        lease = OutputLease(store, folder, holder_info("run-1"))
        lease.acquire()
        lease._stop_renewing()
        container = folder.removeprefix("az://").split("/")[0]
        blob = BlobServiceClient.from_connection_string(blob_env.connection_string).get_blob_client(
            container, "out/" + LEASE_NAME)
        BlobLeaseClient(blob).break_lease(lease_break_period=0)
        with capture_logs() as logs:
            lease._renew_once()
            lease.release()  # nothing to give back, and no error
        assert lease.lost
        assert [e["event"] for e in logs] == ["lease_lost", "lease_released"]
        with OutputLease(store, folder, holder_info("run-2")):
            pass

    def test_storage_trouble_is_logged_not_raised(self, azurite_on_disk: Azurite,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_on_disk.connection_string)
        monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_URL", raising=False)
        folder = new_output(azurite_on_disk)
        lease = OutputLease(storage_for(folder), folder, holder_info("run-1"))
        lease.acquire()
        lease._stop_renewing()
        azurite_on_disk.process.terminate()
        azurite_on_disk.process.wait(10)
        with capture_logs() as logs:
            lease._renew_once()  # unreachable: a warning, and the next tick would try again
            lease.release()
        assert not lease.lost
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("lease_renew_failed", "warning"), ("lease_release_failed", "warning"), ("lease_released", "info")]
