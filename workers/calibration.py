"""What a lane's prompt counts are worth in billed tokens, when its tokenizer is not the model's own.

The quota is charged, and billed, with the model's real tokenizer; a job that could only
name a related one (``model:`` with ``exact: false``) counts prompts a few per cent off,
either way. Charging admission with counts that are low would overfill the server's
window and bring 429s; so each such lane keeps a ``PromptScale``: every answer's
``usage.prompt_tokens`` against what was counted for it, and future charges scaled by
the billed/counted ratio seen so far, plus a margin for the spread between rows.

Until ``warmup`` answers have come back the scale is at least ``prior`` (the most the
count is taken to be off, ``schemas.APPROXIMATE_SPREAD``): the first window is charged
as if every count were that far low. Charges already admitted are left as they are (the
ledger reconciles with the server's headers where it sends them); only later ones follow
the scale, which is all admission needs to stay inside the quota from then on.
"""

from __future__ import annotations

import math

from schemas import APPROXIMATE_SPREAD


class PromptScale:
    """Billed prompt tokens per counted one, learned from the endpoint's ``usage``."""

    def __init__(self, *, prior: float = 1 + APPROXIMATE_SPREAD, margin: float = 0.05, warmup: int = 8):
        self.prior = prior
        self.margin = margin
        self.warmup = warmup
        self.counted = 0
        self.billed = 0
        self.answers = 0

    def learn(self, counted: int, billed: int) -> None:
        """One answer's prompt: counted here, billed by the endpoint."""
        if counted > 0 and billed > 0:
            self.counted += counted
            self.billed += billed
            self.answers += 1

    @property
    def ratio(self) -> float | None:
        """Billed over counted prompt tokens so far; ``None`` before the first answer."""
        return self.billed / self.counted if self.counted else None

    @property
    def factor(self) -> float:
        """What a counted prompt token is charged as, now."""
        ratio = self.ratio
        learned = ratio * (1 + self.margin) if ratio is not None else self.prior
        return max(learned, self.prior) if self.answers < self.warmup else learned

    def charge(self, counted: int) -> int:
        """The quota charge for a prompt counted at ``counted`` tokens."""
        return math.ceil(round(counted * self.factor, 6))  # 945.0000000001 is 945
