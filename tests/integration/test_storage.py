"""Storage on Azurite and local disk: globs, streaming reads, atomic publishes, URL forms."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient

from flows.inputs import iter_records
from flows.settings import Settings
from flows.storage import BlobStorage, LocalStorage, StorageError, parse_blob_location, storage_for
from schemas import BadRowError
from tests.conftest import Azurite

pytestmark = pytest.mark.integration


def make_container(azurite: Azurite, name: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    if not service.get_container_client(name).exists():
        service.create_container(name)


class TestBlobStorage:
    """az:// and account-URL locations against Azurite."""

    def test_glob_folder_and_file(self, blob_env: Azurite) -> None:
        make_container(blob_env, "prompts")
        store = storage_for("az://prompts/x")
        for name in ("news/a.jsonl", "news/b.jsonl", "news/c.parquet", "news/_manifest.json", "other/a.jsonl",
                     "news/_metrics/run.parquet"):
            store.write_bytes(f"az://prompts/{name}", b"{}\n")
        assert store.expand("az://prompts/news/*.jsonl") == ["az://prompts/news/a.jsonl", "az://prompts/news/b.jsonl"]
        assert store.expand("az://prompts/news/") == [
            "az://prompts/news/a.jsonl", "az://prompts/news/b.jsonl", "az://prompts/news/c.parquet"]
        assert store.expand("az://prompts/other/a.jsonl") == ["az://prompts/other/a.jsonl"]
        assert store.expand("az://prompts/none/*.jsonl") == []

    def test_jsonl_rows_are_numbered_by_line(self, blob_env: Azurite) -> None:
        make_container(blob_env, "stream")
        lines = [json.dumps({"id": i, "text": "x" * (i % 300)}) for i in range(5_000)]
        lines[10] = "{not json"
        data = ("\n".join(lines) + "\n").encode()
        store = storage_for("az://stream/p.jsonl")
        store.write_bytes("az://stream/p.jsonl", data)
        records = [(where, record) for where, record, _ in iter_records(store, "az://stream/p.jsonl")]
        assert len(records) == 5_000
        where, bad = records[10]
        assert where == "az://stream/p.jsonl line 11" and isinstance(bad, BadRowError)
        assert records[4_999] == ("az://stream/p.jsonl line 5000", {"id": 4_999, "text": "x" * (4_999 % 300)})

    def test_parquet_and_publish(self, blob_env: Azurite, tmp_path: Path) -> None:
        make_container(blob_env, "pqt")
        local = tmp_path / "p.parquet"
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), local)
        store = storage_for("az://pqt/in/p.parquet")
        store.publish(str(local), "az://pqt/in/p.parquet")
        assert store.exists("az://pqt/in/p.parquet") and not store.exists("az://pqt/in/q.parquet")
        assert [r for _, r, _ in iter_records(store, "az://pqt/in/p.parquet")] == [
            {"id": "a", "text": "x"}, {"id": "b", "text": "y"}]

    def test_account_url_form_and_missing_blob(self, blob_env: Azurite) -> None:
        make_container(blob_env, "urls")
        url = f"{blob_env.account_url}/urls/f.jsonl"
        store = storage_for(url)
        store.write_bytes(url, b'{"a": 1}\n')
        assert store.expand(f"{blob_env.account_url}/urls/*.jsonl") == [url]
        with pytest.raises(StorageError, match="urls/missing.jsonl: not found"):
            store.read_bytes(f"{blob_env.account_url}/urls/missing.jsonl")

    def test_unreachable_account_is_a_storage_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
        monkeypatch.setenv("PROMPTBATCH_STORAGE_RETRIES", "1")
        store = BlobStorage.for_location("az://c/x.jsonl")
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"az://c/x.jsonl: unreachable, gave up after 1 retries "
                                               r"\(ServiceRequestError"):
            store.exists("az://c/x.jsonl")
        assert time.monotonic() - started < 10  # one backoff of about a second, not the SDK's default minute


@pytest.mark.parametrize(
    ("location", "account_url", "container", "path", "sas"),
    [
        ("https://acct.blob.core.windows.net/c/dir/f.jsonl?sv=1&sig=abc", "https://acct.blob.core.windows.net",
         "c", "dir/f.jsonl", "sv=1&sig=abc"),
        ("http://127.0.0.1:10000/devstoreaccount1/c/f.jsonl", "http://127.0.0.1:10000/devstoreaccount1", "c",
         "f.jsonl", None),
        ("az://c/a/b/", "https://acct.blob.core.windows.net", "c", "a/b/", None),
    ],
)
def test_parse_blob_location(location: str, account_url: str, container: str, path: str, sas: str | None) -> None:
    loc = parse_blob_location(location, Settings.read({"AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"}))
    assert (loc.account_url, loc.container, loc.path, loc.sas) == (account_url, container, path, sas)


def test_local_publish_is_atomic_and_globs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage()
    target = str(tmp_path / "out" / "part-000000.parquet")
    store.write_bytes(target, b"first")
    store.write_bytes(target, b"second")
    assert Path(target).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-000000.parquet"]  # no temp files left
    assert store.expand(str(tmp_path / "out")) == [target]

    # A publish that dies half way (a full disk, a kill) leaves the earlier part whole, and no temp file.
    source = tmp_path / "new.parquet"
    source.write_bytes(b"third, longer than the part it replaces")

    def half_then_fail(src: Any, dst: Any, *args: Any) -> None:
        dst.write(src.read(5))
        dst.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("shutil.copyfileobj", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.publish(str(source), target)
    assert Path(target).read_bytes() == b"second"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-000000.parquet"]
