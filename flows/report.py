"""The run's report: ``_report.html`` in the output folder, one self-contained page.

Written at the end of every run and by ``promptbatch report OUTPUT``, from the
metrics (``flows.metrics``), the manifest and, when ``promptbatch estimate`` left one
for this job, its estimate (``_estimate.json``). It shows:

- charged tokens/min per deployment against its quota (stated, and learned when the
  deployment admitted less), with 429s and pauses on the same time axis;
- rows finished per minute by status; the latency distribution and p50/p90/p99 over time;
- cost over time (the estimate's expected cost beside it) and by model;
- the totals, and the estimate beside the actuals.

``plotted`` (``flows.report_series``) computes every drawn series from the metrics
(pure); the page embeds them as JSON (``<script id="promptbatch-data">``) for anyone
who wants the numbers, and ``text_summary`` gives the compact version the summary
artifact carries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from html import escape
from typing import Any

from flows.charts import PALETTE, STATUS_COLORS, Chart, nice_ticks, short, time_ticks
from flows.logs import scrub
from flows.metrics import read_all
from flows.report_series import plotted
from flows.storage import Storage, read_json_object, redact_location
from schemas import STATUSES

REPORT = "_report.html"
ESTIMATE = "_estimate.json"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _learned(value: float | None) -> str:
    return "" if value is None else f" ({value:.0%} of learned)"


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms")


def text_summary(data: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    """A few lines: throughput against the quota, 429s and pauses, latency, cost."""
    t = data["totals"]
    lines = []
    for url, d in data["deployments"].items():
        use = (f"charged {_share(d['tokens_utilization'])}{_learned(d['tokens_of_learned'])} of its stated "
               f"tokens/min and {_share(d['requests_utilization'])}{_learned(d['requests_of_learned'])} of its "
               "requests/min")
        lines.append(f"{url}: {use}; 429s: {sum(d['responses_429']):,}, pauses: {sum(d['pauses']):,}")
    by_status = ", ".join(f"{t['rows'][s]:,} {s}" for s in STATUSES if s in t['rows'])
    lines.append(f"rows {t['rows']['total']:,} ({by_status}); retries {t['retries']:,}")
    lines.append(f"latency p50 {_ms(t['latency_p50_ms'])}, p90 {_ms(t['latency_p90_ms'])}, "
                 f"p99 {_ms(t['latency_p99_ms'])}; cost ${t['cost_usd']:,.4f}")
    if manifest is not None and manifest["rows"]["total"] != t["rows"]["total"]:
        lines.append(f"metrics cover {t['rows']['total']:,} of the output's {manifest['rows']['total']:,} rows "
                     "(the rest were answered by runs that kept no metrics, or lost them to a crash)")
    return "\n".join(scrub(line) for line in lines)


def _against_quota(data: dict[str, Any], x: tuple[float, float], ticks: Any, kind: str, height: int) -> str:
    """Charged ``kind`` (tokens or requests) per minute per deployment, with its stated and learned quota."""
    deps, half, gap = data["deployments"], data["width_s"] / 2, 1.5 * data["width_s"]
    quota, learned = ("quota_tpm", "learned_tpm") if kind == "tokens" else ("quota_rpm", "learned_rpm")
    seen = max([v for d in deps.values() for key in (f"{kind}_per_min", learned) for v in d[key] if v] + [1])
    stated = max([v for d in deps.values() for v in d[quota] if v] + [0])
    # A stated quota far above what the deployment admits would flatten everything else: left off the chart.
    off = stated > 2.5 * seen
    label = "tokens/min charged (prompt + max_tokens)" if kind == "tokens" else "requests/min charged"
    if off:
        label += f" · the stated quota, {stated:,}/min, is above the chart"
    chart = Chart(x, (0, (seen * 1.3) if off else max(seen, stated) * 1.1), height=height, y_label=label,
                  x_ticks=ticks)
    legend = []
    for n, (url, d) in enumerate(deps.items()):
        color = PALETTE[n % len(PALETTE)]
        mid = [t + half for t in d["t"]]
        if not off:
            chart.line(mid, d[quota], name=f"{quota}:{url}", color="#999", dash="6 4", stroke=1.5, gap=gap)
        if any(q != lrn for q, lrn in zip(d[quota], d[learned], strict=True)):
            chart.line(mid, d[learned], name=f"{learned}:{url}", color=color, dash="2 3", stroke=1.5, gap=gap)
        chart.line(mid, d[f"{kind}_per_min"], name=f"{kind}_per_min:{url}", color=color, gap=gap)
        legend.append((_host(url), color, ""))
    legend += [("stated quota", "#999", "6 4"), ("learned quota", "#555", "2 3")]
    return chart.svg(legend)


def _throughput(data: dict[str, Any], x: tuple[float, float], ticks: Any) -> str:
    deps = data["deployments"]
    most = max([v for d in deps.values() for v in d["responses_429"]] + [4])
    strip = Chart(x, (0, most), height=120, y_label="429s per bucket · ▼ pauses", x_ticks=ticks, y_ticks="integer")
    for n, (url, d) in enumerate(deps.items()):
        strip.bars(d["t"], [d["responses_429"]], names=[f"responses_429:{url}"], colors=["#c8322f"],
                   bar_width=data["width_s"])
        strip.markers([t + data["width_s"] / 2 for t, p in zip(d["t"], d["pauses"], strict=True) if p],
                      name=f"pauses:{url}", color=PALETTE[n % len(PALETTE)])
    return (_against_quota(data, x, ticks, "tokens", 240) + strip.svg()
            + _against_quota(data, x, ticks, "requests", 170))


def _host(url: str) -> str:
    return url.split("//", 1)[-1].split("/", 1)[0]


def _rows(data: dict[str, Any], x: tuple[float, float], ticks: Any) -> str:
    per_min = data["rows_per_min"]
    top = max([sum(v) for v in zip(*per_min.values(), strict=True)] + [1])
    chart = Chart(x, (0, top * 1.1), y_label="rows finished per minute", x_ticks=ticks)
    chart.bars(data["starts"], [per_min[s] for s in STATUSES], names=[f"rows:{s}" for s in STATUSES],
               colors=[STATUS_COLORS.get(s, "#777") for s in STATUSES], bar_width=data["width_s"])
    return chart.svg([(s, STATUS_COLORS.get(s, "#777"), "") for s in STATUSES])


def _latency(data: dict[str, Any], x: tuple[float, float], ticks: Any) -> str:
    lat, edges = data["latency"], data["latency"]["edges_ms"]
    hist = lat["hist"]
    used = [i for i, c in enumerate(hist) if c] or [1]
    lo, hi = max(1, used[0] - 1), min(len(edges) - 1, used[-1] + 1)
    dist = Chart((edges[lo - 1], edges[hi]), (0, max(hist) or 1), width=540, y_label="rows by latency (log scale)",
                 x_ticks=[(edges[i], _ms(edges[i])) for i in range(lo - 1, hi + 1, 2)], log_x=True)
    for i in range(lo, hi + 1):
        if hist[i]:
            dist.parts.append(f'<rect x="{dist.px(edges[i - 1]):.1f}" y="{dist.py(hist[i]):.1f}" '
                              f'width="{dist.px(edges[i]) - dist.px(edges[i - 1]) - 1:.1f}" '
                              f'height="{dist.py(0) - dist.py(hist[i]):.1f}" fill="#1f6fb4"/>')
    dist.parts.append(f'<g data-series="latency_hist" data-points="{sum(1 for c in hist if c)}"/>')
    top = max([v for q in ("p50", "p90", "p99") for v in lat[q] if v is not None] + [1])
    over = Chart(x, (0, top * 1.1), width=540, y_label="latency ms: p50 · p90 · p99", x_ticks=ticks[::2])
    for q, color in (("p99", "#c0392b"), ("p90", "#d35400"), ("p50", "#1f6fb4")):
        over.line([t + data["width_s"] / 2 for t in data["starts"]], lat[q], name=f"latency_{q}", color=color,
                  gap=1.5 * data["width_s"])
    return dist.svg() + over.svg([("p50", "#1f6fb4", ""), ("p90", "#d35400", ""), ("p99", "#c0392b", "")])


def _cost(data: dict[str, Any], x: tuple[float, float], ticks: Any, estimate: dict[str, Any] | None) -> str:
    expected = (estimate or {}).get("cost_usd", {}).get("expected")
    top = max(data["cost"]["cumulative"] + [expected or 0, 1e-6])
    chart = Chart(x, (0, top * 1.1), width=540, y_label="cost so far, USD", x_ticks=ticks[::2])
    if expected:
        chart.line([x[0], x[1]], [expected, expected], name="estimate:cost_expected", color="#999", dash="6 4")
    chart.line([t + data["width_s"] for t in data["starts"]], data["cost"]["cumulative"], name="cost_cumulative",
               color="#16a085")
    models = data["cost"]["by_model"]
    most = max(list(models.values()) + [1e-6]) * 1.15
    bars = Chart((0, most), (0, max(len(models), 1)), width=540, y_label="cost by model, USD", y_ticks="none",
                 x_ticks=[(v, f"${short(v)}") for v in nice_ticks(0, most, 4)])
    for i, (model, usd) in enumerate(models.items()):
        y = bars.py(i + 0.8)
        bars.parts.append(f'<rect x="{bars.px(0):.1f}" y="{y:.1f}" width="{bars.px(usd) - bars.px(0):.1f}" '
                          f'height="{bars.py(i) - y - 4:.1f}" fill="#16a085"/><text x="{bars.px(0) + 6:.1f}" '
                          f'y="{y - 4:.1f}" class="tick">{escape(model)} ${usd:,.4f}</text>')
    bars.parts.append(f'<g data-series="cost_by_model" data-points="{len(models)}"/>')
    legend = [("spent", "#16a085", "")] + ([("estimate, expected", "#999", "6 4")] if expected else [])
    return chart.svg(legend) + bars.svg()


def _table(rows: Sequence[Sequence[str]], head: Sequence[str]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _figures(data: dict[str, Any], manifest: dict[str, Any], estimate: dict[str, Any] | None) -> str:
    t, m = data["totals"], manifest
    est = estimate or {}
    e_rows, e_tokens, e_cost = est.get("rows", {}), est.get("tokens", {}), est.get("cost_usd", {})
    e_completion = e_tokens.get("completion", {}) if isinstance(e_tokens.get("completion"), dict) else {}
    wall = est.get("duration_s", {}).get("at_quota")
    rows = [
        ("rows", f"{e_rows['total']:,}" if e_rows.get("total") is not None else "—", f"{m['rows']['total']:,}"),
        ("prompt tokens", f"{e_tokens['prompt']:,}" if e_tokens.get("prompt") is not None else "—",
         f"{m['tokens']['prompt']:,}"),
        ("completion tokens", f"{e_completion['expected']:,}" if e_completion.get("expected") is not None else "—",
         f"{m['tokens']['completion']:,}"),
        ("cost (USD)", f"{e_cost['expected']:,.4f}" if e_cost.get("expected") is not None else "—",
         f"{m['cost_usd']['total']:,.4f}"),
        ("cost ceiling (USD)", f"{e_cost['ceiling']:,.4f}" if e_cost.get("ceiling") is not None else "—", ""),
        ("duration", f"{wall:,.0f} s at the quota" if wall is not None else "—", f"{m.get('wall_time_s', 0):,.0f} s"),
    ]
    outcome = [(s, f"{m['rows'].get(s, 0):,}") for s in STATUSES]
    deps = [(url, d["model"], _share(d["tokens_utilization"]) + _learned(d["tokens_of_learned"]),
             _share(d["requests_utilization"]) + _learned(d["requests_of_learned"]),
             f"{sum(d['responses_429']):,}", f"{sum(d['pauses']):,}") for url, d in data["deployments"].items()]
    latency = [(f"p{q}", _ms(t[f"latency_p{q}_ms"])) for q in (50, 90, 99)]
    return ('<div class="row"><div>' + _table(rows, ("", "estimate" if estimate else "estimate (none made)",
                                                       "actual")) +
            "</div><div>" + _table(outcome, ("outcome", "rows")) + _table(latency, ("latency", "")) + "</div></div>" +
            _table(deps, ("deployment", "model", "tokens/min charged ÷ quota", "requests/min ÷ quota", "429s",
                          "pauses")))


_STYLE = """body{font:14px/1.45 system-ui,Segoe UI,Roboto,sans-serif;color:#222;margin:24px;max-width:1120px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}.muted{color:#666}
.tick{font-size:11px;fill:#555}.axis{font-size:12px;fill:#333}table{border-collapse:collapse;margin:6px 16px 6px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:8px}.status{font-weight:600}.complete{color:#2e9d4c}.stopped{color:#c8322f}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"""


def render_html(data: dict[str, Any], manifest: dict[str, Any], estimate: dict[str, Any] | None = None) -> str:
    """The whole page."""
    starts = data["starts"]
    x = (starts[0], starts[-1] + data["width_s"]) if starts else (0.0, 1.0)
    ticks = time_ticks(*x)
    day = time.strftime("%Y-%m-%d", time.gmtime(x[0])) if starts else "—"
    status = manifest.get("status", "unknown")
    stopped = f" ({manifest['stopped']})" if manifest.get("stopped") else ""
    learned = "".join(f"<p><b>Quota:</b> {escape(url)} admits ≈ {f['tokens_per_minute']:,} tokens/min and "
                      f"{f['requests_per_minute']:,} requests/min; the job says "
                      f"{f['job_says']['tokens_per_minute']:,} and {f['job_says']['requests_per_minute']:,}.</p>"
                      for url, f in (manifest.get("quota_learned") or {}).items())
    body = (f"<h1>promptbatch run — <span class='status {escape(status)}'>{escape(status)}{escape(stopped)}</span>"
            f"</h1><p class='muted'>{escape(str(manifest.get('output', '')))} · {day} (times UTC) · "
            f"buckets of {data['width_s']:g} s · prices as of {escape(str(manifest.get('prices_as_of', '—')))}</p>"
            f"{learned}<pre>{escape(text_summary(data, manifest))}</pre>"
            f"{_figures(data, manifest, estimate)}"
            f"<h2>Throughput against the quota, 429s and pauses</h2>{_throughput(data, x, ticks)}"
            f"<h2>Rows by status</h2>{_rows(data, x, ticks)}"
            f"<h2>Latency</h2><div class='row'>{_latency(data, x, ticks)}</div>"
            f"<h2>Cost</h2><div class='row'>{_cost(data, x, ticks, estimate)}</div>"
            "<p class='muted'>The numbers: <code>_metrics/*.parquet</code> in this folder (one row per bucket and "
            "deployment), and the JSON below in this page's source.</p>")
    embedded = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return scrub(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>promptbatch report</title>"
                 f"<style>{_STYLE}</style></head><body>{body}"
                 f"<script type='application/json' id='promptbatch-data'>{embedded}</script></body></html>")


def read_estimate(storage: Storage, folder: str, job_hash: str | None) -> dict[str, Any] | None:
    """The estimate ``promptbatch estimate`` left for this job in the folder, if any."""
    found = read_json_object(storage, storage.join(folder, ESTIMATE))
    return found if found is not None and found.get("job", {}).get("job_hash") == job_hash else None


def write_report(storage: Storage, folder: str, manifest: dict[str, Any]) -> tuple[str, str]:
    """Write ``_report.html`` for the folder's metrics; its location and the compact text."""
    data = plotted(read_all(storage, folder))
    estimate = read_estimate(storage, folder, manifest.get("job_hash"))
    where = storage.join(folder, REPORT)
    storage.write_bytes(where, render_html(data, manifest, estimate).encode())
    return redact_location(where), text_summary(data, manifest)
