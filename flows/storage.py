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
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient, ExponentialRetry

from flows.logs import register_secret, secrets_of_connection_string

_CHUNK = 4 * 1024 * 1024
#: The largest block one append may carry (the service's limit for older API versions).
MAX_APPEND = 4 * 1024 * 1024


class StorageError(RuntimeError):
    """Storage could not be reached or refused an operation; the message says which location."""


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


def storage_for(location: str) -> Storage:
    """The storage a location lives in."""
    if location.startswith("az://") or location.startswith(("https://", "http://")):
        return BlobStorage.for_location(location)
    return LocalStorage()


class LocalStorage:
    """Files on local disk."""

    cheap_appends = True

    def expand(self, pattern: str) -> list[str]:
        path = Path(pattern)
        if path.is_dir():
            return sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))

    def join(self, folder: str, name: str) -> str:
        return os.path.join(folder, name)

    def exists(self, location: str) -> bool:
        return os.path.isfile(location)

    def read_bytes(self, location: str) -> bytes:
        return Path(location).read_bytes()

    def iter_bytes(self, location: str) -> Iterator[bytes]:
        with open(location, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk

    @contextmanager
    def local_copy(self, location: str) -> Iterator[str]:
        yield location

    def write_bytes(self, location: str, data: bytes) -> None:
        with self._staged(location) as f:
            f.write(data)

    def publish(self, local_path: str, location: str) -> None:
        with self._staged(location) as f, open(local_path, "rb") as src:
            shutil.copyfileobj(src, f)

    def append(self, location: str, data: bytes) -> None:
        # One write(2) on an O_APPEND descriptor: a killed process leaves whole batches behind
        # (a crash of the machine itself may cut the last one; readers skip a torn last line).
        os.makedirs(os.path.dirname(location) or ".", exist_ok=True)
        fd = os.open(location, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def list_names(self, folder: str) -> list[str]:
        root = Path(folder)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    def delete(self, location: str) -> None:
        try:
            os.unlink(location)
        except FileNotFoundError:
            pass
        folder = os.path.dirname(location)
        if os.path.basename(folder).startswith("_"):  # our own bookkeeping folder (the journal's), once empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def fingerprint(self, location: str) -> dict[str, Any]:
        st = os.stat(location)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    @contextmanager
    def _staged(self, location: str) -> Iterator[IO[bytes]]:
        folder = os.path.dirname(location) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, location)
        except BaseException:
            os.unlink(tmp)
            raise


@dataclass(frozen=True)
class BlobLocation:
    """A parsed blob location: the account's URL, the container and the blob path."""

    account_url: str
    container: str
    path: str
    sas: str | None = None


def parse_blob_location(location: str, env: dict[str, str] | None = None) -> BlobLocation:
    """Split a blob location into account URL, container and path (see the module docstring)."""
    env = dict(os.environ) if env is None else env
    if location.startswith("az://"):
        container, _, path = location[len("az://"):].partition("/")
        account_url = env.get("AZURE_STORAGE_ACCOUNT_URL") or _connection_account_url(env)
        if not account_url:
            raise StorageError(
                f"{location}: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL to say which account"
            )
        return BlobLocation(account_url.rstrip("/"), container, path, env.get("AZURE_STORAGE_SAS_TOKEN"))
    parts = urlsplit(location)
    segments = parts.path.lstrip("/").split("/")
    host = parts.hostname or ""
    if ".blob." in host:  # https://account.blob.core.windows.net/container/path
        account_url = f"{parts.scheme}://{parts.netloc}"
    else:  # path-style, as the emulator serves: http://host:port/account/container/path
        account_url = f"{parts.scheme}://{parts.netloc}/{segments.pop(0)}"
    container = segments[0] if segments else ""
    return BlobLocation(account_url, container, "/".join(segments[1:]), parts.query or None)


def _connection_account_url(env: dict[str, str]) -> str | None:
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if not conn:
        return None
    return BlobServiceClient.from_connection_string(conn).url.rstrip("/")


class BlobStorage:
    """Blobs in one Azure Storage account, container by container."""

    cheap_appends = False

    def __init__(self, service: BlobServiceClient, account_url: str):
        self._service = service
        self._account_url = account_url
        self._appendable: set[str] = set()

    @classmethod
    def for_location(cls, location: str) -> BlobStorage:
        """Connect to the account a location names, with the credential the environment gives."""
        loc = parse_blob_location(location)
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        register_secret(loc.sas)
        secrets_of_connection_string(conn)
        options = _client_options()
        if loc.sas:
            service = BlobServiceClient(loc.account_url, credential=loc.sas, **options)
        elif conn and _connection_account_url(dict(os.environ)) == loc.account_url:
            service = BlobServiceClient.from_connection_string(conn, **options)
        else:
            from azure.identity import DefaultAzureCredential

            service = BlobServiceClient(loc.account_url, credential=DefaultAzureCredential(), **options)
        return cls(service, loc.account_url)

    def _split(self, location: str) -> tuple[ContainerClient, str]:
        loc = parse_blob_location(location)
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
        return [_with_path(pattern, n) for n in sorted(chosen)]

    def join(self, folder: str, name: str) -> str:
        return folder.rstrip("/") + "/" + name if "?" not in folder else _join_with_query(folder, name)

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


def _client_options() -> dict[str, Any]:
    """Retries and timeouts for every blob call (see the module docstring)."""
    return {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=_retries(),
                                         random_jitter_range=1),
        "connection_timeout": 20,
        "read_timeout": 120,
    }


def _retries() -> int:
    return int(os.environ.get("PROMPTBATCH_STORAGE_RETRIES", "6"))


def _with_path(location: str, path: str) -> str:
    """``location`` (az:// or URL form, SAS kept) pointing at another blob of its container."""
    loc = parse_blob_location(location, env={"AZURE_STORAGE_ACCOUNT_URL": "-"})
    if location.startswith("az://"):
        return f"az://{loc.container}/{path}"
    return f"{loc.account_url}/{loc.container}/{path}" + (f"?{loc.sas}" if loc.sas else "")


def _join_with_query(folder: str, name: str) -> str:
    base, _, query = folder.partition("?")
    return f"{base.rstrip('/')}/{name}?{query}"


@contextmanager
def translated(location: str) -> Iterator[None]:
    """Azure SDK errors become one ``StorageError`` naming the location (never its SAS)."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise StorageError(f"{redact_location(location)}: not found") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageError(f"{redact_location(location)}: unreachable, gave up after {_retries()} retries "
                           f"({type(exc).__name__}: {_first_line(exc)})") from exc
    except AzureError as exc:
        raise StorageError(f"{redact_location(location)}: {type(exc).__name__}: {_first_line(exc)}") from exc


def redact_location(location: str) -> str:
    """The location without its query string (where a SAS token would be)."""
    return location.split("?", 1)[0]


_SAS_PARAM = re.compile(r"([?&](?:sig|se|st|sp|sv|spr|srt|ss|sr|skoid|sktid|skt|ske|sks|skv)=)[^&\s'\"]+", re.I)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return _SAS_PARAM.sub(r"\1***", text[0][:300]) if text else ""
