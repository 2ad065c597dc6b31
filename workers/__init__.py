"""The request engine: endpoint client, quota, retries, worker pool and the simulator.

Nothing here imports Prefect or the Azure SDK; ``flows`` wires these to storage and
orchestration.
"""

from workers.client import Completion, EndpointClient, normalize_logprobs, parse_error_body, retry_after_seconds
from workers.dedupe import Duplicates, copy_record
from workers.errors import (
    AuthRejectedError,
    ContentFilteredError,
    EndpointError,
    JobAbortedError,
    RateLimitedError,
    RetryableError,
    RowFailedError,
    ServerError,
    TransportError,
)
from workers.exchange import Sender
from workers.labels import Modes, label_columns
from workers.lane import Lane, Waiting
from workers.outcome import Draft, Outcome, Tally
from workers.pool import Engine
from workers.quota import Quota
from workers.redact import REDACTOR, Redactor
from workers.retry import RetryPolicy
from workers.spend import BudgetExhaustedError, Spend
from workers.stopping import StopReason
from workers.tokens import TokenCounter, TokenizeError

__all__ = [
    "AuthRejectedError",
    "BudgetExhaustedError",
    "Completion",
    "Draft",
    "Duplicates",
    "ContentFilteredError",
    "EndpointClient",
    "EndpointError",
    "Engine",
    "JobAbortedError",
    "Lane",
    "Modes",
    "Outcome",
    "Quota",
    "REDACTOR",
    "RateLimitedError",
    "Redactor",
    "RetryPolicy",
    "RetryableError",
    "RowFailedError",
    "Sender",
    "ServerError",
    "Spend",
    "StopReason",
    "Tally",
    "TokenCounter",
    "TokenizeError",
    "TransportError",
    "Waiting",
    "copy_record",
    "label_columns",
    "normalize_logprobs",
    "parse_error_body",
    "retry_after_seconds",
]
