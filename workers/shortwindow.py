"""A shorter window than the job's, suspected from the deployment's 429s and kept while they agree.

The job states its quota per window (10 s unless it says otherwise); a deployment may meter
the same rate over a shorter one. Its 429s then come with the job's window copy far from
full and a short ``retry-after`` — as do those of a deployment admitting far less than the
job says (a bucket refuses as quickly). ``suggested`` says when to try the first reading:
a ``ShortWindow`` is a copy of a 1 s window at the stated rate, kept beside the job's copy
(the estimate untouched), and ``used`` reads the next 429. Refused with the short copy full
and told to wait no longer than such a window, the short window was right and its copy
measures the quota from then on; otherwise the window was not the reason, the copy is
dropped and the job's copy measures the quota as before. Why 1 s: it is the shortest
window a deployment is known to meter over, and a copy of it at the stated rate is safe
under any longer one (each second holding a second's worth, no longer window holds more).
Pure: every method takes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable

from workers.windows import Entry, WindowLog

#: The window the deployment is suspected of metering over.
SHORT_WINDOW_S = 1.0
#: A 429 suggests a shorter window when the job's copy held under this share of its limits
#: and ``retry-after`` is under this share of the job's window.
SHORT_HELD, SHORT_RETRY = 1 / 3, 0.25
#: A 429 confirms it when the short copy was this full and ``retry-after`` at most this long.
CONFIRM_FULL, CONFIRM_RETRY_S = 0.9, 2 * SHORT_WINDOW_S


def suggested(window: WindowLog, window_s: float, held_tokens: int, retry_after_s: float | None) -> bool:
    """Whether a 429 past the slow start may come from a window shorter than the job's ``window``.

    ``held_tokens``: what the job's copy held, the refused request included.
    """
    quick = retry_after_s is not None and retry_after_s < SHORT_RETRY * window_s and window_s > SHORT_WINDOW_S
    return quick and held_tokens < SHORT_HELD * window.token_limit \
        and window.requests + 1 < SHORT_HELD * window.request_limit


class ShortWindow:
    """A copy of a ``SHORT_WINDOW_S`` window at the stated rate (times what the estimate believes)."""

    def __init__(self, stated_window: tuple[int, int], window_s: float, guard_s: float, recent: Iterable[Entry]):
        scale = SHORT_WINDOW_S / window_s
        #: The stated quota over the short window (requests, tokens).
        self.stated = (stated_window[0] * scale, stated_window[1] * scale)
        self.log = WindowLog(1, 1, SHORT_WINDOW_S, guard_s)
        for entry in recent:
            if not entry.foreign:  # others' usage is booked at a request's stamp, a quarter window at once
                self.log.add(entry.stamp, entry.requests, entry.tokens)

    def apply(self, requests_share: float, tokens_share: float) -> None:
        """Put the estimate's shares of the stated quota into the copy's limits."""
        self.log.request_limit = max(1, int(self.stated[0] * requests_share))
        self.log.token_limit = max(1, int(self.stated[1] * tokens_share))

    def refund(self, now: float, entry: Entry | None) -> None:
        """A 429 at ``now``: the refused request (its entry here, if it was admitted while the copy
        was kept) leaves the copy, and so does what has expired."""
        self.log.expire(now)
        if entry is not None:
            self.log.refund(entry)

    def used(self, refused: int, retry_after_s: float | None) -> tuple[float, float] | None:
        """At a 429 of ``refused`` tokens (already refunded): the shares of the stated quota the
        short copy held (tokens, requests) if the 429 confirms the short window, else ``None``."""
        log = self.log
        full = log.tokens + refused >= CONFIRM_FULL * log.token_limit or \
            log.requests >= max(1, log.request_limit - 1)  # another request beside the refused one
        if not full or (retry_after_s is not None and retry_after_s > CONFIRM_RETRY_S):
            return None
        return (log.tokens + refused / 2) / self.stated[1], (log.requests + 0.5) / self.stated[0]
