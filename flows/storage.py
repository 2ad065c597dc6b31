"""Where prompt sets are read and results written: local disk or Azure Blob Storage.

Locations are strings:

- a local path (``prompts/*.jsonl``, ``out/``);
- ``az://container/path``: the account comes from ``AZURE_STORAGE_CONNECTION_STRING``,
  or ``AZURE_STORAGE_ACCOUNT_URL`` (with ``AZURE_STORAGE_SAS_TOKEN``, else
  ``DefaultAzureCredential``);
- ``https://account.blob.core.windows.net/container/path[?sas]``, or the path-style
  ``http://127.0.0.1:10000/account/container/path`` of the emulator: a SAS in the query
  is used, else the connection string's key if it names the same account, else
  ``DefaultAzureCredential``.

Writes are atomic: a local file is written beside its target and renamed over it; a
blob is uploaded in one committed put. No reader sees half a part. Appends (the
journal of finished rows) go to an append blob, or a local file opened for appending,
one whole batch per call.

Blob calls are retried by the Azure SDK with exponential backoff
(``PROMPTBATCH_STORAGE_RETRIES`` retries, default 6: about a minute and a half in all);
when they are spent the call fails as a ``StorageError`` that names the location.

This module is the ``Storage`` protocol the flows use and ``storage_for``, which picks the
storage a location lives in; the two adapters are ``flows.storage_local`` and
``flows.storage_blob``, blob locations are parsed in ``flows.blob_locations`` and SDK
errors mapped in ``flows.storage_errors``. Every name is importable from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from flows.blob_locations import BlobLocation, parse_blob_location
from flows.storage_blob import BlobStorage
from flows.storage_errors import StorageError, redact_location, translated
from flows.storage_local import LocalStorage

__all__ = [
    "MAX_APPEND",
    "BlobLocation",
    "BlobStorage",
    "LocalStorage",
    "Storage",
    "StorageError",
    "parse_blob_location",
    "redact_location",
    "storage_for",
    "translated",
]


#: The largest block one append may carry (the service's limit for older API versions).
MAX_APPEND = 4 * 1024 * 1024


class Storage(Protocol):
    """What the flows need of a place that holds files."""

    #: An append costs a system call, not a round trip: callers may append row by row.
    cheap_appends: bool

    def expand(self, pattern: str) -> list[str]:
        """The files a file, folder or glob names, sorted."""
        ...

    def join(self, folder: str, name: str) -> str:
        """The location of ``name`` inside ``folder``."""
        ...

    def exists(self, location: str) -> bool:
        """Whether a file is there."""
        ...

    def read_bytes(self, location: str) -> bytes:
        """A small file's whole content."""
        ...

    def iter_bytes(self, location: str) -> Iterator[bytes]:
        """A file's content in chunks, never all at once."""
        ...

    @contextmanager
    def local_copy(self, location: str) -> Iterator[str]:
        """A seekable local path with the file's content (for Parquet footers)."""
        ...

    def write_bytes(self, location: str, data: bytes) -> None:
        """Atomically write a small file."""
        ...

    def publish(self, local_path: str, location: str) -> None:
        """Atomically publish a finished local file at ``location``."""
        ...

    def append(self, location: str, data: bytes) -> None:
        """Add ``data`` (at most ``MAX_APPEND`` bytes) at the end of a file, creating it if needed."""
        ...

    def list_names(self, folder: str) -> list[str]:
        """Every file under ``folder``, as names relative to it (``_journal/a.jsonl``), sorted."""
        ...

    def delete(self, location: str) -> None:
        """Remove a file; a missing one is not an error."""
        ...

    def fingerprint(self, location: str) -> dict[str, Any]:
        """What identifies a file's content without reading it (size, and mtime or ETag)."""
        ...


def read_json_object(storage: Storage, location: str, *,
                     unreadable: Callable[[], None] | None = None) -> dict[str, Any] | None:
    """The JSON object stored at ``location``; ``None`` when there is none, or it is torn or not an
    object (``unreadable`` is told of those)."""
    if not storage.exists(location):
        return None
    try:
        found = json.loads(storage.read_bytes(location))
    except ValueError:
        found = None
    if isinstance(found, dict):
        return found
    if unreadable is not None:
        unreadable()
    return None


def storage_for(location: str) -> Storage:
    """The storage a location lives in."""
    if location.startswith("az://") or location.startswith(("https://", "http://")):
        return BlobStorage.for_location(location)
    return LocalStorage()
