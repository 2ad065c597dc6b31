"""The slow start: a fresh deployment's first window, released in steps while no 429 says otherwise.

A fresh deployment may be a token bucket holding one window, which admits a whole
window at once and then the steady rate; or a sliding log (or fixed windows), which
admits a window per window and refuses the burst's excess. Sending the whole window at
once would find out with a storm of 429s, so the allowance beyond the steady burst is
released into the ledger's budgets in ``STEPS`` steps over ``WINDOWS`` windows: a bucket
keeps what is not taken at once, so all of it is still credited to the job, at no more
than a quarter above the steady rate (answers never pile up in the client, and a job
that overstates its quota learns it at about its own level). The first 429 in that
phase ends it and, by how much had been sent and how long the server asks to wait,
tells a bucket from a log (``fits_a_bucket``). Pure: every method takes ``now``.
"""

from __future__ import annotations

from workers.windows import Budget


class SlowStart:
    """The first window's allowance beyond the steady burst, still to be released; see the module docstring."""

    STEPS = 8
    WINDOWS = 4
    #: A ``retry-after`` under this share of the refused request's refill time is a near miss.
    NEAR_MISS = 0.05

    def __init__(self, window_s: float, requests_left: float, tokens_left: float, now: float):
        self.window_s = window_s
        #: Requests and tokens still to be released beyond the budgets' steady burst.
        self.left = (max(0.0, requests_left), max(0.0, tokens_left))
        self._step = tuple(x / self.STEPS for x in self.left)
        self._next = now
        #: When the first request went (the refill a bucket adds is counted from then).
        self.started = now
        #: A near miss was taken for a bucket's already (``fits_a_bucket``).
        self.near_missed = False

    @property
    def releasing(self) -> bool:
        return self.left != (0.0, 0.0)

    def wait(self, now: float) -> None:
        """Nothing sent yet (the key probe, the first rows being read): the slow start begins later."""
        self.started = now

    def end(self) -> None:
        self.left = (0.0, 0.0)

    def release(self, now: float, requests: Budget, tokens: Budget, limits: tuple[int, int]) -> None:
        """Credit the budgets with the step due at ``now``; ``limits``: the window copy's (requests, tokens)."""
        if not self.releasing:
            return
        # A bucket holds a window at most: refills saved up while nothing was sent (the key
        # probe, the first answers) come out of what is still to be released.
        requests.refill(now)
        tokens.refill(now)
        self.left = (max(0.0, min(self.left[0], limits[0] - requests.level)),
                     max(0.0, min(self.left[1], limits[1] - tokens.level)))
        if not self.releasing or now < self._next:
            return
        self._next = now + self.window_s * self.WINDOWS / self.STEPS
        steps = [min(left, step) for left, step in zip(self.left, self._step, strict=True)]
        requests.credit(now, steps[0])
        tokens.credit(now, steps[1])
        self.left = (max(0.0, self.left[0] - steps[0]), max(0.0, self.left[1] - steps[1]))
        if min(self._step) <= 0 or max(self.left) <= 1e-9:
            self.end()

    def next_step_in(self, now: float) -> float | None:
        """Seconds until the next step is released (``None``: none is due)."""
        return self._next - now if self.releasing and self._next > now else None

    def fits_a_bucket(self, now: float, held: int, refused: int, token_limit: int, tokens_per_s: float,
                      bucket_room: float, retry_after_s: float | None) -> bool:
        """Whether the slow start's 429 came from a bucket of one window; ``held``: the copy's
        last window, the ``refused`` request included.

        A bucket like that refuses once a window plus the refill since the start is spent;
        a log (or fixed windows) once a window is. Refused with room left in the client's own
        bucket copy (``bucket_room``), it is not such a bucket (or not at this level); refused
        nearer the second, it is a log, but for one near miss: the copy holding a window and
        the server asking for a small part of one request's refill (``NEAR_MISS``) is the
        deficit of a bucket a hair behind the client's copy (a request that reached it late),
        where a log's wait lasts until its oldest entries leave the window. Taken for the
        bucket once; the next 429 decides. (With one-second windows the whole window is the
        steady burst, so the first 429 comes after the first window, and a log's verdict
        would cost a bucket's job a tenth of its rate for good.)
        """
        if bucket_room >= 0.05 * token_limit:
            return False
        refill = tokens_per_s * min(self.window_s, now - self.started)
        if held >= token_limit + refill / 2:
            return True
        near_miss = held >= token_limit and retry_after_s is not None and not self.near_missed and \
            retry_after_s <= self.NEAR_MISS * refused / tokens_per_s
        self.near_missed |= near_miss
        return near_miss
