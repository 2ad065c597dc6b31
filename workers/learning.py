"""What a deployment really admits, learned while running: 429s as evidence, headers as hints.

The job states a quota; the deployment may admit less (the user read the wrong page, or
the deployment is shared), meter over another window, or answer with rate-limit headers
that mean nothing. Pure pieces, every method taking ``now``:

``QuotaEstimate`` — the share of the stated quota the deployment is believed to admit,
per kind (tokens, requests). Why this scheme rather than a fitted rate: the only
certain signal is a 429, and it comes at the moment the server's window is full, so
what the client's window copy holds then *is* a measurement of the real window:

- a 429 cuts the share of the kind nearest its limit in the copy (and of any other kind
  nearly as near) to what the copy held then (a little under: the refused request was just
  past the edge); a kind far from its limit says nothing of what the server allows. One
  429 is enough to converge; a larger error (a quota overstated 5×) costs one 429, not a storm;
- a 429 again within two windows of a cut, with the copy full at the new level, means
  the server has less room than the copy (another tenant's usage varies, stamps are
  late; a shorter window is read apart, ``workers.shortwindow``): the share then drops by
  a fixed factor (``FULL_CUT``) until 429s stop — a step of the other tenant's size, not
  a collapse, since each cut soon after the last also holds twice as long;
- the evidence fades: after ``hold_s`` seconds without a 429 the share is probed back
  up, ``PROBE_STEP`` per window, never above the stated quota (``cap``) — or above it,
  starting with faster steps, when the job says ``quota: auto``. Each cut soon after
  the last doubles the hold (up to ``MAX_HOLD_S``), so probing into a fixed ceiling
  costs a 429 every few minutes, not every few seconds.

``read_hints`` — ``x-ratelimit-*`` values believed only when plausible: non-negative
integers (``-1`` and garbage are dropped), remaining not above the limit; the limit, when
present, names the scale (the window's figures or the minute's, whichever it is nearer by
ratio); without one, a remaining larger than the window's whole allowance can only count the
minute.

``unexplained_usage`` — what the server's count shows beyond what the client's window copy
held: another tenant's usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

QuotaMode = Literal["cap", "auto"]

#: After a 429 with the window copy below this share of its limit, the copy's level is the measurement.
FULL_SHARE = 0.9
#: The cut when the copy was full (the server has less room than the copy thought). 0.85 was
#: a collapse for a job beside another tenant (a second 429 from the tenant's own variation cut
#: it to 0.57 of the quota, held a minute); in the worlds 0.92 gave the same 429s and more rate.
FULL_CUT = 0.92
#: A 429 is taken to be refused by each kind whose copy is at least this share as full as the fullest.
BINDING = 0.8
#: Cut a little under what the copy held: the refused request was just past the edge.
MARGIN = 0.985
PROBE_STEP = 0.05
#: In ``auto`` mode before any 429: grow this much per window (find the real quota in seconds).
AUTO_STEP = 0.25
HOLD_S = 30.0
MAX_HOLD_S = 240.0
MIN_SHARE = 0.02
#: ``auto`` never probes past this multiple of the stated quota.
AUTO_CEILING = 8.0


class QuotaEstimate:
    """The share of the stated quota the deployment admits, per kind; see the module docstring."""

    def __init__(self, window_s: float, *, mode: QuotaMode = "cap", now: float = 0.0):
        self.window_s = window_s
        self.mode = mode
        self.ceiling = AUTO_CEILING if mode == "auto" else 1.0
        self.tokens = 1.0
        self.requests = 1.0
        self.hold_s = HOLD_S
        self._last_evidence = now
        self._last_cut: float | None = None
        self._last_probe = now

    def on_429(self, now: float, used_tokens: float, used_requests: float) -> bool:
        """A 429; ``used_*``: what the window copy held then, as shares of the *stated* window limits.

        Returns whether the estimate went down.
        """
        self._last_evidence = now
        shares = {"tokens": self.tokens, "requests": self.requests}
        used = {"tokens": used_tokens, "requests": used_requests}
        # A 429 does not say which quota refused: the kind nearest its limit in the copy did. The
        # other kind's level then measures only what this job asked of it, not what the server allows.
        fullness = {k: used[k] / shares[k] for k in shares}
        refusing = [k for k in shares if fullness[k] >= BINDING * max(fullness.values())]
        full = any(fullness[k] >= FULL_SHARE for k in refusing)
        repeated = self._last_cut is not None and now - self._last_cut < 2 * self.window_s
        new = dict(shares)
        for k in refusing:
            if full and repeated:  # cut to what the copy held and refused again at that: the meter is tighter
                new[k] = shares[k] * FULL_CUT
            else:
                new[k] = min(shares[k], max(MIN_SHARE, used[k] * MARGIN))
        cut = any(new[k] < shares[k] - 1e-9 for k in shares)
        if cut:
            if self._last_cut is not None and now - self._last_cut < 2 * self.hold_s + self.window_s:
                self.hold_s = min(MAX_HOLD_S, self.hold_s * 2)
            self._last_cut = now
            self.tokens = max(MIN_SHARE, new["tokens"])
            self.requests = max(MIN_SHARE, new["requests"])
        return cut

    def on_limit(self, now: float, tokens_share: float | None, requests_share: float | None) -> bool:
        """The server's stated limit, as a share of the job's: taken as it is (within the ceiling)."""
        moves = self._moves(tokens_share, requests_share)
        for kind, share in moves.items():
            setattr(self, kind, share)
        if moves:
            self._last_evidence = now
        return bool(moves)

    def would_move(self, tokens_share: float | None, requests_share: float | None) -> bool:
        """Whether ``on_limit`` with these shares would change the estimate."""
        return bool(self._moves(tokens_share, requests_share))

    def _moves(self, tokens_share: float | None, requests_share: float | None) -> dict[str, float]:
        """The kinds a stated limit moves, and to what (down only, but for ``auto``)."""
        moves = {}
        for kind, share in (("tokens", tokens_share), ("requests", requests_share)):
            if share is None:
                continue
            share = max(MIN_SHARE, min(self.ceiling, share))
            if abs(share - getattr(self, kind)) > 1e-3 and (share < getattr(self, kind) or self.mode == "auto"):
                moves[kind] = share
        return moves

    def probe(self, now: float) -> bool:
        """Raise the estimate a step if the evidence has faded; returns whether it moved."""
        if now - self._last_probe < self.window_s:
            return False
        self._last_probe = now
        never_limited = self._last_cut is None
        if not never_limited and now - self._last_evidence < self.hold_s:
            return False
        if self.tokens >= self.ceiling and self.requests >= self.ceiling:
            return False
        step = AUTO_STEP if self.mode == "auto" and never_limited else PROBE_STEP
        self.tokens = min(self.ceiling, self.tokens * (1 + step))
        self.requests = min(self.ceiling, self.requests * (1 + step))
        return True


@dataclass(frozen=True, slots=True)
class Hints:
    """Rate-limit headers that passed the plausibility checks, on the window's scale."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    #: The server's own window limits, when it stated them (a share of the job's is evidence).
    limit_requests: int | None = None
    limit_tokens: int | None = None


def read_hints(remaining_requests: int | None, remaining_tokens: int | None, limit_requests: int | None,
               limit_tokens: int | None, *, window_requests: int, window_tokens: int,
               window_s: float) -> tuple[Hints, str]:
    """Plausible hints on the window's scale, and the scale they came in (``window``, ``minute``, ``none``).

    ``window_*``: the job's stated limits per window. Per-minute figures are converted
    to the window (remaining and limits alike, pro rata): a hint, not a count.
    """
    kinds = {"requests": (remaining_requests, limit_requests, window_requests),
             "tokens": (remaining_tokens, limit_tokens, window_tokens)}
    out: dict[str, tuple[int | None, int | None]] = {}
    scale = "none"
    for kind, (remaining, limit, stated) in kinds.items():
        remaining = remaining if remaining is not None and remaining >= 0 else None
        limit = limit if limit is not None and limit > 0 else None
        if remaining is not None and limit is not None and remaining > limit:
            remaining = limit = None  # inconsistent: believe neither
        if remaining is None and limit is None:
            out[kind] = (None, None)
            continue
        if limit is not None:
            # The scale whose figure the limit is nearer (by ratio): a window's limit twice the job's
            # (a quota the job understates) is not a minute's, which is 60 / window_s times it.
            minute = abs(math.log(limit / (stated * 60 / window_s))) < abs(math.log(limit / stated))
        else:
            minute = remaining is not None and remaining > 1.1 * stated
        factor = window_s / 60 if minute else 1.0
        scale = "minute" if minute else "window"
        out[kind] = (None if remaining is None else int(remaining * factor),
                     None if limit is None else int(limit * factor))
    return Hints(out["requests"][0], out["tokens"][0], out["requests"][1], out["tokens"][1]), scale


def unexplained_usage(remaining: int | None, limit: int | None, ours_remaining: int, ours_limit: int,
                      limit_now: int) -> int:
    """What the server counts in its window beyond what the copy held after this request.

    Both readings must agree: remaining against remaining (what is left), and, when the
    server states its limit, usage against usage (limit less remaining). A copy whose limit
    is above the server's (probing up under ``quota: auto``) would otherwise book the
    difference as another tenant's; one cut below it (after another tenant's burst) books
    less than their usage, a cautious reading: the cut already made room for them. Without a
    stated limit, remaining counts compare only while the copy's limit is the one they were
    made against.
    """
    if remaining is None:
        return 0
    if limit is not None:
        return min(ours_remaining - remaining, (limit - remaining) - (ours_limit - ours_remaining))
    return ours_remaining - remaining if ours_limit == limit_now else 0
