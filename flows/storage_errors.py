"""How storage fails: one ``StorageError`` that names the location (never its SAS), once retries are spent.

Blob calls are retried by the Azure SDK with exponential backoff
(``PROMPTBATCH_STORAGE_RETRIES`` retries, default 6: about a minute and a half in all);
when they are spent the call fails as a ``StorageError`` that names the location.
Locations in messages, and the first line of the SDK's error, are shown through the
process's registry of secrets (``workers.redact.REDACTOR``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError
from azure.storage.blob import ExponentialRetry

from flows.settings import Settings
from workers.redact import REDACTOR


class StorageError(RuntimeError):
    """Storage could not be reached or refused an operation; the message says which location."""


def client_options(retries: int) -> dict[str, Any]:
    """Retries and timeouts for every blob call (see the module docstring)."""
    return {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=retries,
                                         random_jitter_range=1),
        "connection_timeout": 20,
        "read_timeout": 120,
    }


def retries() -> int:
    """How many times a blob call is retried (``PROMPTBATCH_STORAGE_RETRIES``, default 6)."""
    return Settings.read().storage_retries


@contextmanager
def translated(location: str) -> Iterator[None]:
    """Azure SDK errors become one ``StorageError`` naming the location (never its SAS)."""
    try:
        yield
    except ResourceNotFoundError as exc:
        raise StorageError(f"{redact_location(location)}: not found") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise StorageError(f"{redact_location(location)}: unreachable, gave up after {retries()} retries "
                           f"({type(exc).__name__}: {_first_line(exc)})") from exc
    except AzureError as exc:
        raise StorageError(f"{redact_location(location)}: {type(exc).__name__}: {_first_line(exc)}") from exc


def redact_location(location: str) -> str:
    """The location without its query string (where a SAS token would be)."""
    return REDACTOR.location(location)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return REDACTOR.scrub(text[0][:300]) if text else ""
