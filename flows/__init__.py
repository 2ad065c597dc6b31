"""The edges: Prefect flows, storage (local disk, Azure Blob), inputs, outputs and the CLI.

Prefect is imported lazily (``flows.run_batch`` loads it on first use) so the CLI's
``simulate`` starts fast. Settings a local, offline Prefect needs are defaulted here
(``flows.settings.apply_prefect_defaults``), the one place promptbatch writes to the
environment: Prefect reads its settings when it is imported, and a Prefect worker loads
the flows by module path (``prefect.yaml``), so nothing later would be in time. The
user's own environment wins.
"""

from __future__ import annotations

from typing import Any

from flows.settings import apply_prefect_defaults

apply_prefect_defaults()

__all__ = ["JobError", "run_batch", "load_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from flows import batch

        return getattr(batch, name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
