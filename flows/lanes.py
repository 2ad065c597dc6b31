"""A job's deployments made ready to send: each one's key read, its client, quota and tokenizer built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from flows.errors import JobError
from flows.settings import Settings, secret
from schemas import EndpointSpec, ModelInfo, Price, ResponseSpec
from workers import EndpointClient, Lane, Quota, TokenCounter


async def api_key(endpoint: EndpointSpec) -> SecretStr:
    """A deployment's key, read now — from its Prefect Secret block or its environment variable —
    and registered for redaction before anything can log it."""
    if endpoint.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            block: Any = await Secret.aload(endpoint.api_key_secret)
        except ValueError as exc:  # Prefect's word for a block that does not exist
            raise JobError(f"Prefect Secret block {endpoint.api_key_secret!r} not found: it must hold the "
                           "deployment's key") from exc
        key = secret(str(block.get()))
        where = f"Prefect Secret block {endpoint.api_key_secret!r}"
    else:
        key = Settings.read().key(endpoint.api_key_env)
        where = f"environment variable {endpoint.api_key_env}"
    if key is None:
        raise JobError(f"{where} is not set: it must hold the deployment's key")
    return key


def lane_for(endpoint: EndpointSpec, key: SecretStr | str, price: Price | None = None, shared: bool = False,
             model: ModelInfo | None = None, response: ResponseSpec | None = None,
             clock: Callable[[], float] | None = None) -> Lane:
    """A deployment's client, quota and tokenizer, built on the running event loop.

    ``shared``: the deployment's quota is shared with other processes (a scaled-out job):
    the quota admits within the share it is given (``flows.shared_quota.Holder``).
    ``model``: the model as the job resolves it (``JobSpec.model_for``); by default the catalog's.
    ``response``: a labeling job's expected answer (the client asks for it, the pool validates it).
    ``clock``: the run's clock (the engine's), which the quota reads too.
    """
    quota = Quota(endpoint.requests_per_minute, endpoint.tokens_per_minute, window_s=endpoint.quota_window_s,
                  shared=shared, mode=endpoint.quota, name=endpoint.url, clock=clock)
    return Lane(EndpointClient(endpoint, key, response=response), quota, TokenCounter(model or endpoint.model),
                endpoint.max_concurrency, price=price)
