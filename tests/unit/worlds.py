"""A deployment and the client's ledger in one discrete-event loop, time passed in, no I/O.

The server is a meter from ``workers.simulator.metering`` (optionally shared with another
tenant, optionally stricter than the job states); the client is ``workers.quota.Ledger``
admitting rows as soon as it allows, each answered after ``latency_s`` (a 429 after
``rtt_s``), with the headers the world's mode gives. What comes out is what the real-time
benchmark measures, in milliseconds of CPU instead of minutes.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from workers.learning import QuotaMode
from workers.quota import Ledger, Ticket
from workers.simulator import meter
from workers.simulator.metering import Metering, MinuteTally


@dataclass(frozen=True)
class World:
    """How the deployment meters and what it says; the job's stated quota beside its real one."""

    metering: Metering = "sliding"
    window_s: float = 10.0
    headers: str = "window"  # window | minute | sentinel | none
    retry_after: bool = True
    real_tpm: int = 40_000
    real_rpm: int = 200
    job_tpm: int = 40_000
    job_rpm: int = 200
    foreign_share: float = 0.0
    mode: QuotaMode = "cap"
    job_window_s: float = 10.0


@dataclass
class Outcome:
    """What the server admitted and refused."""

    admitted_tokens: int = 0
    admitted_requests: int = 0
    foreign_tokens: int = 0
    refused: int = 0
    sent: int = 0
    first: float | None = None
    last: float = 0.0
    learned_tpm: list[tuple[float, int]] = field(default_factory=list)

    @property
    def span(self) -> float:
        return self.last - (self.first or 0.0)


def translation_costs(rows: int, max_tokens: int = 256) -> list[int]:
    """Charges like the benchmark's translation rows: 1–4 sentences of ~22 tokens, a template, max_tokens."""
    return [max_tokens + 28 + 22 * (1 + (i * 7919) % 4) for i in range(rows)]


#: Tokens of the benchmark's seven sentences (``benchmarks.quota.SENTENCES``, Mistral Large's
#: tokenizer) and of its system message, template and ``max_tokens`` around them.
SENTENCE_TOKENS = (15, 19, 22, 16, 19, 18, 20)
BENCHMARK_BASE = 272


def benchmark_costs(rows: int) -> list[int]:
    """Charges of the real-time benchmark's rows (``benchmarks.quota.write_prompts``), in its order."""
    return [BENCHMARK_BASE + sum(SENTENCE_TOKENS[(i + k) % 7] for k in range(1 + (i * 7919) % 4))
            for i in range(rows)]


def run(world: World, rows: int = 300, latency_s: float = 3.0, rtt_s: float = 0.005, look_ahead: int = 12,
        costs: list[int] | None = None, start_s: float = 0.0, jitter_s: float = 0.0,
        seed: int = 0) -> tuple[Outcome, Ledger]:
    """Send ``rows`` requests (charged ``costs``) through the ledger to the world's server,
    the first ``start_s`` after the ledger was made (a key probe, a slow first read), each
    reaching it up to ``jitter_s`` late (a busy machine or network; drawn from ``seed``)."""
    rng = random.Random(seed)
    queue = list(costs or translation_costs(rows))
    rows = len(queue)
    room: list[int] = []
    since: list[float] = []  # when each waiting row joined the look-ahead (the age rule reads the oldest's)
    server = meter(world.metering, world.real_rpm, world.real_tpm, world.window_s, 0.0)
    minute = MinuteTally(world.real_rpm, world.real_tpm)
    ledger = Ledger(world.job_rpm, world.job_tpm, window_s=world.job_window_s, now=0.0, mode=world.mode)
    out = Outcome()
    Hints = tuple[int | None, int | None, int | None, int | None]
    events: list[tuple[float, int, str, Ticket, Hints]] = []
    seq = 0
    cost_of: dict[int, int] = {}
    done, now = 0, start_s
    owed, foreign_size = 0.0, max(1, world.real_tpm // world.real_rpm)
    next_foreign = 0.0
    for _ in range(2_000_000):
        if done >= rows:
            return out, ledger
        while len(room) < look_ahead and queue:
            room.append(queue.pop(0))
            since.append(now)
        pending = bool(room)
        wait = ledger.choose(now, room, now - since[0])[1] if pending else float("inf")
        next_event = events[0][0] if events else float("inf")
        if world.foreign_share and next_foreign < min(now + wait, next_event):
            # The other tenant sends from the start, before this job's first request too.
            at, now = next_foreign, max(now, next_foreign)
            owed = min(owed + world.foreign_share * world.real_rpm / 60 * 0.05, 5.0)
            while owed >= 1 and server.try_admit(at, foreign_size).admitted:
                minute.add(at, 1, foreign_size)
                out.foreign_tokens += foreign_size
                owed -= 1
            next_foreign = at + 0.05
            continue
        if pending and now + wait <= next_event:
            now += wait
            index = ledger.choose(now, room, now - since[0])[0]
            if index is None:
                continue
            cost = room.pop(index)
            since.pop(index)
            ticket = ledger.admit(now, cost)
            cost_of[id(ticket)] = cost
            out.sent += 1
            arrive = now + rtt_s / 2 + rng.uniform(0.0, jitter_s)
            answer = server.try_admit(arrive, cost)
            hints = _headers(world, server, minute, answer, arrive)
            seq += 1
            if answer.admitted:
                minute.add(arrive, 1, cost)
                out.admitted_tokens += cost
                out.admitted_requests += 1
                out.first = arrive if out.first is None else out.first
                out.last = arrive
                heapq.heappush(events, (now + latency_s, seq, "ok", ticket, hints))
            else:
                out.refused += 1
                after = answer.retry_after_s if world.retry_after else None
                heapq.heappush(events, (now + rtt_s, seq, f"429:{after}", ticket, hints))
            continue
        if not events:
            raise AssertionError("nothing to do and rows left: the ledger never admits")
        now, _, kind, ticket, hints = heapq.heappop(events)
        if kind == "ok":
            done += 1
            ledger.observe(ticket, *hints, now=now)
        else:
            said = kind.split(":", 1)[1]
            ledger.rate_limited(now, ticket, None if said == "None" else float(said))
            queue.insert(0, ticket.entry.tokens or cost_of[id(ticket)])
        out.learned_tpm.append((now, ledger.learned_per_minute[1]))
    raise AssertionError("the world did not finish")


def _headers(world: World, server: object, minute: MinuteTally, answer: object,
             now: float) -> tuple[int | None, int | None, int | None, int | None]:
    """(remaining requests, remaining tokens, limit requests, limit tokens) as the world sends them."""
    if world.headers == "none":
        return None, None, None, None
    if world.headers == "sentinel":
        return -1, -1, -1, -1
    if world.headers == "minute":
        requests, tokens = minute.remaining(now)
        return requests, tokens, world.real_rpm, world.real_tpm
    return (answer.remaining_requests, answer.remaining_tokens,  # type: ignore[attr-defined]
            server.request_limit, server.token_limit)  # type: ignore[attr-defined]


def utilization(world: World, out: Outcome) -> tuple[float, float]:
    """Steady (admitted over the real rate × span) and crediting the first window."""
    rate = world.real_tpm / 60
    window = world.real_tpm * world.window_s / 60
    ours = out.admitted_tokens + out.foreign_tokens
    return ours / (rate * out.span), ours / (rate * out.span + window)
