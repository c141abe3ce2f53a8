"""``/status``: one server-rendered HTML page about a cache node, for people.

Jinja2 with autoescaping renders every value (image ids and names are tenant input; URLs and
reasons come from remote servers), the page has no scripts and no external assets (inline CSS,
one inline SVG per download), and it reads on a phone. The caller sends it with a
Content-Security-Policy that forbids scripts, as a second line of defence.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import attrs

from locpick.cache.files import CacheEntry
from locpick.cache.prefetch import PrefetchState
from locpick.redact import redact_url
from locpick.report import DownloadReport
from locpick.serve.families import FillStatus
from locpick.serve.metrics import Transfer

#: What ``/status`` is sent with: no script, no fetch, no frame; inline styles only.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SVG_W, SVG_H = 240, 48
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


@attrs.frozen
class NodeStatus:
    """Everything the page shows, gathered by the server at request time."""

    cache_dir: str
    entries: Sequence[CacheEntry]
    max_bytes: int | None
    leases: dict[str, float]
    transfers: Sequence[Transfer]
    fills: Sequence[FillStatus]
    downloads: Sequence[DownloadReport]
    started_at: float
    version: str
    #: The last ``locpick cache prefetch`` run on this cache dir, if any.
    prefetch: PrefetchState | None = None


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _ago(seconds: float) -> str:
    s = abs(seconds)
    text = f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
    return text + (" ago" if seconds >= 0 else " from now")


def sparkline(report: DownloadReport) -> dict[str, Any]:
    """Polylines of cumulative bytes over time, one per run of the same source host."""
    samples = report.samples
    hosts: list[str] = []
    for _t, _b, h in samples:
        if h not in hosts:
            hosts.append(h)
    colour = {h: _COLOURS[i % len(_COLOURS)] for i, h in enumerate(hosts)}
    t_max = max((t for t, _b, _h in samples), default=0.0) or 1.0
    b_max = max((b for _t, b, _h in samples), default=0) or 1

    def point(t: float, b: int) -> str:
        return f"{t / t_max * (SVG_W - 2) + 1:.1f},{SVG_H - 1 - b / b_max * (SVG_H - 2):.1f}"

    lines: list[dict[str, str]] = []
    prev: tuple[float, int] | None = None
    for t, b, h in samples:
        if lines and lines[-1]["host"] == h:
            lines[-1]["points"] += " " + point(t, b)
        else:
            start = ""
            if prev is not None:  # a restart (bytes discarded) drops to zero first
                start = point(prev[0], 0 if b < prev[1] else prev[1]) + " "
            lines.append({"host": h, "colour": colour[h], "points": start + point(t, b)})
        prev = (t, b)
    legend = [{"host": h, "colour": colour[h]} for h in hosts]
    return {"lines": lines, "legend": legend, "seconds": report.seconds}


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>locpick cache node</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;padding:.5em;max-width:72em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ccc}
.wrap{overflow-x:auto}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee;vertical-align:top}
td.n{text-align:right;white-space:nowrap}code,.id{font-family:ui-monospace,monospace;
word-break:break-all}td.id{min-width:11em}.ok{color:#2a7d2a}.bad{color:#b22}.muted{color:#777}
.bar{background:#eee;height:.7em;min-width:6em}.bar i{display:block;height:100%;background:#1f77b4}
svg{background:#fafafa;border:1px solid #ddd;max-width:100%;height:auto}
.chart{min-width:250px}.key{display:inline-block;width:.8em;height:.8em;margin:0 .2em 0 .5em}
</style>
</head>
<body>
<h1>locpick cache node</h1>
<p>locpick {{ s.version }} · up {{ up }} · cache <code>{{ s.cache_dir }}</code> ·
{{ s.entries|length }} image(s), {{ used }}{% if s.max_bytes %} of {{ cap }}{% endif %}</p>

<h2>Cache entries</h2>
{% if s.entries %}<div class="wrap"><table>
<tr><th>image</th><th>size</th><th>hash</th><th>last used</th><th>registered</th></tr>
{% for e in entries %}<tr><td class="id">{{ e.id }}</td><td class="n">{{ e.size }}</td>
<td>{{ e.algo }}</td><td>{{ e.used }}</td>
<td>{% if e.url %}<span class="ok">yes</span>{% else %}<span class="muted">no</span>{% endif %}
</td></tr>
{% endfor %}</table></div>{% else %}<p class="muted">The cache is empty.</p>{% endif %}

<h2>Registered locations and leases</h2>
{% if registered %}<div class="wrap"><table>
<tr><th>image</th><th>location URL</th><th>lease</th></tr>
{% for e in registered %}<tr><td class="id">{{ e.id }}</td><td><code>{{ e.url }}</code></td>
<td>{{ e.lease }}</td></tr>
{% endfor %}</table></div>
{% else %}<p class="muted">No cached image is registered in Glance.</p>{% endif %}

<h2>Clients being served</h2>
{% if transfers %}<div class="wrap"><table>
<tr><th>client</th><th>image</th><th>range</th><th>since</th></tr>
{% for t in transfers %}<tr><td>{{ t.peer }}</td><td class="id">{{ t.image }}</td>
<td>{{ t.range }}</td><td>{{ t.since }}</td></tr>
{% endfor %}</table></div>{% else %}<p class="muted">No response is being sent.</p>{% endif %}

<h2>Copies being filled</h2>
{% if fills %}<div class="wrap"><table>
<tr><th>image</th><th>progress</th><th>bytes</th><th>from</th></tr>
{% for f in fills %}<tr><td class="id">{{ f.id }}</td>
<td><div class="bar"><i style="width:{{ f.pct }}%"></i></div></td>
<td class="n">{{ f.done }} / {{ f.total }}</td><td>{{ f.source }}</td></tr>
{% endfor %}</table></div>{% else %}<p class="muted">No copy is being filled.</p>{% endif %}

<h2>Prefetch</h2>
{% if prefetch %}<p>{{ prefetch.state }} · started {{ prefetch.started }} · updated
{{ prefetch.updated }} · {{ prefetch.summary }}</p>
<div class="wrap"><table>
<tr><th>image</th><th>status</th><th>progress</th><th>bytes</th></tr>
{% for i in prefetch.images %}<tr><td class="id">{{ i.id }}</td>
<td class="{{ i.cls }}">{{ i.status }}{% if i.error %}: {{ i.error }}{% endif %}</td>
<td><div class="bar"><i style="width:{{ i.pct }}%"></i></div></td>
<td class="n">{{ i.done }} / {{ i.total }}</td></tr>
{% endfor %}</table></div>
{% else %}<p class="muted">No prefetch has run on this cache.</p>{% endif %}

<h2>Last downloads</h2>
{% if downloads %}<div class="wrap"><table>
<tr><th>when</th><th>image</th><th>result</th><th>source and reason</th><th>bytes over time</th>
</tr>
{% for d in downloads %}<tr><td>{{ d.when }}</td><td class="id">{{ d.id }}</td>
<td class="{{ 'ok' if d.ok else 'bad' }}">{{ d.result }}</td>
<td>{% if d.host %}<b>{{ d.host }}</b> ({{ d.method }}) {{ d.bytes }} in {{ d.seconds }}<br>
{% endif %}{% if d.reason %}{{ d.reason }}{% endif %}{% if d.error %}<br>
<span class="bad">{{ d.error }}</span>{% endif %}
{% if d.sources %}<br><span class="muted">sources:
{% for src in d.sources %}{{ src.host }} {{ src.bytes }}{% if not loop.last %}, {% endif %}
{% endfor %}</span>{% endif %}
{% if d.probe_failures %}<br><span class="muted">unusable when ranked:
{% for host, n in d.probe_failures %}{{ host }} &times;{{ n }}{% if not loop.last %}, {% endif %}
{% endfor %}</span>{% endif %}</td>
<td class="chart">{% if d.chart.lines %}
<svg viewBox="0 0 {{ w }} {{ h }}" width="{{ w }}" height="{{ h }}" role="img"
aria-label="bytes over time by source">
<title>bytes over {{ d.seconds }} by source</title>
{% for line in d.chart.lines %}<polyline fill="none" stroke-width="2" stroke="{{ line.colour }}"
points="{{ line.points }}"><title>{{ line.host }}</title></polyline>
{% endfor %}</svg><br>{% for k in d.chart.legend %}<span class="key"
style="background:{{ k.colour }}"></span>{{ k.host }}{% endfor %}{% endif %}</td></tr>
{% endfor %}</table></div>{% else %}<p class="muted">No download has used this cache yet.</p>
{% endif %}
<p class="muted">Rendered {{ now }}. Metrics for Prometheus: <code>/metrics</code>.</p>
</body>
</html>
"""


@functools.cache
def _template() -> Any:
    from jinja2 import Environment

    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_TEMPLATE)


def render(s: NodeStatus, *, now: float | None = None) -> str:
    """The page's HTML (every value escaped)."""
    now = time.time() if now is None else now
    entries = [
        {
            "id": e.image_id,
            "size": _size(e.size),
            "algo": e.algo,
            "used": _ago(now - e.last_used),
            "url": e.registered_url,
        }
        for e in reversed(s.entries)
    ]
    registered = [
        {
            "id": e.image_id,
            "url": redact_url(e.registered_url),  # its capability token masked: no working URL
            "lease": (
                f"ends {_when(s.leases[e.image_id])} ({_ago(now - s.leases[e.image_id])})"
                if e.image_id in s.leases
                else "no lease reported"
            ),
        }
        for e in reversed(s.entries)
        if e.registered_url
    ]
    transfers = [
        {
            "peer": t.peer,
            "image": t.image_id,
            "range": t.range or "whole",
            "since": _ago(now - t.started_at),
        }
        for t in s.transfers
    ]
    fills = [
        {
            "id": f.image_id,
            "pct": 0 if not f.total else min(100, round(100 * f.done / f.total)),
            "done": _size(f.done),
            "total": _size(f.total),
            "source": f.source or "-",
        }
        for f in s.fills
    ]
    downloads = [
        {
            "when": _when(d.started_at),
            "id": d.image_id,
            "ok": d.result == "ok",
            "result": d.result if d.result == "ok" else f"failed (exit {d.exit_code})",
            "host": d.chosen_host if d.result == "ok" else None,
            "method": d.method,
            "bytes": _size(d.bytes),
            "seconds": f"{d.seconds:.2f} s",
            "reason": d.reason,
            "error": d.error,
            "sources": [{"host": x.host, "bytes": _size(x.bytes)} for x in d.sources],
            "probe_failures": d.probe_failures,
            "chart": sparkline(d),
        }
        for d in s.downloads
    ]
    prefetch = _prefetch(s.prefetch, now) if s.prefetch is not None else None
    return _template().render(  # type: ignore[no-any-return]
        s=s,
        up=_ago(now - s.started_at).removesuffix(" ago"),
        used=_size(sum(e.size for e in s.entries)),
        cap=_size(s.max_bytes),
        entries=entries,
        registered=registered,
        transfers=transfers,
        fills=fills,
        downloads=downloads,
        prefetch=prefetch,
        now=_when(now),
        w=SVG_W,
        h=SVG_H,
    )


def _prefetch(p: PrefetchState, now: float) -> dict[str, Any]:
    """The prefetch section: the run's state and a progress row per image."""
    counts = ", ".join(
        f"{n} {status}"
        for status in ("fetched", "cached", "fetching", "pending", "failed")
        if (n := p.count(status))
    )
    images = [
        {
            "id": i.image_id,
            "status": i.status,
            "error": i.error,
            "cls": "bad" if i.status == "failed" else "ok" if i.status != "pending" else "muted",
            "pct": (
                100
                if i.status in ("cached", "fetched")
                else 0
                if not i.size
                else min(100, round(100 * i.bytes / i.size))
            ),
            "done": _size(i.bytes),
            "total": _size(i.size),
        }
        for i in p.images
    ]
    return {
        "state": p.state,
        "started": _ago(now - p.started_at),
        "updated": _ago(now - p.updated_at),
        "summary": f"{len(p.images)} image(s): {counts}" if counts else "no images",
        "images": images,
    }
