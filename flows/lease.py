"""One writer per output folder: an exclusive lease, held while a run writes the folder.

Two runs writing one output would interleave parts and journals, and the manifest check cannot see
a run still going. So a run takes the folder's lease first; a second fails at once (``OutputBusyError``).

- Local disk: ``flock`` on ``<folder>/.promptbatch-lease``, which holds the holder's JSON. The kernel
  drops the lock when its process dies, however it dies; a leftover file blocks nothing.
- Azure Blob: a ``LEASE_S`` lease on that blob, renewed every ``RENEW_EVERY_S`` by a daemon thread,
  the holder in its metadata. A killed holder loses it within ``LEASE_S``. A lease id derived from the
  Prefect flow run id lets a retry of the same flow run take its own, still active, lease back at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import uuid
from typing import Any, Self

import structlog
from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import BlobClient, BlobLeaseClient

from flows.storage import BlobStorage, LocalStorage, Storage, StorageError, redact_location, translated

LEASE_NAME = ".promptbatch-lease"
#: A blob lease's duration: a killed holder loses it within this.
LEASE_S = 60
RENEW_EVERY_S = 15

log = structlog.get_logger(__name__)

# A renewal answered so means the lease is not ours any more: taken under another id, broken,
# released, lapsed (412 LeaseLost on the metadata write) or its blob deleted.
_LOST_STATUS = frozenset({404, 409, 412})
# A renewal must not sit in the SDK's 90 s of retries while the lease runs out (the next tick retries),
# nor a release hold up the end of a run (the lease lapses anyway).
_QUICK: dict[str, Any] = {"retry_total": 1, "connection_timeout": 5, "read_timeout": 10}


class OutputBusyError(RuntimeError):
    """Another run holds the output's lease; the message names it, since when, and when it lapses."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)  # the message alone in args, so the error pickles (Prefect ships it)
        self.holder: dict[str, Any] = holder or {}


def holder_info(flow_run_id: str | None) -> dict[str, Any]:
    """Who takes a lease, as a second run is shown it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "flow_run_id": flow_run_id, "acquired_at": _iso_now()}


class OutputLease:
    """Held while a run writes an output folder; see the module docstring."""

    def __init__(self, storage: Storage, folder: str, holder: dict[str, Any], *, lease_id: str | None = None,
                 duration_s: int = LEASE_S):
        if not isinstance(storage, (LocalStorage, BlobStorage)):
            raise TypeError(f"no lease for {type(storage).__name__}: local disk or Azure Blob only")
        self.storage, self.folder, self.holder = storage, folder, holder
        self.location = storage.join(folder, LEASE_NAME)
        self.lease_id = lease_id or str(uuid.uuid4())
        self.duration_s = duration_s  # Azure allows 15..60 s; tests use 15 to watch one lapse
        self._fd: int | None = None
        self._blob: BlobClient | None = None
        self._lease: BlobLeaseClient | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def lost(self) -> bool:
        """True once a renewal found the lease taken or lapsed: another run may be writing now."""
        return self._lost

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, or raise ``OutputBusyError`` at once (no waiting) if another run holds it."""
        if self._fd is not None or self._lease is not None:
            return
        if isinstance(self.storage, BlobStorage):
            self._blob = self._blob or self.storage.blob_client(self.location)
            self._acquire_blob(self._blob)
        else:
            self._acquire_local()
        log.info("lease_acquired", output=redact_location(self.folder), lease_id=self.lease_id)

    def release(self) -> None:
        """Give the folder up; idempotent. Storage trouble is logged, not raised: the lease lapses anyway."""
        fd, self._fd = self._fd, None
        lease, self._lease = self._lease, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # still locked: nobody later mistakes us for the next holder
            os.close(fd)  # our only descriptor of it: the flock goes with it
        elif lease is not None:
            self._stop_renewing()
            try:
                with translated(self.location):
                    if not self._lost:
                        lease.release(**_QUICK)
            except StorageError as exc:
                log.warning("lease_release_failed", output=redact_location(self.folder), error=str(exc))
        else:
            return
        log.info("lease_released", output=redact_location(self.folder), lease_id=self.lease_id)

    def _acquire_local(self) -> None:
        try:
            os.makedirs(self.folder or ".", exist_ok=True)
            # Python's descriptors are not inherited: no child process keeps the lock after we die.
            fd = os.open(self.location, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"{self.location}: cannot open the lease file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            content = os.pread(fd, 65536, 0)
            os.close(fd)
            if not isinstance(exc, BlockingIOError):
                raise StorageError(f"{self.location}: cannot lock: {exc}") from exc
            holder = _parse_holder(content)
            raise OutputBusyError(_busy_message(self.folder, holder, "released when that process exits"),
                                  holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd

    def _acquire_blob(self, blob: BlobClient) -> None:
        with translated(self.location):
            try:  # the folder's first run makes the lease blob
                blob.upload_blob(b"", overwrite=False)
            except HttpResponseError as exc:  # 409: it exists; 412: it exists, leased (services differ)
                if exc.status_code not in (409, 412):
                    raise
            for attempt in range(2):
                try:
                    lease = blob.acquire_lease(lease_duration=self.duration_s, lease_id=self.lease_id)
                    break
                except HttpResponseError as exc:
                    if exc.status_code != 409:
                        raise
                    props = blob.get_blob_properties()
                    if attempt or props.lease.state in ("leased", "breaking"):
                        raise OutputBusyError(_blob_busy_message(self.folder, props.metadata), props.metadata) from None
                    # released or lapsed between the two calls: once more
            try:
                self._write_metadata(blob, lease, {})
            except BaseException:
                with contextlib.suppress(AzureError):
                    lease.release(**_QUICK)
                raise
        self._lease, self._lost = lease, False
        self._stop.clear()
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._renew_loop,),
                                        name=f"lease {redact_location(self.folder)}", daemon=True)
        self._thread.start()

    def _write_metadata(self, blob: BlobClient, lease: BlobLeaseClient, options: dict[str, Any]) -> None:
        fields = {**self.holder, "renewed_at": _iso_now(), "lease_s": self.duration_s}
        # Azure metadata travels in HTTP headers: strings, ASCII only.
        metadata = {k: str(v).encode("ascii", "backslashreplace").decode() for k, v in fields.items() if v is not None}
        blob.set_blob_metadata(metadata, lease=lease, **options)

    def _renew_loop(self) -> None:
        while not self._stop.wait(min(RENEW_EVERY_S, self.duration_s / 4)):
            self._renew_once()

    def _renew_once(self) -> None:
        """One renewal (lease and ``renewed_at``); sets ``lost`` and stops renewing if the lease is not ours."""
        blob, lease = self._blob, self._lease
        if blob is None or lease is None:
            return
        try:
            lease.renew(**_QUICK)
            self._write_metadata(blob, lease, _QUICK)
        except AzureError as exc:
            status = getattr(exc, "status_code", None)
            if status not in _LOST_STATUS:  # unreachable or failing for now: the next tick tries again
                log.warning("lease_renew_failed", output=redact_location(self.folder), error=type(exc).__name__,
                            status=status)
                return
            self._lost = True
            self._stop.set()
            log.error("lease_lost", output=redact_location(self.folder), status=status,
                      error_code=str(getattr(exc, "error_code", None)))

    def _stop_renewing(self) -> None:
        """Stop the renew thread (release does; a test alone plays a holder that was killed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.duration_s)
        self._thread = None


_WHO = {"host": "host", "pid": "pid", "flow_run_id": "flow run", "acquired_at": "since"}


def _busy_message(folder: str, holder: dict[str, Any], when_free: str) -> str:
    # Nobody named: the holder has taken the lease and not yet written down who it is.
    who = ", ".join(f"{label} {holder[key]}" for key, label in _WHO.items() if holder.get(key))
    who = who or "holder not yet recorded"
    return f"{redact_location(folder)} is being written by another run ({who}); {when_free}"


def _blob_busy_message(folder: str, metadata: dict[str, str]) -> str:
    try:  # renewed_at is cut to the second: one more keeps "lapses by" an upper bound
        lapse = dt.datetime.fromisoformat(metadata["renewed_at"]) + dt.timedelta(seconds=int(metadata["lease_s"]) + 1)
    except (KeyError, ValueError):  # not yet written: a lease runs at most LEASE_S past its last renewal
        lapse = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEASE_S)
    return _busy_message(folder, metadata, f"lapses by {lapse:%Y-%m-%d %H:%M:%S} UTC unless renewed")


def _parse_holder(content: bytes) -> dict[str, Any]:
    with contextlib.suppress(ValueError):  # empty while its holder has locked the file, not yet written it
        if isinstance(holder := json.loads(content), dict):
            return holder
    return {}


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
