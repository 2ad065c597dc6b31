"""Admission decisions for one deployment's quota, as pure functions of ``now``.

The ``Ledger`` combines a ``Budget`` per kind (requests, tokens) with the ``WindowLog``
copy of the server's window (``workers.windows``); it learns from the server's
``x-ratelimit-*`` headers (usage it did not send — another client on the same deployment
— is entered as foreign usage) and from 429s (one shared pause for the whole pool, sized
by ``retry-after``), and keeps what it believes the deployment admits in a
``QuotaEstimate`` (``workers.learning``). See ``workers.quota`` for the whole design.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from workers import shortwindow
from workers.learning import QuotaEstimate, QuotaMode, read_hints, unexplained_usage
from workers.shortwindow import SHORT_WINDOW_S, ShortWindow
from workers.slowstart import SlowStart
from workers.windows import Budget, Entry, Ticket, WindowLog

#: A share this small is none (kept above zero so that the limits stay positive).
NO_SHARE = 1e-3


class Ledger:
    """Admission decisions for one deployment's quota; every method takes ``now``.

    The limits in force are the stated quota times what ``estimate`` believes the
    deployment admits (``workers.learning``). A fresh deployment may take a whole window at
    once: with ``first_window``, the window's allowance beyond the steady burst is released
    step by step while no 429 says otherwise (``workers.slowstart``).
    """

    BYPASS_FLOOR_S = 20.0

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, guard_s: float = 0.05, bypass_windows: float = 2.0,
                 now: float = 0.0, mode: QuotaMode = "cap", first_window: bool = True):
        self.stated_rpm, self.stated_tpm = requests_per_minute, tokens_per_minute
        self.window_s = window_s
        self.stated_window = (max(1, int(requests_per_minute / 60 * window_s)),
                              max(1, int(tokens_per_minute / 60 * window_s)))
        self.burst_s = min(1.0 if burst_s is None else burst_s, window_s)
        self.estimate = QuotaEstimate(window_s, mode=mode, now=now)
        #: The share of the deployment's quota this client may use (others send to it too: ``workers.shares``).
        self.share = 1.0
        #: The share the process will soon hold (``set_share``): a request too large for ``share`` waits for it.
        self.coming_share = 1.0
        #: This client's admissions over the window copy's span and ``keep_recent``'s extra (``fullness``).
        self._recent: deque[Entry] = deque()
        self._recent_extra_s = 0.0
        self.window = WindowLog(*self.stated_window, window_s, guard_s)
        self.requests = Budget(1.0, 1.0, now)
        self.tokens = Budget(1.0, 1.0, now)
        #: A copy of a shorter window than the job's, kept once the deployment's 429s suggest one.
        self.short: ShortWindow | None = None
        self._burst_share = 1.0
        #: ``bucket``: the server is taken to be a bucket of one window, refilled at the rate (a
        #: fresh deployment's whole window, then the steady rate, no window copy consulted);
        #: ``sliding``: the strictest meter, the window copy consulted. The first 429 past the
        #: slow start proves a bucket wrong.
        self.model = "bucket" if first_window else "sliding"
        #: When the last 429 taught something: the 429s of requests sent before it teach nothing new.
        self._learned_at = -1e18
        self._apply(now)
        self.requests.level = max(1.0, self.stated_rpm / 60 * self.burst_s)
        self.tokens.level = max(1.0, self.stated_tpm / 60 * self.burst_s)
        self.bypass_windows = bypass_windows
        self.paused_until = now
        self.foreign_tokens = 0
        self.foreign_requests = 0
        self.pauses = 0
        self.total_requests = 0
        self.total_tokens = 0
        #: 429s, and the admissions they refused (``total_*`` minus these: what the quota was charged).
        self.rate_limited_responses = 0
        self.refused_tokens = 0
        #: The first window's allowance still to be released beyond the steady burst.
        self.slow_start = SlowStart(window_s, self.window.request_limit - self.requests.level,
                                    self.window.token_limit - self.tokens.level, now) if first_window else None

    # --- what is in force ---------------------------------------------------------------

    @property
    def charged_tokens(self) -> int:
        """Tokens the deployment's quota was charged (prompt + ``max_tokens`` of every request it took)."""
        return self.total_tokens - self.refused_tokens

    @property
    def charged_requests(self) -> int:
        """Requests the deployment's quota took (admitted, less those it refused with 429)."""
        return self.total_requests - self.rate_limited_responses

    @property
    def learned_per_minute(self) -> tuple[int, int]:
        """The requests/min and tokens/min the deployment is believed to admit."""
        return round(self.stated_rpm * self.estimate.requests), round(self.stated_tpm * self.estimate.tokens)

    def _apply(self, now: float) -> None:
        """Put the estimate into the window copy and the budgets."""
        # Rates from the whole-number window limits, as a server computes them, a hair under: a
        # bucket refilled a fraction of a token faster than the server's refuses at its edge.
        # The budgets pace at the deployment's rate, a share or not: when another process gives units
        # back, what its window held leaves at that rate, and only the window copy bounds the share.
        rps = self.stated_window[0] / self.window_s * self.estimate.requests * 0.998
        tps = self.stated_window[1] / self.window_s * self.estimate.tokens * 0.998
        requests_share, tokens_share = self.estimate.requests * self.share, self.estimate.tokens * self.share
        self.window.request_limit = max(1, int(self.stated_window[0] * requests_share))
        self.window.token_limit = max(1, int(self.stated_window[1] * tokens_share))
        self.window.largest = int(self.stated_window[1] * self.estimate.tokens * self.coming_share)
        if self.short is not None:
            self.short.apply(requests_share, tokens_share)
        for budget, rate in ((self.requests, rps), (self.tokens, tps)):
            budget.refill(now)
            budget.per_second = rate
            span = self.window_s if self.model == "bucket" else self.burst_s * self._burst_share
            budget.capacity = max(1.0, rate * span)

    def set_share(self, now: float, share: float, coming: float | None = None) -> None:
        """Use ``share`` of the deployment's quota from ``now`` (none at all: nothing is admitted).

        ``coming``: the share the process is still acquiring, if larger. A request too large for
        the window of ``share`` waits for that one's, rather than overfill the deployment's
        window now (with no more coming, it goes alone in an empty window of its share).
        """
        share = max(NO_SHARE, min(1.0, share))
        coming = max(share, min(1.0, coming or share))
        if share != self.share or coming != self.coming_share:
            self.share, self.coming_share = share, coming
            self._apply(now)

    def keep_recent(self, extra_s: float) -> None:
        """Remember admissions ``extra_s`` seconds past the window copy's span, for ``fullness``."""
        self._recent_extra_s = extra_s

    def fullness(self, now: float, late_s: float = 0.0) -> float:
        """What this client's admissions still hold of the deployment's window, as a share of the
        whole believed window; ``late_s`` (up to what ``keep_recent`` keeps): as if the server had
        stamped every request that much later than the copy."""
        late_s = min(late_s, self._recent_extra_s)
        start = now - self.window.window_s - late_s
        requests = tokens = 0
        for entry in reversed(self._recent):  # refunded entries count nothing (their counts are zeroed)
            if entry.stamp <= start:
                break
            requests += entry.requests
            tokens += entry.tokens
        return max(requests / (self.stated_window[0] * self.estimate.requests),
                   tokens / (self.stated_window[1] * self.estimate.tokens))

    def adopt(self, now: float, tokens_share: float, requests_share: float) -> None:
        """Another process sending to this deployment learned it admits these shares of the stated quota."""
        if self.estimate.on_limit(now, tokens_share, requests_share):
            self._apply(now)

    def _tick(self, now: float) -> None:
        if self.total_requests == 0:
            # Nothing sent yet (the key probe, the first rows being read): the slow start begins with
            # the first request, and what the budgets would have saved meanwhile is not released at
            # once on top of its first step.
            self.requests.hold(now)
            self.tokens.hold(now)
            if self.slow_start is not None:
                self.slow_start.wait(now)
        if self.slow_start is not None:
            self.slow_start.release(now, self.requests, self.tokens,
                                    (self.window.request_limit, self.window.token_limit))
        if self.estimate.probe(now):
            self._apply(now)

    # --- admission ----------------------------------------------------------------------

    def delay(self, now: float, tokens: int) -> float:
        """Seconds to wait before a request of ``tokens`` may go (0: now)."""
        self._tick(now)
        return self._wait(now, tokens)

    def _wait(self, now: float, tokens: int) -> float:
        """``delay`` once ``_tick`` has run for ``now``."""
        if self.share <= NO_SHARE:
            return self.window.window_s  # nothing of the quota is this client's now
        wait = max(
            self.paused_until - now,
            self.requests.wait(now, 1),
            self.tokens.wait(now, tokens),
            self.window.wait(now, tokens) if self.model == "sliding" else 0.0,
            self.short.log.wait(now, tokens) if self.short is not None else 0.0,
        )
        return wait if wait > 1e-6 else 0.0  # float residue of a refill is not a wait

    def choose(self, now: float, costs: Sequence[int], oldest_waited_s: float) -> tuple[int | None, float]:
        """Which of the waiting requests (oldest first) may go now.

        The oldest goes as soon as it fits. Until it has waited ``bypass_windows``
        windows (``BYPASS_FLOOR_S`` at least: two 1 s windows would leave a short window's
        packing to arrival order), a younger one that fits the room left at the window's
        edge may go first (the oldest cannot use that room yet anyway); after that, nobody
        overtakes it. Returns the index and 0, or ``None`` and how long to wait before asking again.
        """
        self._tick(now)  # once: the candidates are weighed against the same state
        first = self._wait(now, costs[0])
        if first == 0.0 and (self.model != "sliding" or len(costs) == 1):
            return 0, 0.0
        # While the first window is being released, ask again at its next step.
        step = first if self.slow_start is None else self.slow_start.next_step_in(now) or first
        bypass_left = max(self.BYPASS_FLOOR_S, self.window.window_s * self.bypass_windows) - oldest_waited_s
        if bypass_left <= 1e-6:
            return (0, 0.0) if first == 0.0 else (None, min(first, step))
        soonest, best = first, 0 if first == 0.0 else None
        for index in range(1, len(costs)):
            if best is not None and costs[index] <= costs[best]:
                continue
            wait = self._wait(now, costs[index])
            if wait == 0.0:
                if self.model != "sliding":
                    return index, 0.0
                best = index
            soonest = min(soonest, wait)
        if best is not None:
            return best, 0.0
        return None, min(soonest, bypass_left, step)

    def admit(self, now: float, tokens: int) -> Ticket:
        """Charge one request of ``tokens``; call when ``delay`` says 0."""
        self.requests.take(now, 1)
        self.tokens.take(now, tokens)
        entry = self.window.add(now, 1, tokens)
        if self._recent_extra_s:
            self._recent.append(entry)
            while self._recent[0].stamp <= now - self.window.window_s - self._recent_extra_s:
                self._recent.popleft()
        short = self.short.log.add(now, 1, tokens) if self.short is not None else None
        self.total_requests += 1
        self.total_tokens += tokens
        return Ticket(entry, *self.window.remaining, self.total_requests, self.total_tokens, self.tokens.level,
                      self.window.request_limit, short, self.foreign_requests, self.foreign_tokens,
                      self.window.token_limit)

    # --- what the server says -----------------------------------------------------------

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None,
                limit_requests: int | None = None, limit_tokens: int | None = None, now: float | None = None) -> None:
        """Reconcile with the server's own count of what its window has left after this request.

        The values are hints (``workers.learning.read_hints``): implausible ones are dropped,
        a stated limit is evidence of the real quota, and per-minute figures say nothing
        about the window's usage. The server may have seen any of the requests admitted
        since this one (they race in flight), so only a shortfall beyond all of those is
        certain to be someone else's usage of the deployment; it is entered at the
        request's admission time, at most a quarter of the window per reading.
        """
        hints, scale = read_hints(remaining_requests, remaining_tokens, limit_requests, limit_tokens,
                                  window_requests=self.stated_window[0], window_tokens=self.stated_window[1],
                                  window_s=self.window_s)
        at = ticket.entry.stamp if now is None else now
        limits = (None if hints.limit_tokens is None else hints.limit_tokens / self.stated_window[1],
                  None if hints.limit_requests is None else hints.limit_requests / self.stated_window[0])
        # A limit far below the job's is checked against what this client sent (two scans of the
        # copy) only when it would move the estimate: one the estimate is already at or under
        # teaches nothing, and the copy's limit is then no looser than the server's.
        believed = True
        if scale == "window" and min((x for x in limits if x is not None), default=1.0) < 0.5 \
                and self.estimate.would_move(*limits):
            believed = hints.limit_tokens is not None and hints.remaining_tokens is not None and \
                self._fits_the_window(ticket, hints.limit_tokens - hints.remaining_tokens,
                                      hints.limit_tokens / self.stated_window[1])
            if not believed:
                limits = (None, None)
        if self.estimate.on_limit(at, *limits):
            self._apply(at)
        if scale != "window" or self.model != "sliding" or not believed:
            # Usage of another tenant shows only in figures of a window like the copy's (a limit
            # not believed is a window of another length: its remaining counts compare with nothing).
            return
        # Since this request: what this client admitted just after it (within the guard: the server
        # may have seen those first), and what other answers booked as others' usage meanwhile
        # (in the copy now, not in this ticket's count).
        raced_requests, raced_tokens = self.window.own_after(ticket.entry, self.window.guard_s)
        since_requests = raced_requests + self.foreign_requests - ticket.foreign_requests
        since_tokens = raced_tokens + self.foreign_tokens - ticket.foreign_tokens
        gap_requests = unexplained_usage(hints.remaining_requests, hints.limit_requests, ticket.remaining_requests,
                                         ticket.request_limit, self.window.request_limit) - since_requests
        gap_tokens = unexplained_usage(hints.remaining_tokens, hints.limit_tokens, ticket.remaining_tokens,
                                       ticket.token_limit, self.window.token_limit) - since_tokens
        gap_requests = min(gap_requests, self.window.request_limit // 4)
        gap_tokens = min(gap_tokens, self.window.token_limit // 4)
        if gap_requests > 0 or gap_tokens > 0:
            self.foreign_tokens += max(0, gap_tokens)
            self.foreign_requests += max(0, gap_requests)
            self.window.add(ticket.entry.stamp, max(0, gap_requests), max(0, gap_tokens), foreign=True)

    def _fits_the_window(self, ticket: Ticket, server_used: int, share: float) -> bool:
        """Whether the server's usage figure is what this client sent over the job's window.

        A stated limit far below the job's (``share`` of it) means a lower quota, or the
        same quota over a shorter window (a 1 s window's limit is a tenth of a 10 s one's):
        only when the server's count of what it holds matches what this client sent over
        the job's window, and not what it sent over the shorter window, is it the first
        (early on, when everything sent is recent, the two agree and nothing is believed).
        """
        ours = self.window.own_tokens_through(ticket.entry, self.window_s)
        shorter = self.window.own_tokens_through(ticket.entry, self.window_s * share)
        return server_used > 0 and abs(ours - server_used) <= 0.25 * server_used < abs(shorter - server_used)

    def rate_limited(self, now: float, ticket: Ticket, retry_after_s: float | None) -> bool:
        """A 429: refund the request, learn from it, pause everyone until the server has room.

        In the slow start, the first 429 only ends it (this deployment does not take a
        whole window at once), and halves bursts unless the copy held its whole window
        then (the refusal of a log or fixed windows at the stated quota, which the copy
        foresees from then on). Otherwise what the window copy held is evidence of the
        real quota (``QuotaEstimate.on_429``), the copy's guard doubles (up to 1 s), bursts
        are halved (down to a quarter second's worth), and the pool resumes at the steady
        rate. Without ``retry-after`` the pause lasts until the copy, with the new
        limits, has room for the request. Returns whether the estimate went down.
        """
        refused = ticket.entry.tokens  # the refund below zeroes the entry
        self.window.expire(now)
        held = self.window.tokens  # what the last window held, the refused request included
        held_requests = self.window.requests
        self.window.refund(ticket.entry)
        if self.short is not None:
            self.short.refund(now, ticket.short)
        self.rate_limited_responses += 1
        self.refused_tokens += refused
        learned, probing = self._lesson(now, ticket, held, refused, retry_after_s)
        # The slow start's 429 with the copy holding its whole window is what a log or fixed windows
        # at the stated quota give: the copy is right, and its pace needs no smaller bursts.
        explained = probing and self.estimate.mode == "cap" and (
            held >= 0.98 * self.window.token_limit or held_requests >= self.window.request_limit)
        if now >= self.paused_until and not explained:
            self._burst_share = max(0.25, self._burst_share / 2)
            if not probing:  # the slow start's 429 says nothing of late stamps
                self.window.widen_guard()
        self._apply(now)
        pause = retry_after_s
        if pause is None:
            pause = min(self.window.window_s, max(0.25, self.window.wait(now, ticket.entry.tokens or 1)))
        if now + pause > self.paused_until:
            self.pauses += 1
            self.paused_until = now + pause
        self.requests.drain(now)
        self.tokens.drain(now)
        return learned

    def _lesson(self, now: float, ticket: Ticket, held: int, refused: int,
                retry_after_s: float | None) -> tuple[bool, bool]:
        """What a 429 of ``ticket`` (``refused`` tokens) teaches, the window copy having ``held`` tokens:
        (the estimate went down, it was the slow start's answer).

        Past the slow start, a refusal with the copy far from full and a short ``retry-after``
        may come from a shorter window than the job's: that reading is tried first, and the
        next 429 decides (``workers.shortwindow``).
        """
        if ticket.entry.stamp < self._learned_at:
            return False, False  # sent before the last lesson was drawn: the same evidence again
        self._learned_at = now
        if self.slow_start is not None and (self.model == "bucket" or self.slow_start.releasing):
            # The slow start's answer: says nothing of late stamps or bursts. Not from a bucket of
            # one window: the strict model from now on.
            self.slow_start.end()
            if not self.slow_start.fits_a_bucket(now, held, refused, self.window.token_limit, self.tokens.per_second,
                                                 ticket.bucket_room, retry_after_s):
                self.model = "sliding"
            return False, True
        if self.short is not None:
            used = self.short.used(refused, retry_after_s)
            if used is not None:
                return self.estimate.on_429(now, used[0] / self.share, used[1] / self.share), False
            self.short = None
        elif shortwindow.suggested(self.window, self.window_s, held, retry_after_s):
            self.short = ShortWindow(self.stated_window, self.window_s, self.window.guard_s,
                                     self.window.entries_since(now - SHORT_WINDOW_S))
            self._apply(now)
            return False, False
        # The server held at least what the copy holds, and less than that plus the refused
        # request: take the middle.
        # (Holding a share of the quota, the others are taken to hold theirs: the server held that much more.)
        used_tokens = (self.window.tokens + refused / 2) / self.stated_window[1] / self.share
        used_requests = (self.window.requests + 0.5) / self.stated_window[0] / self.share
        return self.estimate.on_429(now, used_tokens, used_requests), False
