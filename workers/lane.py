"""One deployment as the engine sees it: its client, quota, tokenizer and price.

A lane plans the rows it is handed (counts their prompts, refuses what cannot be sent,
sizes the quota charge) and sends them, the first one alone until the key is known to
work. Rows planned and waiting for admission sit in its ``room``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from schemas import Params, Price, PromptRow
from schemas.plan import Planned, Refusal, plan_counted, untokenizable
from schemas.response import ResponseSpec
from workers.calibration import PromptScale
from workers.client import EndpointClient
from workers.completion import Completion
from workers.errors import EndpointError, JobAbortedError
from workers.outcome import Draft
from workers.quota import Quota
from workers.tokens import TokenCounter, TokenizeError


@dataclass(slots=True)
class Waiting:
    """A row planned and waiting on its lane for the quota to admit it."""

    planned: Planned
    draft: Draft
    #: When it joined the room (the engine's clock).
    since: float
    #: What the budget holds for it: its worst case, and each re-ask's once asked.
    held_usd: float


@dataclass
class Lane:
    """One deployment as the pool sees it: its client, its quota, its tokenizer.

    The key is tried on ``GET /info`` first; where that says nothing (no such route),
    calls go one at a time until the deployment has answered once with anything but
    401/403: a wrong key costs at most one request, not one per worker.

    When the counter's tokenizer is not the model's own, ``scale`` learns from each
    answer's ``usage`` what a counted prompt token really costs, and ``plan`` sizes
    the quota charge by it (``workers.calibration``).
    """

    client: EndpointClient
    quota: Quota
    counter: TokenCounter
    workers: int
    price: Price | None = None
    key_confirmed: bool = False
    head: asyncio.Lock = field(default_factory=asyncio.Lock)
    room: list[Waiting] = field(default_factory=list)
    _probe: asyncio.Lock = field(default_factory=asyncio.Lock)
    _rejected: JobAbortedError | None = None
    scale: PromptScale | None = None

    def __post_init__(self) -> None:
        if self.scale is None and not self.counter.exact:
            self.scale = PromptScale()

    def billed_prompt(self, prompt_tokens: int) -> int:
        """A counted prompt as the endpoint will count it (scaled while the tokenizer is not the model's)."""
        return self.scale.charge(prompt_tokens) if self.scale is not None else prompt_tokens

    def draft(self, row: PromptRow) -> Draft:
        """A sendable row's result-to-be on this deployment."""
        return Draft(row.seq, row.id, dict(row.passthrough), self.model, row.digest, self.client.spec.url)

    def plan(self, row: PromptRow, messages: tuple[dict[str, str], ...] | None = None) -> Planned | Refusal:
        """Count a row's prompt (``messages``: a conversation asked again) and plan it (``schemas.plan``)."""
        try:
            counted = self.counter.prompt_tokens(row.messages if messages is None else messages)
        except TokenizeError as exc:
            return untokenizable(row, str(exc))
        return plan_counted(row, counted, context_tokens=self.context_tokens, model=self.model,
                            charge=self.billed_prompt, price=self.price)

    @property
    def model(self) -> str:
        """The deployment's model name as the job file gives it."""
        return self.client.spec.model

    @property
    def context_tokens(self) -> int:
        """The model's context length."""
        return self.counter.model.context_tokens

    async def confirm_key(self) -> None:
        """Try the key on ``GET /info`` before any completion is sent."""
        try:
            self.key_confirmed = await self.client.check_key()
        except JobAbortedError as exc:
            self._rejected = exc
            raise

    async def probe_finished(self) -> None:
        """Wait while the first call is trying the key: admitting more now would only pile them up."""
        async with self._probe:
            pass

    @property
    def response(self) -> ResponseSpec | None:
        """A labeling job's expected answer, when the job has one."""
        return self.client.modes.response if self.client.modes is not None else None

    async def call(self, messages: tuple[dict[str, str], ...], params: Params) -> Completion:
        """Send one request, serialized behind the first call until the key is known to work."""
        while not self.key_confirmed:
            async with self._probe:
                if self._rejected is not None:  # the job is stopping; send nothing more
                    raise self._rejected
                if self.key_confirmed:  # confirmed while this call waited its turn
                    break
                try:
                    completion = await self.client.complete(messages, params)
                except JobAbortedError as exc:
                    self._rejected = exc
                    raise
                except EndpointError as exc:
                    # Any HTTP answer past authentication shows the key works.
                    self.key_confirmed = exc.status is not None
                    raise
                self.key_confirmed = True
                return completion
        return await self.client.complete(messages, params)
