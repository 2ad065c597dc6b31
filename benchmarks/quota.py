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
           "--per-token", str(args.per_token / args.time_scale), "--api-key", "bench-key"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--tpm", type=int, default=40_000, help="tokens/min per deployment")
    parser.add_argument("--rpm", type=int, default=200, help="requests/min per deployment")
    parser.add_argument("--window", type=float, default=10.0, help="the simulator's enforcement window, s")
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--model", default="mistral-large-2407")
    parser.add_argument("--prompt", choices=["translation", "short"], default="translation")
    parser.add_argument("--latency", type=float, default=0.3, help="simulated seconds per answer (real time)")
    parser.add_argument("--per-token", type=float, default=0.01, help="simulated seconds per completion token")
    parser.add_argument("--time-scale", type=float, default=1.0, help="k: quotas ×k, windows and latency ÷k")
    parser.add_argument("--unlimited", action="store_true", help="quotas so large they never bind")
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--lookahead", type=int, default=DEFAULT_LOOKAHEAD, help="rows per deployment waiting to be packed")
    args = parser.parse_args()
    configure(level=30)  # warnings only: progress lines would cost client CPU

    k = args.time_scale
    tpm, rpm, window = int(args.tpm * k), int(args.rpm * k), args.window / k
    if args.unlimited:
        tpm, rpm = 10**12, 10**9
    sims = [start_simulator(args, tpm, rpm, window) for _ in range(args.endpoints)]
    workdir = Path(tempfile.mkdtemp(prefix="promptbatch-bench-"))
    try:
        prompts = workdir / "prompts.jsonl"
        write_prompts(prompts, args.rows, args.prompt)
        os.environ["BENCH_KEY"] = "bench-key"
        spec = job_from_dict({
            "input": str(prompts),
            "output": str(workdir / "out"),
            "endpoints": [{"url": url, "model": args.model, "api_key_env": "BENCH_KEY", "tokens_per_minute": tpm,
                           "requests_per_minute": rpm, "quota_window_s": window} for _, url in sims],
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
    admitted_requests = sum(s.get("admitted", 0) for s in sim_stats)
    limited = sum(s.get("rate_limited", 0) for s in sim_stats)
    sent = sum(s.get("requests", 0) for s in sim_stats)
    allowed_tokens = tpm * len(sims) * wall / 60
    allowed_requests = rpm * len(sims) * wall / 60
    u_tokens, u_requests = admitted_tokens / allowed_tokens, admitted_requests / allowed_requests
    binding = "tokens" if u_tokens >= u_requests else "requests"
    firsts = [s["first_admission"] for s in sim_stats if s.get("first_admission")]
    lasts = [s["last_admission"] for s in sim_stats if s.get("last_admission")]
    span = max(lasts) - min(firsts) if firsts and lasts else float("nan")

    print(f"rows                 {args.rows} ({result.tally.by_status})")
    print(f"deployments          {len(sims)} × {tpm:,} tokens/min, {rpm:,} requests/min, {window:g}s window"
          f" (time scale ×{k:g})")
    print(f"wall time            {wall:.1f} s   (admission span {span:.1f} s)")
    if not args.unlimited:
        print(f"admitted             {admitted_tokens:,} tokens, {admitted_requests:,} requests")
        print(f"quota for wall time  {allowed_tokens:,.0f} tokens, {allowed_requests:,.0f} requests")
        print(f"utilization          tokens {u_tokens:.1%}, requests {u_requests:.1%}  (binding: {binding})")
    print(f"429 answers          {limited} of {sent} requests ({limited / max(1, sent):.2%})")
    print(f"client CPU           {1000 * cpu_s / max(1, sent):.3f} ms per request ({cpu_s:.2f} s total)")
    print(f"peak RSS             {cpu_after.ru_maxrss / 1024:.0f} MB")
    ledgers = [lane.quota.ledger for lane in result.engine.lanes]
    print(f"peak in flight       {result.engine.peak_in_flight}")
    overtakes = sum(lane.quota.overtakes for lane in result.engine.lanes)
    print(f"client ledger        {overtakes} look-ahead admissions, {sum(x.pauses for x in ledgers)} shared pauses, "
          f"{sum(x.foreign_tokens for x in ledgers):,} foreign tokens seen in x-ratelimit headers")


if __name__ == "__main__":
    main()
