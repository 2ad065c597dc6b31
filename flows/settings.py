"""The process environment, read in this one place: what promptbatch takes from it, typed.

Secrets come out as ``SecretStr`` (a key, a connection string, a SAS token), so a repr, a
log line or a Prefect parameter shows ``**********``; each is registered for redaction
(``workers.redact``) as it is read. ``Settings.read()`` reads the environment as it is now
(a test or a scheduled run may set a variable between runs); nothing here writes to it,
except ``apply_prefect_defaults``, which ``flows/__init__`` calls before Prefect loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from workers.redact import REDACTOR

#: Settings a local, offline Prefect needs, unless the user's environment says otherwise.
PREFECT_DEFAULTS = {
    # A fresh PREFECT_HOME's ephemeral server needs ~30 s on a slow machine; the default is 20.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
STORAGE_RETRIES_DEFAULT = 6


def apply_prefect_defaults() -> None:
    """Put ``PREFECT_DEFAULTS`` in the environment where it has no value of its own."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def secret(value: str | None) -> SecretStr | None:
    """``value`` trimmed, as a ``SecretStr`` registered for redaction; ``None`` when it is unset or blank."""
    value = (value or "").strip()
    if not value:
        return None
    REDACTOR.add(value)
    return SecretStr(value)


@dataclass(frozen=True)
class Settings:
    """What the environment says, as of ``read``."""

    #: The blob account's connection string (``AZURE_STORAGE_CONNECTION_STRING``).
    storage_connection_string: SecretStr | None = None
    #: The account ``az://`` locations name (``AZURE_STORAGE_ACCOUNT_URL``).
    storage_account_url: str | None = None
    #: A SAS token for ``az://`` locations (``AZURE_STORAGE_SAS_TOKEN``).
    storage_sas_token: SecretStr | None = None
    #: ``PROMPTBATCH_STORAGE_RETRIES`` as given (see ``storage_retries``).
    storage_retries_text: str = ""
    #: The Prefect worker running this process, when one does (``PREFECT__WORKER_NAME``).
    worker_name: str | None = None
    _env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(secret(env.get("AZURE_STORAGE_CONNECTION_STRING")), env.get("AZURE_STORAGE_ACCOUNT_URL") or None,
                   secret(env.get("AZURE_STORAGE_SAS_TOKEN")), env.get("PROMPTBATCH_STORAGE_RETRIES", "").strip(),
                   env.get("PREFECT__WORKER_NAME") or None, env)

    @property
    def storage_retries(self) -> int:
        """How many times a blob call is retried (``PROMPTBATCH_STORAGE_RETRIES``; unset or blank: 6).

        Checked only when storage asks: a wrong figure does not stop a job that never touches a blob.
        """
        if not self.storage_retries_text:
            return STORAGE_RETRIES_DEFAULT
        try:
            return int(self.storage_retries_text)
        except ValueError:
            raise ValueError(f"PROMPTBATCH_STORAGE_RETRIES must be a whole number, not "
                             f"{self.storage_retries_text!r}") from None

    def key(self, variable: str) -> SecretStr | None:
        """A deployment's key from the variable the job names, registered for redaction; ``None`` if unset."""
        return secret(self._env.get(variable))
