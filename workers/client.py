"""One deployment's HTTP client: sends the route's request, learns what the endpoint refuses.

The request each route takes is built in ``workers.routes``; answers are read in
``workers.answers`` (re-exported here, with ``Completion``, for the callers that know them
from this module). Everything httpx raises becomes a ``workers.errors`` type here.

Log-probabilities are asked for only while the endpoint accepts them: the first 422
that names ``logprobs`` turns them off for this endpoint and the row is sent again
without. A labeling job's structured-output mode (``workers.labels.Modes``) falls back the
same way: a 400/422 refusing it moves this endpoint to the next mode for the rest of the run,
and until the endpoint has taken one, requests go one at a time (so one refusal teaches it).
A ``retry-after`` longer than ``max_retry_after_s`` is capped, and said.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from schemas import EndpointSpec, Params
from schemas.response import ResponseSpec
from workers.answers import (
    error_from_response,
    normalize_logprobs,
    parse_completion,
    parse_error_body,
    retry_after_seconds,
)
from workers.completion import Completion
from workers.errors import ContentFilteredError, EndpointError, RowFailedError, TransportError
from workers.labels import Modes
from workers.redact import mask_bytes
from workers.routes import chat_path, request_body

__all__ = [
    "Completion",
    "EndpointClient",
    "error_from_response",
    "normalize_logprobs",
    "parse_completion",
    "parse_error_body",
    "retry_after_seconds",
]

log = structlog.get_logger(__name__)


class EndpointClient:
    """Sends chat completions to one deployment; raises ``workers.errors`` types only."""

    def __init__(self, spec: EndpointSpec, api_key: SecretStr | str, *,
                 transport: httpx.AsyncBaseTransport | None = None, response: ResponseSpec | None = None):
        self.spec = spec
        self.logprobs_accepted = True
        #: A labeling job's structured-output modes still open to this endpoint.
        self.modes = Modes(response, spec.api) if response is not None else None
        self._mode_settled = self.modes is None or self.modes.final
        self._mode_probe = asyncio.Lock()
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._secrets = (key,)
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        self._path = chat_path(spec)
        self._http = httpx.AsyncClient(
            base_url=spec.url,
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=min(10.0, spec.timeout_s)),
            transport=transport or AiohttpTransport(
                limits=httpx.Limits(max_connections=spec.max_concurrency,
                                    max_keepalive_connections=spec.max_concurrency)
            ),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(self, messages: tuple[dict[str, str], ...] | list[dict[str, str]], params: Params) -> Completion:
        """One chat completion; one more request each time the endpoint refuses logprobs or the answer's mode."""
        if not self._mode_settled:
            async with self._mode_probe:  # one at a time until a mode is taken: one refusal is enough to learn
                if not self._mode_settled:
                    completion = await self._complete(messages, params)
                    self._mode_settled = True
                    return completion
        return await self._complete(messages, params)

    async def _complete(self, messages: tuple[dict[str, str], ...] | list[dict[str, str]],
                        params: Params) -> Completion:
        while True:
            mode = self.modes.current if self.modes is not None else None
            body, headers = self.request_body(messages, params)
            try:
                return await self._post(body, headers)
            except RowFailedError as exc:
                if isinstance(exc, ContentFilteredError):  # the prompt's fault, never the mode's
                    raise
                if "logprobs" in body and exc.status == 422 and "logprobs" in exc.message:
                    if self.logprobs_accepted:
                        self.logprobs_accepted = False
                        log.warning("logprobs_refused", endpoint=self.spec.url, detail=exc.message[:200])
                    continue
                if self.modes is not None and mode != self.modes.current:
                    continue  # sent in a mode another request found refused: send it in the current one
                if self.modes is not None and self.modes.refused(exc.status, exc.message, settled=self._mode_settled):
                    log.warning("response_mode_refused", endpoint=self.spec.url, refused=mode,
                                now=self.modes.current, detail=exc.message[:200])
                    continue
                raise

    async def check_key(self) -> bool:
        """Ask ``GET /info`` whether the key is accepted, at the cost of no completion.

        True when the deployment answers 200; raises ``AuthRejectedError`` on 401/403;
        False when the answer says nothing about the key (no such route, a 5xx, no answer).
        """
        try:
            # /info belongs to the Azure AI Model Inference API, whose every route wants its api-version.
            response = await self._http.get(f"/info?api-version={self.spec.api_version}")
        except httpx.HTTPError:
            return False
        if response.status_code in (401, 403):
            raise error_from_response(response.status_code, mask_bytes(response.content, self._secrets),
                                      response.headers)
        return response.status_code == 200

    def request_body(
            self, messages: tuple[dict[str, str], ...] | list[dict[str, str]],
            params: Params,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON body and extra headers for this route: only fields the route knows (``workers.routes``)."""
        return request_body(self.spec, messages, params, logprobs=self.logprobs_accepted, modes=self.modes)

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> Completion:
        # httpx's timeout is per read: a body trickled a byte at a time would never trip it. The
        # whole request, body included, gets `timeout_s`.
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                response = await self._http.post(self._path, json=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransportError(f"timed out after {self.spec.timeout_s:g}s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        # The key never gets further than here, whatever the endpoint echoes back.
        content = mask_bytes(response.content, self._secrets)
        if response.status_code != 200:
            raise self._bounded(error_from_response(response.status_code, content, response.headers))
        return parse_completion(content, response.headers)

    def _bounded(self, exc: EndpointError) -> EndpointError:
        """The server's ``retry-after``, capped at ``max_retry_after_s`` and logged when it is long."""
        asked = exc.retry_after_s
        if asked is None:
            return exc
        cap = self.spec.max_retry_after_s
        if asked > cap:
            exc.retry_after_s = cap
            log.warning("retry_after_capped", endpoint=self.spec.url, status=exc.status, asked_s=asked,
                        waiting_s=cap, setting="max_retry_after_s")
        elif asked >= 1.0:
            log.info("retry_after_honoured", endpoint=self.spec.url, status=exc.status, waiting_s=asked)
        return exc
