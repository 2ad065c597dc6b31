"""Reading a report back: the series it draws and the data it embeds."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any


class Page(HTMLParser):
    """The report's drawn series (``data-series`` → ``data-points``) and its embedded data."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, int] = {}
        self.data: dict[str, Any] = {}
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("data-series") is not None:
            self.series[str(found["data-series"])] = int(found["data-points"] or 0)
        self._in_data = tag == "script" and found.get("id") == "promptbatch-data"

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data = json.loads(data)
            self._in_data = False
