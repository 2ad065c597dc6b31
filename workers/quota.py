"""Client-side admission against one deployment's quota.

Azure meters serverless quotas over short windows (1–10 s) and charges a request's
tokens at admission as prompt + max_tokens. A bucket the size of a whole minute lets
a job burst the minute's quota at once and collect 429s, so both budgets here refill
continuously at the per-minute rate and hold at most ``burst_s`` seconds' worth.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class Quota:
    """Requests-per-minute and tokens-per-minute budgets of one deployment.

    Build it inside the coroutine that runs the pool: an ``AsyncLimiter`` belongs to
    one event loop.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, burst_s: float = 1.0):
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests = AsyncLimiter(max(1.0, requests_per_minute * burst_s / 60), burst_s)
        self._tokens = AsyncLimiter(max(1.0, tokens_per_minute * burst_s / 60), burst_s)

    def charge(self, tokens: int) -> int:
        """What a request is charged: its tokens, capped at what the bucket can hold."""
        return max(1, min(tokens, int(self._tokens.max_rate)))

    async def admit(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` tokens fits both budgets."""
        await self._requests.acquire()
        await self._tokens.acquire(self.charge(tokens))
