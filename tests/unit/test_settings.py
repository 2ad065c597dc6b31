"""The environment, read in one place: typed, secrets hidden and registered for redaction."""

from __future__ import annotations

import pytest

from flows.logs import scrub
from flows.settings import Settings

CONN = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=c2VjcmV0LWtleS1mb3ItdGVzdHM=;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")


def test_settings_are_typed_and_secrets_never_show() -> None:
    settings = Settings.read({"AZURE_STORAGE_CONNECTION_STRING": CONN, "PROMPTBATCH_STORAGE_RETRIES": "2",
                              "PREFECT__WORKER_NAME": "w1", "MY_KEY": "  sk-test-0123456789  "})
    assert settings.storage_retries == 2 and settings.worker_name == "w1" and settings.storage_sas_token is None
    assert settings.storage_connection_string is not None
    assert settings.storage_connection_string.get_secret_value() == CONN
    key = settings.key("MY_KEY")
    assert key is not None and key.get_secret_value() == "sk-test-0123456789"  # trimmed
    shown = f"{settings!r} {key!r} {key}"
    assert "sk-test" not in shown and "c2VjcmV0" not in shown
    # Read once, registered at once: a log line that carries the key is scrubbed.
    assert "sk-test" not in scrub("sent with sk-test-0123456789")


def test_unset_and_blank_are_the_same() -> None:
    settings = Settings.read({"MY_KEY": "   ", "PROMPTBATCH_STORAGE_RETRIES": ""})
    assert settings.key("MY_KEY") is None and settings.key("OTHER") is None
    assert settings.storage_connection_string is None and settings.storage_retries == 6


def test_a_wrong_retry_count_is_named_when_storage_asks() -> None:
    settings = Settings.read({"PROMPTBATCH_STORAGE_RETRIES": "six", "PREFECT__WORKER_NAME": "w1"})
    assert settings.worker_name == "w1"  # the rest of the settings still read
    with pytest.raises(ValueError, match="PROMPTBATCH_STORAGE_RETRIES must be a whole number, not 'six'"):
        _ = settings.storage_retries
