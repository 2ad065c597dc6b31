"""Blobs in one Azure Storage account, container by container.

The credential is the location's SAS, else the connection string's key if it names the
same account, else ``DefaultAzureCredential``. A write is one committed put, so no reader
sees half a part; an append (the journal of finished rows) goes to an append blob, one
whole batch per call. Every call goes through ``translated``: the SDK's errors become one
``StorageError`` naming the location.
"""

from __future__ import annotations

import fnmatch
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

from flows.blob_locations import connection_account_url, join_with_query, parse_blob_location, with_path
from flows.logs import register_secret, secrets_of_connection_string
from flows.settings import Settings
from flows.storage_errors import StorageError, client_options, translated


class BlobStorage:
    """Blobs in one Azure Storage account, container by container."""

    cheap_appends = False

    def __init__(self, service: BlobServiceClient, account_url: str, settings: Settings | None = None):
        self._service = service
        self._account_url = account_url
        self._settings = settings or Settings.read()
        self._appendable: set[str] = set()

    @classmethod
    def for_location(cls, location: str) -> BlobStorage:
        """Connect to the account a location names, with the credential the environment gives."""
        settings = Settings.read()
        loc = parse_blob_location(location, settings)
        conn = settings.storage_connection_string
        register_secret(loc.sas)
        secrets_of_connection_string(conn.get_secret_value() if conn else None)
        options = client_options(settings.storage_retries)
        if loc.sas:
            service = BlobServiceClient(loc.account_url, credential=loc.sas, **options)
        elif conn and connection_account_url(settings) == loc.account_url:
            service = BlobServiceClient.from_connection_string(conn.get_secret_value(), **options)
        else:
            from azure.identity import DefaultAzureCredential

            service = BlobServiceClient(loc.account_url, credential=DefaultAzureCredential(), **options)
        return cls(service, loc.account_url, settings)

    def _split(self, location: str) -> tuple[ContainerClient, str]:
        loc = parse_blob_location(location, self._settings)
        return self._service.get_container_client(loc.container), loc.path

    def expand(self, pattern: str) -> list[str]:
        container, path = self._split(pattern)
        wild = any(c in path for c in "*?[")
        prefix = path.split("*")[0].split("?")[0].split("[")[0] if wild else path
        with translated(pattern):
            names = [b.name for b in container.list_blobs(name_starts_with=prefix)]
        if wild:
            chosen = [n for n in names if fnmatch.fnmatchcase(n, path)]
        elif path in names:
            chosen = [path]
        else:  # a folder
            folder = path.rstrip("/") + "/" if path else ""
            # Skipped like pyarrow skips them: anything under a `_` or `.` name (an output's `_metrics/` too).
            chosen = [n for n in names if n.startswith(folder)
                      and not any(part.startswith(("_", ".")) for part in n[len(folder):].split("/"))]
        return [with_path(pattern, n) for n in sorted(chosen)]

    def join(self, folder: str, name: str) -> str:
        return folder.rstrip("/") + "/" + name if "?" not in folder else join_with_query(folder, name)

    def exists(self, location: str) -> bool:
        container, path = self._split(location)
        with translated(location):
            return container.get_blob_client(path).exists()

    def read_bytes(self, location: str) -> bytes:
        container, path = self._split(location)
        with translated(location):
            return container.download_blob(path).readall()

    def iter_bytes(self, location: str) -> Iterator[bytes]:
        container, path = self._split(location)
        with translated(location):
            yield from container.download_blob(path).chunks()

    @contextmanager
    def local_copy(self, location: str) -> Iterator[str]:
        with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
            for chunk in self.iter_bytes(location):
                f.write(chunk)
            f.flush()
            yield f.name

    def write_bytes(self, location: str, data: bytes) -> None:
        container, path = self._split(location)
        with translated(location):
            container.upload_blob(path, data, overwrite=True)

    def publish(self, local_path: str, location: str) -> None:
        container, path = self._split(location)
        with translated(location), open(local_path, "rb") as f:
            container.upload_blob(path, f, overwrite=True)

    def blob_client(self, location: str) -> BlobClient:
        """The SDK's client for one blob (for leases); wrap its calls in ``translated(location)``."""
        container, path = self._split(location)
        return container.get_blob_client(path)

    def append(self, location: str, data: bytes) -> None:
        container, path = self._split(location)
        blob = container.get_blob_client(path)
        with translated(location):
            if location not in self._appendable:
                if not blob.exists():
                    blob.create_append_blob()
                self._appendable.add(location)
            blob.append_block(data)

    def list_names(self, folder: str) -> list[str]:
        container, path = self._split(folder)
        prefix = path.rstrip("/") + "/" if path else ""
        with translated(folder):
            return sorted(b.name[len(prefix):] for b in container.list_blobs(name_starts_with=prefix))

    def delete(self, location: str) -> None:
        container, path = self._split(location)
        try:
            with translated(location):
                container.delete_blob(path)
        except StorageError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise
        self._appendable.discard(location)

    def fingerprint(self, location: str) -> dict[str, Any]:
        container, path = self._split(location)
        with translated(location):
            props = container.get_blob_client(path).get_blob_properties()
        found: dict[str, Any] = {"size": props.size, "etag": str(props.etag).strip('"')}
        if props.last_modified is not None:
            found["last_modified"] = props.last_modified.isoformat()
        md5 = props.content_settings.content_md5 if props.content_settings else None
        if md5:
            found["content_md5"] = bytes(md5).hex()
        return found
