"""The edges: Prefect flows, storage (local disk, Azure Blob), inputs, outputs and the CLI.

Prefect is imported lazily (``flows.run_batch`` loads it on first use) so the CLI's
``simulate`` starts fast. Settings a local, offline Prefect needs are defaulted here,
before Prefect can read them; the user's own environment wins.
"""

from __future__ import annotations

import os
from typing import Any

for _name, _value in {
    # A fresh PREFECT_HOME's ephemeral server needs ~30 s on a slow machine; the default is 20.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

__all__ = ["JobError", "run_batch", "load_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flows import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
