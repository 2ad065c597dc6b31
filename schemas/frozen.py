"""The base of every job-file model: frozen, and unknown keys refused.

A typo in a job file is then an error that names the key instead of a setting silently
ignored, and a validated job cannot change under the run that holds it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    """A job-file model: immutable once validated, and no key it does not define."""

    model_config = ConfigDict(frozen=True, extra="forbid")
