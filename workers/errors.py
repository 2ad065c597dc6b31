"""What can go wrong with a call, classified by remedy.

    EndpointError
    ├── RetryableError          try the same request again, later
    │   ├── RateLimitedError    429: the quota's window is full
    │   ├── ServerError         408, 409, 5xx
    │   └── TransportError      timeouts, resets, truncated or garbled bodies
    ├── RowFailedError          this row cannot succeed as sent: recorded as an ``error`` row
    │   └── ContentFilteredError  the endpoint's content filter refused it: a ``filtered`` row
    └── JobAbortedError         no row can succeed: stop the whole job now
        └── AuthRejectedError   401/403: the key is wrong, expired or not allowed

httpx's exceptions are translated into these in ``workers.client`` and nowhere else.
"""

from __future__ import annotations


class EndpointError(Exception):
    """A call to a deployment did not produce a completion."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s

    def describe(self) -> str:
        """One line for the output's ``error`` column and the logs."""
        head = f"HTTP {self.status}" if self.status else type(self).__name__
        code = f" {self.code}" if self.code else ""
        return f"{head}{code}: {self.message}"


class RetryableError(EndpointError):
    """Worth another attempt after a pause."""


class RateLimitedError(RetryableError):
    """429: the deployment's quota window is full."""


class ServerError(RetryableError):
    """408, 409 or 5xx."""


class TransportError(RetryableError):
    """No usable answer: connect or read failure, timeout, reset, truncated body."""


class RowFailedError(EndpointError):
    """The request itself was refused (400, 404, 413, 422): retrying cannot help."""


class ContentFilteredError(RowFailedError):
    """The content filter refused the prompt."""


class JobAbortedError(EndpointError):
    """Nothing can succeed; the job stops."""


class AuthRejectedError(JobAbortedError):
    """401/403 from the deployment."""
