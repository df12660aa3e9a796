# -*- coding: utf-8 -*-
# Copyright: gpufleet maintainers
# Apache License 2.0 (see LICENSE)
"""Benchmark results -> one CSV and one SVG plot per host group (the benchmark_report module).

Stdlib only: the plot is a small hand-written SVG (tokens/s and median TTFT against concurrency,
one line per engine), so the controller needs no plotting library.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io
import os
import re
from xml.sax.saxutils import escape

COLUMNS = ("group", "host", "container", "engine", "concurrency", "requests", "ok", "errors", "not_sent",
           "duration_s", "requests_per_s", "tokens_per_s", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90",
           "ttft_ms_p99", "latency_ms_p50", "latency_ms_p90")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
PANELS = (("tokens_per_s", "output tokens/s"), ("ttft_ms_p50", "median TTFT (ms)"))


def by_group(results):
    """{group: [result, ...]} keeping the order of the results. A result is one engine:
    {group, host, container, engine, levels: [level numbers of loadgen.level_stats]}."""
    groups = {}
    for result in results:
        groups.setdefault(result["group"], []).append(result)
    return groups


def to_csv(results):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for result in results:
        for level in result["levels"]:
            row = dict(level, group=result["group"], host=result["host"], container=result["container"],
                       engine=result["engine"])
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    return out.getvalue()


def _nice_max(value):
    """A round axis maximum at or above value (1, 2 or 5 times a power of ten)."""
    if not value or value <= 0:
        return 1.0
    power = 10 ** len(str(int(value))) / 10.0
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _panel(results, key, title, left, top, width, height, levels):
    lines = ['<text x="%d" y="%d" font-size="14" font-weight="bold">%s</text>' % (left, top - 10, escape(title))]
    values = [lvl.get(key) for r in results for lvl in r["levels"] if lvl.get(key) is not None]
    ymax = _nice_max(max(values) if values else 0)
    lines.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>' % (left, top, width, height))
    for i in range(6):
        y = top + height - height * i / 5.0
        lines.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>' % (left, y, left + width, y))
        lines.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%g</text>' % (left - 6, y + 4, ymax * i / 5))

    def x_of(c):
        return left + width * (levels.index(c) + 0.5) / len(levels)

    for c in levels:
        lines.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>' % (x_of(c), top + height + 16, c))
    lines.append('<text x="%d" y="%d" font-size="11" text-anchor="middle">concurrency</text>'
                 % (left + width // 2, top + height + 32))
    for n, result in enumerate(results):
        color = PALETTE[n % len(PALETTE)]
        points = [(x_of(lvl["concurrency"]), top + height - height * lvl[key] / ymax)
                  for lvl in result["levels"] if lvl.get(key) is not None]
        if len(points) > 1:
            lines.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>'
                         % (color, " ".join("%.1f,%.1f" % p for p in points)))
        lines += ['<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color) for x, y in points]
    return lines


def to_svg(group, results):
    """Two panels side by side (tokens/s, median TTFT against concurrency); legend below."""
    levels = sorted({lvl["concurrency"] for r in results for lvl in r["levels"]})
    width, panel_w, panel_h, top = 900, 360, 240, 60
    legend_top = top + panel_h + 60
    height = legend_top + 18 * len(results) + 10
    body = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif">' % (width, height),
            '<rect width="100%" height="100%" fill="white"/>',
            '<text x="20" y="24" font-size="16" font-weight="bold">Benchmark: %s</text>' % escape(str(group))]
    for n, (key, title) in enumerate(PANELS):
        body += _panel(results, key, title, 70 + n * (panel_w + 90), top, panel_w, panel_h, levels)
    for n, result in enumerate(results):
        y = legend_top + 18 * n
        body.append('<rect x="70" y="%d" width="12" height="12" fill="%s"/>' % (y - 10, PALETTE[n % len(PALETTE)]))
        body.append('<text x="90" y="%d" font-size="12">%s</text>'
                    % (y, escape("%s %s (%s)" % (result["host"], result["container"], result["engine"]))))
    body.append("</svg>")
    return "\n".join(body) + "\n"


def _write(path, text):
    """Write atomically; False when the file already holds exactly this text."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def write_reports(results, dest):
    """<dest>/<group>.csv and <dest>/<group>.svg per group; returns (paths, changed)."""
    os.makedirs(dest, exist_ok=True)
    paths, changed = [], False
    for group, members in by_group(results).items():
        stem = os.path.join(dest, re.sub(r"[^A-Za-z0-9_.-]", "_", str(group)))
        for path, text in ((stem + ".csv", to_csv(members)), (stem + ".svg", to_svg(group, members))):
            changed = _write(path, text) or changed
            paths.append(path)
    return paths, changed
