"""Pacing in every world the deployment may be: the ledger against pure meters, time passed in.

Each world runs 300 translation-sized rows in a discrete-event loop (``tests.unit.worlds``),
so every metering model, header mode and quota mistake is checked in milliseconds; the
real-time figures come from ``python -m benchmarks.quota --matrix``.
"""

from __future__ import annotations

import pytest

from tests.unit.worlds import Outcome, World, benchmark_costs, run, translation_costs, utilization
from workers.learning import QuotaEstimate, read_hints

METERINGS = ("sliding", "bucket", "fixed")
HEADERS = ("window", "minute", "sentinel", "none")


class TestWorlds:
    """Close to the quota and almost no 429s, however the deployment meters and whatever it says."""

    @pytest.mark.parametrize("metering", METERINGS)
    @pytest.mark.parametrize("headers", HEADERS)
    def test_a_right_quota(self, metering: str, headers: str) -> None:
        world = World(metering=metering, headers=headers)  # type: ignore[arg-type]
        out, ledger = run(world)
        steady, credited = utilization(world, out)
        assert steady >= 0.968 and out.refused <= 0.01 * out.sent, (steady, out.refused)
        assert ledger.learned_per_minute == (200, 40_000)  # nothing to learn: nothing unlearned either
        if metering == "bucket":  # a fresh bucket takes a whole window at once, and the job uses it
            assert credited >= 0.97

    @pytest.mark.parametrize("metering", METERINGS)
    def test_requests_that_reach_the_server_late_cost_little(self, metering: str) -> None:
        # Up to 50 ms late (a busy machine): the window copy's guard covers it.
        world = World(metering=metering)  # type: ignore[arg-type]
        out, _ = run(world, jitter_s=0.05, seed=3)
        steady, _ = utilization(world, out)
        assert steady >= 0.968 and out.refused <= 0.01 * out.sent, (steady, out.refused)

    @pytest.mark.parametrize("start_s", [1.0, 8.0])
    def test_a_bucket_is_not_overdrawn_by_refills_saved_before_the_first_request(self, start_s: float) -> None:
        # The key probe and the first answers take a while: the ledger's budget fills meanwhile,
        # and the first window released on top of it would ask the bucket for more than it holds.
        world = World(metering="bucket")
        out, ledger = run(world, start_s=start_s)
        assert out.refused == 0 and ledger.model == "bucket"
        assert utilization(world, out)[1] >= 0.97

    @pytest.mark.parametrize("headers", ["sentinel", "none"])
    def test_headers_that_say_nothing_cost_nothing(self, headers: str) -> None:
        good = run(World(headers="window"))[0]
        mute = run(World(headers=headers))[0]  # type: ignore[arg-type]
        assert mute.span <= good.span * 1.01 and mute.refused <= good.refused + 1

    @pytest.mark.parametrize("metering", METERINGS)
    def test_one_second_windows_the_job_knows(self, metering: str) -> None:
        world = World(metering=metering, window_s=1.0, job_window_s=1.0)  # type: ignore[arg-type]
        out, _ = run(world)
        steady, _ = utilization(world, out)
        # One second holds 666 tokens: two 306-token rows fit, two larger ones do not, so a log or
        # fixed windows cap what any client can get; a bucket does not.
        assert steady >= (0.97 if metering == "bucket" else 0.75) and out.refused <= 3

    @pytest.mark.parametrize(("jitter_s", "seed"), [(0.02, 3), (0.1, 1), (0.1, 3)])
    def test_a_one_second_bucket_stays_a_bucket_when_requests_reach_it_late(self, jitter_s: float,
                                                                           seed: int) -> None:
        # The whole window is the steady burst: the first 429 comes past the first window, a bucket a
        # hair behind the client's copy asking for a millisecond. Taken for a log's, it would cost
        # the job a tenth of its rate for the whole run (seen at 0.91 in the real-time matrix).
        world = World(metering="bucket", window_s=1.0, job_window_s=1.0)
        out, ledger = run(world, costs=benchmark_costs(300), latency_s=0.9, jitter_s=jitter_s, seed=seed)
        assert ledger.model == "bucket"
        assert utilization(world, out)[0] >= 0.97 and out.refused <= 3

    @pytest.mark.parametrize("metering", ["sliding", "fixed"])
    @pytest.mark.parametrize("headers", ["none", "window"])
    def test_a_shorter_window_than_the_job_assumes_is_found(self, metering: str, headers: str) -> None:
        # The job assumes 10 s; the deployment meters the same rate over 1 s. Its quick 429s with
        # the job's copy far from full are tried as a shorter window first; the short copy then
        # keeps the job inside the 1 s window, so no 429 ever drops it: the rate stays, the bursts
        # go. The 1 s window's own figures (a limit a tenth of the job's) are not taken for a lower
        # quota: early on, what the job sent over 1 s and over 10 s agree, and later they do not
        # match the 10 s reading.
        world = World(metering=metering, window_s=1.0, headers=headers)  # type: ignore[arg-type]
        out, ledger = run(world)
        steady, _ = utilization(world, out)
        known = utilization(*_known_window(metering))[0]
        assert ledger.short is not None and ledger.learned_per_minute == (200, 40_000)
        # Within 2 % of the job that states the window (it crawled at 0.32 before the window was found).
        assert steady >= known - 0.02 and out.refused <= 0.01 * out.sent, (steady, known, out.refused)

    def test_a_low_quota_refusing_quickly_is_not_taken_for_a_short_window(self) -> None:
        # A bucket admitting a fifth of what the job says refuses as quickly as a 1 s window does;
        # its next 429 comes with the short copy far from full, and the job's copy measures the quota.
        world = World(metering="bucket", job_tpm=200_000, job_rpm=1_000, headers="none")
        out, ledger = run(world)
        assert ledger.short is None and 34_000 <= ledger.learned_per_minute[1] <= 46_000
        assert utilization(world, out)[0] >= 0.92 and out.refused <= 0.03 * out.sent

    def test_no_retry_after(self) -> None:
        world = World(retry_after=False, headers="none")
        out, _ = run(world)
        assert utilization(world, out)[0] >= 0.955 and out.refused <= 3

    @pytest.mark.parametrize("headers", ["none", "window"])
    def test_a_quota_overstated_five_times_is_learned(self, headers: str) -> None:
        world = World(job_tpm=200_000, job_rpm=1_000, headers=headers)
        out, ledger = run(world)
        steady, _ = utilization(world, out)
        assert steady >= 0.92 and out.refused <= 0.03 * out.sent, (steady, out.refused)
        assert 34_000 <= ledger.learned_per_minute[1] <= 42_000
        first_cut = next(t for t, tpm in out.learned_tpm if tpm < 100_000)
        assert first_cut < 60  # learned within the first minute (the warning goes out then)

    def test_an_understated_quota_with_auto_converges_to_the_real_one(self) -> None:
        world = World(job_tpm=20_000, job_rpm=100, mode="auto", headers="none")
        out, ledger = run(world)
        assert 36_000 <= ledger.learned_per_minute[1] <= 44_000 and out.refused <= 0.02 * out.sent
        assert utilization(world, out)[0] >= 0.88

    def test_an_understated_quota_with_auto_and_window_headers_is_read_at_once(self) -> None:
        # The server's window limit is twice the job's: the window's figure, not a minute's (which
        # would be six times it). Probing up past it must not book the difference as another tenant.
        world = World(job_tpm=20_000, job_rpm=100, mode="auto", headers="window")
        out, ledger = run(world)
        assert 38_000 <= ledger.learned_per_minute[1] <= 42_000 and out.refused <= 0.01 * out.sent
        assert utilization(world, out)[0] >= 0.95 and ledger.foreign_tokens == 0

    def test_an_understated_quota_without_auto_is_never_passed(self) -> None:
        out, ledger = run(World(job_tpm=20_000, job_rpm=100, headers="none"))
        assert ledger.learned_per_minute == (100, 20_000) and out.refused == 0

    @pytest.mark.parametrize("headers", ["none", "window"])
    def test_another_tenant_keeps_the_deployment_full(self, headers: str) -> None:
        # Where each 429 falls depends on how the tenant's requests and this job's interleave, so
        # one run is one draw: over both row sets, three answer latencies and a late first request,
        # the deployment (ours and theirs together) is full on average and never far from it.
        world = World(foreign_share=0.3, headers=headers)  # type: ignore[arg-type]
        steadies = []
        for costs in (translation_costs(300), benchmark_costs(300)):
            for latency_s in (0.9, 2.3, 3.0):
                for start_s in (0.0, 1.5):
                    out, _ = run(world, costs=costs, latency_s=latency_s, start_s=start_s)
                    steadies.append(utilization(world, out)[0])
                    assert out.refused <= 0.02 * out.sent, (costs[:3], latency_s, start_s, out.refused)
        assert sum(steadies) / len(steadies) >= 0.92 and min(steadies) >= 0.89, steadies


def _known_window(metering: str) -> tuple[World, Outcome]:
    world = World(metering=metering, window_s=1.0, job_window_s=1.0, headers="none")  # type: ignore[arg-type]
    return world, run(world)[0]


class TestQuotaEstimate:
    """The pure learning rule: cut to what the window held, hold, probe back up, never past the cap."""

    def test_a_429_cuts_to_what_the_copy_held(self) -> None:
        estimate = QuotaEstimate(10.0)
        assert estimate.on_429(5.0, used_tokens=0.2, used_requests=0.1)
        # Tokens were nearest their limit: they refused; the requests' level says nothing.
        assert estimate.tokens == pytest.approx(0.197) and estimate.requests == 1.0
        both = QuotaEstimate(10.0)
        assert both.on_429(5.0, used_tokens=0.2, used_requests=0.18)  # both near their limits: either may have
        assert both.tokens == pytest.approx(0.197) and both.requests == pytest.approx(0.18 * 0.985)

    def test_the_evidence_fades_and_the_estimate_probes_up_to_the_cap(self) -> None:
        estimate = QuotaEstimate(10.0)
        estimate.on_429(0.0, 0.5, 0.5)
        assert not estimate.probe(20.0)  # held for 30 s after a cut
        assert estimate.probe(31.0) and estimate.tokens == pytest.approx(0.4925 * 1.05)
        for t in range(41, 2000, 10):
            estimate.probe(float(t))
        assert estimate.tokens == 1.0  # cap: never above what the job states

    def test_cuts_in_quick_succession_hold_longer(self) -> None:
        estimate = QuotaEstimate(10.0)
        estimate.on_429(0.0, 0.5, 0.5)
        estimate.on_429(40.0, 0.45, 0.45)
        assert estimate.hold_s == 60.0

    def test_auto_probes_past_the_stated_quota_fast_until_a_429(self) -> None:
        estimate = QuotaEstimate(10.0, mode="auto")
        for t in range(10, 40, 10):
            estimate.probe(float(t))
        assert estimate.tokens == pytest.approx(1.25 ** 3)


class TestHints:
    """Rate-limit headers believed only when plausible, on the right scale."""

    STATED = {"window_requests": 33, "window_tokens": 6_666, "window_s": 10.0}

    def test_sentinels_and_inconsistent_values_are_dropped(self) -> None:
        hints, scale = read_hints(-1, -1, -1, -1, **self.STATED)  # type: ignore[arg-type]
        assert (hints.remaining_tokens, hints.limit_tokens, scale) == (None, None, "none")
        hints, _ = read_hints(None, 9_000, None, 5_000, **self.STATED)  # type: ignore[arg-type]
        assert hints.remaining_tokens is None and hints.limit_tokens is None

    def test_minute_figures_are_recognised(self) -> None:
        hints, scale = read_hints(150, 30_000, 200, 40_000, **self.STATED)  # type: ignore[arg-type]
        assert scale == "minute" and hints.limit_tokens == 6_666 and hints.limit_requests == 33

    def test_a_window_limit_above_the_jobs_is_still_the_windows(self) -> None:
        # Twice the job's window limit (a quota the job understates) is nearer the window's figure
        # than the minute's (six times it).
        hints, scale = read_hints(60, 12_000, 66, 13_332, **self.STATED)  # type: ignore[arg-type]
        assert scale == "window" and hints.limit_tokens == 13_332
        _, scale = read_hints(300, 60_000, 400, 80_000, **self.STATED)  # type: ignore[arg-type]
        assert scale == "minute"

    def test_window_figures_stay(self) -> None:
        hints, scale = read_hints(20, 3_000, 33, 6_666, **self.STATED)  # type: ignore[arg-type]
        assert scale == "window" and hints.remaining_tokens == 3_000 and hints.limit_tokens == 6_666
