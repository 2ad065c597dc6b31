"""Blob locations: the account, container and path an ``az://`` or URL location names.

- ``az://container/path``: the account comes from ``AZURE_STORAGE_CONNECTION_STRING``,
  or ``AZURE_STORAGE_ACCOUNT_URL`` (with ``AZURE_STORAGE_SAS_TOKEN``, else
  ``DefaultAzureCredential``);
- ``https://account.blob.core.windows.net/container/path[?sas]``, or the path-style
  ``http://127.0.0.1:10000/account/container/path`` of the emulator: a SAS in the query
  is kept with the location.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from azure.storage.blob import BlobServiceClient

from flows.settings import Settings
from flows.storage_errors import StorageError


@dataclass(frozen=True)
class BlobLocation:
    """A parsed blob location: the account's URL, the container and the blob path."""

    account_url: str
    container: str
    path: str
    sas: str | None = None


def parse_blob_location(location: str, settings: Settings | None = None) -> BlobLocation:
    """Split a blob location into account URL, container and path (see the module docstring)."""
    settings = settings or Settings.read()
    if location.startswith("az://"):
        container, _, path = location[len("az://"):].partition("/")
        account_url = settings.storage_account_url or connection_account_url(settings)
        if not account_url:
            raise StorageError(
                f"{location}: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL to say which account"
            )
        sas = settings.storage_sas_token
        return BlobLocation(account_url.rstrip("/"), container, path, sas.get_secret_value() if sas else None)
    parts = urlsplit(location)
    segments = parts.path.lstrip("/").split("/")
    host = parts.hostname or ""
    if ".blob." in host:  # https://account.blob.core.windows.net/container/path
        account_url = f"{parts.scheme}://{parts.netloc}"
    else:  # path-style, as the emulator serves: http://host:port/account/container/path
        account_url = f"{parts.scheme}://{parts.netloc}/{segments.pop(0)}"
    container = segments[0] if segments else ""
    return BlobLocation(account_url, container, "/".join(segments[1:]), parts.query or None)


def connection_account_url(settings: Settings) -> str | None:
    """The account URL of the environment's connection string, if there is one."""
    conn = settings.storage_connection_string
    return None if conn is None else _account_of(conn.get_secret_value())


@lru_cache(maxsize=8)
def _account_of(connection_string: str) -> str:
    return BlobServiceClient.from_connection_string(connection_string).url.rstrip("/")


def with_path(location: str, path: str) -> str:
    """``location`` (az:// or URL form, SAS kept) pointing at another blob of its container."""
    loc = parse_blob_location(location, Settings(storage_account_url="-"))
    if location.startswith("az://"):
        return f"az://{loc.container}/{path}"
    return f"{loc.account_url}/{loc.container}/{path}" + (f"?{loc.sas}" if loc.sas else "")


def join_with_query(folder: str, name: str) -> str:
    """``name`` inside ``folder``, a URL whose query (a SAS) stays at the end."""
    base, _, query = folder.partition("?")
    return f"{base.rstrip('/')}/{name}?{query}"
