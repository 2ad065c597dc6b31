"""How close a job runs to its deployments' quota, and what it costs the client.

Starts simulators (one per deployment, each in its own process), writes a prompt set,
runs the job's pipeline (``flows.pipeline.execute``: read, count, admit, send, parse,
write Parquet) and prints:

- utilization: tokens and requests the simulators admitted (as they charge them:
  prompt + max_tokens) over what the quotas allowed for the job's wall time;
- 429s: how many requests the simulators turned away;
- client CPU per request and peak RSS of this process.

Examples:

    python -m benchmarks.quota                                  # 500 rows, 40k tokens/min, 200 req/min, real time
    python -m benchmarks.quota --endpoints 2                    # the same job on two deployments
    python -m benchmarks.quota --time-scale 10                  # ten times faster: quotas ×10, windows and latency ÷10
    python -m benchmarks.quota --unlimited --rows 20000 --prompt short --latency 0 --per-token 0   # client CPU
    python -m benchmarks.quota --metering bucket --headers sentinel   # one world the deployment may be
    python -m benchmarks.quota --matrix                          # every world, one row each (about 20 minutes)

A *world* is how the simulated deployment meters (``--metering``: a sliding log, a token
bucket of one window, clock-aligned fixed windows; ``--window``), what its rate-limit
headers say (``--headers``), whether its 429s carry ``retry-after``, another tenant's
share (``--foreign-share``) and its real quota beside the one the job states
(``--real-tpm``/``--real-rpm``; ``--quota-mode auto`` lets the job probe above its figure).
``--matrix`` runs each world of ``MATRIX`` in its own process, ``--parallel`` at a time,
and prints one row per world:

- steady: tokens the deployment admitted (this job's and the other tenant's) ÷ (its real
  rate × the span from the first admission to the last);
- credited: the same with one window's allowance added to what was allowed (a fresh
  deployment takes a whole window at once);
- 429 share of this job's requests, rows, span.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from flows.logs import configure
from flows.pipeline import execute
from schemas import job_from_dict
from workers.pool import DEFAULT_LOOKAHEAD

SENTENCES = (
    "The city council approved the new budget after a long and sometimes heated debate.",
    "Heavy rain is expected across the north of the country this weekend, with local flooding possible.",
    "The museum will reopen next month after two years of renovation work on its roof and galleries.",
    "Researchers found that regular walks improve sleep quality in adults of every age group.",
    "The national team won the final match in extra time, sending thousands of fans into the streets.",
    "Train services between the two cities will resume on Monday once repairs to the line are finished.",
    "Farmers are worried about the long period without rain and the effect it will have on the harvest.",
)


def write_prompts(path: Path, rows: int, kind: str) -> None:
    """Translation-style prompts of 1–4 sentences, or short labeling prompts."""
    with path.open("w") as f:
        for i in range(rows):
            if kind == "short":
                text = f"Label {i}: {SENTENCES[i % len(SENTENCES)][:40]}"
            else:
                n = 1 + (i * 7919) % 4
                text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(n))
            f.write(json.dumps({"id": f"row-{i}", "text": text}) + "\n")


def start_simulator(args: argparse.Namespace, tpm: int, rpm: int, window: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-c", "from flows.cli import main; main()", "simulate", "--port", "0",
           "--model", args.model, "--tokens-per-minute", str(tpm), "--requests-per-minute", str(rpm),
           "--window", str(window), "--latency", str(args.latency / args.time_scale),
           "--per-token", str(args.per_token / args.time_scale), "--api-key", "bench-key",
           "--metering", args.metering, "--headers", args.headers, "--foreign-share", str(args.foreign_share),
           "--retry-after" if args.retry_after else "--no-retry-after"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_sim/stats", timeout=10) as r:
        return json.loads(r.read())


#: The worlds ``--matrix`` runs: a name and the options that make it (over the defaults:
#: 300 rows, 40,000 tokens/min and 200 requests/min, 10 s windows, headers per window).
MATRIX: list[tuple[str, list[str]]] = [
    *[(f"{m}-10s-{h}", ["--metering", m, "--headers", h])
      for m in ("sliding", "bucket", "fixed") for h in ("window", "minute", "sentinel", "none")],
    *[(f"{m}-1s-window", ["--metering", m, "--window", "1"]) for m in ("sliding", "bucket", "fixed")],
    ("sliding-1s-unknown-to-job", ["--window", "1", "--job-window", "10", "--headers", "none"]),
    ("sliding-1s-unknown-to-job-headers", ["--window", "1", "--job-window", "10"]),
    ("no-retry-after", ["--no-retry-after", "--headers", "none"]),
    ("overstated-5x", ["--tpm", "200000", "--rpm", "1000", "--real-tpm", "40000", "--real-rpm", "200",
                       "--headers", "none"]),
    ("overstated-5x-headers", ["--tpm", "200000", "--rpm", "1000", "--real-tpm", "40000", "--real-rpm", "200"]),
    ("understated-2x-auto", ["--tpm", "20000", "--rpm", "100", "--real-tpm", "40000", "--real-rpm", "200",
                             "--quota-mode", "auto", "--headers", "none"]),
    ("understated-2x-auto-headers", ["--tpm", "20000", "--rpm", "100", "--real-tpm", "40000", "--real-rpm", "200",
                                     "--quota-mode", "auto"]),
    ("foreign-30", ["--foreign-share", "0.3", "--headers", "none"]),
    ("foreign-30-headers", ["--foreign-share", "0.3"]),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--tpm", type=int, default=40_000, help="tokens/min per deployment, as the job states it")
    parser.add_argument("--rpm", type=int, default=200, help="requests/min per deployment, as the job states it")
    parser.add_argument("--real-tpm", type=int, help="tokens/min the deployment really admits (default: --tpm)")
    parser.add_argument("--real-rpm", type=int, help="requests/min the deployment really admits (default: --rpm)")
    parser.add_argument("--quota-mode", choices=["cap", "auto"], default="cap", help="the job's `quota:`")
    parser.add_argument("--window", type=float, default=10.0, help="the simulator's enforcement window, s")
    parser.add_argument("--job-window", type=float, help="the job's quota_window_s (default: --window)")
    parser.add_argument("--metering", choices=["sliding", "bucket", "fixed"], default="sliding")
    parser.add_argument("--headers", choices=["window", "minute", "sentinel", "none"], default="window")
    parser.add_argument("--retry-after", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--foreign-share", type=float, default=0.0, help="another tenant's share of the quota")
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--model", default="mistral-large-2407")
    parser.add_argument("--prompt", choices=["translation", "short"], default="translation")
    parser.add_argument("--latency", type=float, default=0.3, help="simulated seconds per answer (real time)")
    parser.add_argument("--per-token", type=float, default=0.01, help="simulated seconds per completion token")
    parser.add_argument("--time-scale", type=float, default=1.0, help="k: quotas ×k, windows and latency ÷k")
    parser.add_argument("--unlimited", action="store_true", help="quotas so large they never bind")
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--lookahead", type=int, default=DEFAULT_LOOKAHEAD,
                        help="rows per deployment waiting to be packed")
    parser.add_argument("--matrix", action="store_true", help="run every world of MATRIX; one row each")
    parser.add_argument("--parallel", type=int, default=5, help="worlds run at once by --matrix")
    parser.add_argument("--only", help="with --matrix: the worlds whose name contains this")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.matrix:
        run_matrix(args)
        return
    figures = run_world(args)
    if args.json:
        print(json.dumps(figures))
        return
    for line in figures["lines"]:
        print(line)


def run_matrix(args: argparse.Namespace) -> None:
    """Each world in its own process (simulator and client), ``--parallel`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    worlds = [(name, extra) for name, extra in MATRIX if not args.only or args.only in name]
    rows = ["--rows", str(args.rows if args.rows != 500 else 300)]

    def one(world: tuple[str, list[str]]) -> tuple[str, dict[str, Any]]:
        name, extra = world
        done = subprocess.run([sys.executable, "-m", "benchmarks.quota", *rows, *extra, "--json"],
                              capture_output=True, text=True, timeout=1800)
        try:
            return name, json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return name, {"failed": done.stderr[-500:]}

    print(f"{'world':34s} {'steady':>7s} {'credited':>8s} {'429s':>12s} {'rows':>5s} {'span s':>7s}  "
          "learned tokens/min")
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for name, f in pool.map(one, worlds):
            if "failed" in f:
                print(f"{name:34s} failed: {f['failed']}")
                continue
            print(f"{name:34s} {f['steady']:7.3f} {f['credited']:8.3f} {f['rate_limited']:4d} ({f['share_429']:5.1%}) "
                  f"{f['rows']:5d} {f['span_s']:7.1f}  {f['learned_tpm']}", flush=True)


def run_world(args: argparse.Namespace) -> dict[str, Any]:
    """Run the job against this world's simulators; its figures (and the human-readable lines)."""
    configure(level=30)  # warnings only: progress lines would cost client CPU
    k = args.time_scale
    tpm, rpm, window = int(args.tpm * k), int(args.rpm * k), args.window / k
    real_tpm, real_rpm = int((args.real_tpm or args.tpm) * k), int((args.real_rpm or args.rpm) * k)
    job_window = (args.job_window or args.window) / k
    if args.unlimited:
        tpm, rpm = real_tpm, real_rpm = 10**12, 10**9
    sims = [start_simulator(args, real_tpm, real_rpm, window) for _ in range(args.endpoints)]
    workdir = Path(tempfile.mkdtemp(prefix="promptbatch-bench-"))
    try:
        prompts = workdir / "prompts.jsonl"
        write_prompts(prompts, args.rows, args.prompt)
        os.environ["BENCH_KEY"] = "bench-key"
        spec = job_from_dict({
            "input": str(prompts),
            "output": str(workdir / "out"),
            "endpoints": [{"url": url, "model": args.model, "api_key_env": "BENCH_KEY", "tokens_per_minute": tpm,
                           "requests_per_minute": rpm, "quota_window_s": job_window, "quota": args.quota_mode}
                          for _, url in sims],
            "prompt": {"system": "You translate English to Italian.", "template": "Translate to Italian: {text}"},
            "params": {"max_tokens": args.max_tokens},
            "shard_rows": args.shard_rows,
        })
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        result = asyncio.run(execute(spec, [str(prompts)], lookahead=args.lookahead))
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        sim_stats = [stats(url) for _, url in sims]
    finally:
        for proc, _ in sims:
            proc.terminate()
            proc.wait(10)

    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    admitted_tokens = sum(s.get("admitted_tokens", 0) for s in sim_stats)
    foreign_tokens = sum(s.get("foreign_admitted_tokens", 0) for s in sim_stats)
    admitted_requests = sum(s.get("admitted", 0) for s in sim_stats)
    limited = sum(s.get("rate_limited", 0) for s in sim_stats)
    sent = sum(s.get("requests", 0) for s in sim_stats)
    allowed_tokens = real_tpm * len(sims) * wall / 60
    allowed_requests = real_rpm * len(sims) * wall / 60
    u_tokens, u_requests = admitted_tokens / allowed_tokens, admitted_requests / allowed_requests
    binding = "tokens" if u_tokens >= u_requests else "requests"
    firsts = [s["first_admission"] for s in sim_stats if s.get("first_admission")]
    lasts = [s["last_admission"] for s in sim_stats if s.get("last_admission")]
    span = max(lasts) - min(firsts) if firsts and lasts else float("nan")
    rate = real_tpm * len(sims) / 60
    first_window = real_tpm * len(sims) * window / 60
    deployment_tokens = admitted_tokens + foreign_tokens
    ledgers = [lane.quota.ledger for lane in result.engine.lanes]
    learned = [ledger.learned_per_minute[1] for ledger in ledgers]

    lines = [
        f"rows                 {args.rows} ({result.tally.by_status})",
        f"deployments          {len(sims)} × {real_tpm:,} tokens/min, {real_rpm:,} requests/min, {window:g}s "
        f"{args.metering} window, headers {args.headers}, retry-after {'yes' if args.retry_after else 'no'}, "
        f"another tenant {args.foreign_share:.0%} (time scale ×{k:g})",
        f"the job states       {tpm:,} tokens/min, {rpm:,} requests/min, {job_window:g}s window, "
        f"quota {args.quota_mode}",
        f"wall time            {wall:.1f} s   (admission span {span:.1f} s)",
    ]
    if not args.unlimited:
        lines += [
            f"admitted             {admitted_tokens:,} tokens, {admitted_requests:,} requests"
            + (f" (+ {foreign_tokens:,} tokens of the other tenant)" if foreign_tokens else ""),
            f"quota for wall time  {allowed_tokens:,.0f} tokens, {allowed_requests:,.0f} requests",
            f"utilization          tokens {u_tokens:.1%}, requests {u_requests:.1%}  (binding: {binding})",
            f"over the span        steady {deployment_tokens / (rate * span):.1%}, crediting the first window "
            f"{deployment_tokens / (rate * span + first_window):.1%} (the deployment's, other tenant included)",
            f"learned              {', '.join(f'{x:,}' for x in learned)} tokens/min",
        ]
    lines += [
        f"429 answers          {limited} of {sent} requests ({limited / max(1, sent):.2%})",
        f"client CPU           {1000 * cpu_s / max(1, sent):.3f} ms per request ({cpu_s:.2f} s total)",
        f"peak RSS             {cpu_after.ru_maxrss / 1024:.0f} MB",
        f"peak in flight       {result.engine.peak_in_flight}",
        f"client ledger        {sum(lane.quota.overtakes for lane in result.engine.lanes)} look-ahead admissions, "
        f"{sum(x.pauses for x in ledgers)} shared pauses, "
        f"{sum(x.foreign_tokens for x in ledgers):,} foreign tokens seen in x-ratelimit headers",
    ]
    return {
        "lines": lines, "rows": args.rows, "span_s": span, "rate_limited": limited, "sent": sent,
        "share_429": limited / max(1, sent), "steady": deployment_tokens / (rate * span) if span == span else 0.0,
        "credited": deployment_tokens / (rate * span + first_window) if span == span else 0.0,
        "learned_tpm": learned, "wall_s": wall,
    }


if __name__ == "__main__":
    main()
