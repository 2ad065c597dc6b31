"""JSONL lines are reassembled across chunk boundaries; formats are told by name."""

from __future__ import annotations

import pytest

from flows.inputs import input_format, split_lines


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_lines_survive_any_chunking(size: int) -> None:
    data = b'{"a": 1}\n{"b": "two"}\n\n{"c": [3]}'
    chunks = (data[i:i + size] for i in range(0, len(data), size))
    assert list(split_lines(chunks)) == [b'{"a": 1}', b'{"b": "two"}', b"", b'{"c": [3]}']


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.jsonl", "jsonl"), ("az://c/a.JSONL", "jsonl"), ("https://x/c/a.parquet?sig=s", "parquet"),
     ("b.pq", "parquet")],
)
def test_input_format(name: str, fmt: str) -> None:
    assert input_format(name) == fmt


def test_unknown_format_names_the_file_without_its_sas() -> None:
    with pytest.raises(ValueError, match=r"https://x/c/a.csv: not a prompt set") as caught:
        input_format("https://x/c/a.csv?sig=secret")
    assert "secret" not in str(caught.value)
