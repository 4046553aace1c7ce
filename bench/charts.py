"""Draws the side-by-side figures of docs/BENCHMARKS.md as SVG charts in docs/bench/,
from the same result files the report is written from (bench/results: bus.jsonl,
http.json, devices.json, pg.json), so that a reader can look rather than read: who is
faster and by how much, against the target line where the issue sets one.

  charts.py [--results DIR] [--out DIR]     draw every chart whose inputs exist
  charts.py --embed REPORT [--out DIR]      put the links to the drawn charts into
                                            REPORT (a BENCHMARKS.md), in place

Deterministic: the same results give byte-identical files (a fixed svg.hashsalt, no
date in the metadata), so rerunning without new data changes nothing in git.
A missing input (a step that was never run) skips its charts with a line on stderr;
an input that is there but malformed is reported and makes the exit status 1.
matplotlib comes from Debian (python3-matplotlib; `make bench` installs it).
"""
import argparse
import json
import math
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Colours: iotfin always the same blue; what it is measured against in greys and
# warm tones; targets in red.
IOTFIN, IOTFIN_LIGHT = "#1f5fa8", "#9dbfe6"
OTHER, OTHER_LIGHT = "#d9822b", "#f2c79b"
THIRD, THIRD_LIGHT = "#5a8f3c", "#b5d6a0"
CEILING = "#707070"
TARGET = "#c0392b"


class Missing(Exception):
    """An input file is absent: its step was not run; the chart is skipped."""


class Malformed(Exception):
    """An input file is there but not what the benchmark scripts write."""


def shown(path):
    """path as the messages name it: relative to the repository when inside it."""
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return path if rel.startswith("..") else rel


def load(path, lines=False):
    if not os.path.exists(path):
        raise Missing(f"{shown(path)} not found")
    try:
        with open(path) as f:
            if lines:
                rows = [json.loads(x) for x in f if x.strip()]
                if not rows:
                    raise Malformed(f"{shown(path)}: no result lines")
                if not all(isinstance(r, dict) for r in rows):
                    raise Malformed(f"{shown(path)}: a line is not a JSON object")
                return rows
            doc = json.load(f)
    except ValueError as e:
        raise Malformed(f"{shown(path)}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise Malformed(f"{shown(path)}: not a JSON object")
    return doc


def num(v, what):
    """A finite number, else Malformed naming what was expected."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Malformed(f"{what}: expected a number, found {v!r}")
    return float(v)


def get(doc, path, src):
    """doc[a][b]... for path "a.b...", as a number; Malformed names the missing field."""
    cur = doc
    for k in path.split("."):
        if not isinstance(cur, dict) or k not in cur:
            raise Malformed(f"{src}: no field {path}")
        cur = cur[k]
    return num(cur, f"{src}: {path}")


def date_of(doc, src):
    d = doc.get("date_utc") if isinstance(doc, dict) else None
    if not isinstance(d, str):
        raise Malformed(f"{src}: no date_utc")
    return d[:16].replace("T", " ") + " UTC"


# --- drawing helpers --------------------------------------------------------------


def plt_setup():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams.update({
        "svg.hashsalt": "iotfin-bench",  # element ids stay the same from run to run
        "svg.fonttype": "none",  # text stays text: small, searchable, diffable
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.grid.axis": "y",
        "grid.color": "#dddddd",
        "grid.linewidth": 0.6,
        "axes.axisbelow": True,
        "legend.fontsize": 8,
        "legend.frameon": False,
    })
    import matplotlib.pyplot as plt
    return plt


def figure(plt, title, subtitle, ncols=1, width=9.0, height=4.2, **kw):
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False, **kw)
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, ha="left", y=0.99)
    fig.text(0.01, 0.925, subtitle, fontsize=8, color="#555555", ha="left", va="top")
    return fig, list(axes[0])


def save(plt, fig, path):
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def fmt_rate(v):
    return f"{v:,.0f}"


def fmt_ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def target_line(ax, y, label, horizontal=True, color=TARGET, style="--"):
    if horizontal:
        ax.axhline(y, color=color, linestyle=style, linewidth=1.2, label=label, zorder=3)
    else:
        ax.axvline(y, color=color, linestyle=style, linewidth=1.2, label=label, zorder=3)


def grouped_bars(ax, groups, series, fmt, log=False, width=0.8):
    """Bars side by side per group; series = [(name, colour, [value or None per group])].
    Each bar carries its value; None leaves a gap."""
    n = len(series)
    w = width / n
    for i, (name, color, values) in enumerate(series):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], w * 0.92, color=color,
                      label=name, zorder=2)
        ax.bar_label(bars, labels=[fmt(p[1]) for p in pts], padding=2, fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)


def latency_bars(ax, groups, series, width=0.8, headroom=4.0):
    """Per group and series, a light bar up to p99 with a dark bar up to p50 inside it,
    both labelled; series = [(name, dark, light, [(p50, p99) or None per group])].
    Log scale, with room above the highest p99 for the legend."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    n = len(series)
    w = width / n
    lows, highs = [], []
    for i, (name, dark, light, values) in enumerate(series):
        xs = [g + (i - (n - 1) / 2) * w for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if not pts:
            continue
        x = [p[0] for p in pts]
        lows += [p[1][0] for p in pts]
        highs += [p[1][1] for p in pts]
        p99 = ax.bar(x, [p[1][1] for p in pts], w * 0.92, color=light, zorder=2,
                     label=f"{name} p99")
        p50 = ax.bar(x, [p[1][0] for p in pts], w * 0.6, color=dark, zorder=2,
                     label=f"{name} p50")
        ax.bar_label(p99, labels=[fmt_ms(p[1][1]) for p in pts], padding=2, fontsize=7)
        for bar, p in zip(p50, pts):  # inside the p50 bar, near its top
            ax.annotate(fmt_ms(p[1][0]), (bar.get_x() + bar.get_width() / 2, p[1][0]),
                        xytext=(0, -3), textcoords="offset points", ha="center", va="top",
                        fontsize=6.5, color="white")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_yscale("log")
    ax.set_ylim(min(lows) / 3, max(highs) * headroom)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("latency (ms, log scale)")


def route_label(method, path):
    path = path.replace("{device}", "{id}").removeprefix("/v1")
    return f"{method}\n" + path.replace("/commands", "\n/commands")


# --- the charts -------------------------------------------------------------------


def chart_bus(plt, res, out):
    path = os.path.join(res, "bus.jsonl")
    src, runs = shown(path), load(path, lines=True)

    def med(k):
        return statistics.median(get(r, k, src) for r in runs)

    bus, raw = med("end_to_end_per_s"), med("raw_sqlite_commits_per_s")
    fig, (a, b) = figure(plt, "Bus: publish → handler done, durable (SQLite)",
                         f"build/bench_bus 20000 32 2, median of {len(runs)} run(s); beside it "
                         "one-row SQLite commits with the same durability (WAL, "
                         "synchronous=FULL)", ncols=2, gridspec_kw={"width_ratios": [3, 2]})
    bars = a.bar([0, 1], [bus, raw], 0.5, color=[IOTFIN, CEILING], zorder=2)
    a.bar_label(bars, labels=[fmt_rate(bus), fmt_rate(raw)], padding=2, fontsize=7)
    a.set_xticks([0, 1])
    a.set_xticklabels(["iotfin bus\n(events/s, end to end)", "raw SQLite\none-row commits/s"])
    a.set_xlim(-0.6, 1.6)
    target_line(a, 20000, "target: 20,000 events/s on 2 cores (DESIGN.md)")
    a.set_ylabel("events (commits) per second")
    a.set_ylim(0, max(bus, raw, 20000) * 1.2)
    a.legend(loc="upper right")
    a.set_title(f"throughput: the bus does {bus / raw:.1f}× the one-row commits")
    latency_bars(b, ["publish → handler done"],
                 [("iotfin bus", IOTFIN, IOTFIN_LIGHT, [(med("p50_ms"), med("p99_ms"))])],
                 width=0.4)
    b.legend(loc="upper left")
    b.set_title("latency, p50 inside p99")
    save(plt, fig, os.path.join(out, "bus.svg"))


def http_doc(res):
    path = os.path.join(res, "http.json")
    src, doc = shown(path), load(path)
    routes = doc.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise Malformed(f"{src}: no routes")
    return doc, routes, src


def chart_http_throughput(plt, res, out):
    doc, routes, src = http_doc(res)
    nginx = get(doc, "nginx.rps", src)
    names = [route_label(r.get("method", "?"), r.get("path", k)) for k, r in routes.items()]
    io_ng = [get(r, "ratios_rps.iotfin_over_nginx.median", src) for r in routes.values()]
    ex_ng = [get(r, "ratios_rps.express_over_nginx.median", src) for r in routes.values()]
    io_ex = [get(r, "ratios_rps.iotfin_over_express.median", src) for r in routes.values()]
    io_rps = [get(r, "iotfin.rps", src) for r in routes.values()]
    ex_rps = [get(r, "express.rps", src) for r in routes.values()]
    runs = doc.get("settings", {}).get("runs", "?")
    fig, (a, b) = figure(plt, "HTTP API throughput: iotfin, the Express baseline, nginx's ceiling",
                         f"wrk over loopback, 2 threads, 64 connections, median of {runs} run(s), "
                         f"{date_of(doc, src)}; routes under /v1", ncols=2, width=11,
                         height=4.6, gridspec_kw={"width_ratios": [3, 2]})
    grouped_bars(a, names, [("iotfin", IOTFIN, io_rps), ("Express (Node)", OTHER, ex_rps)],
                 fmt_rate, log=True)
    for bars, ratios in zip(a.containers, (io_ng, ex_ng)):
        for bar, r in zip(bars, ratios):  # the ratio to nginx, inside the bar's top
            a.annotate(f"{r:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       xytext=(0, -3), textcoords="offset points", ha="center", va="top",
                       fontsize=6.5, color="white")
    target_line(a, nginx, f"nginx's fixed answer: {nginx:,.0f} req/s (ceiling)", color=CEILING,
                style="-")
    target_line(a, nginx / 2, "target for GET /v1/devices/{id}: ≥ ½ of nginx")
    a.set_ylim(top=nginx * 12)
    a.set_ylabel("requests per second (log scale)")
    a.set_title("req/s; inside each bar: ÷ nginx (same run)")
    a.legend(loc="upper left", ncols=2)
    grouped_bars(b, names, [("iotfin ÷ Express", IOTFIN, io_ex)], lambda v: f"{v:.1f}×",
                 width=0.5)
    target_line(b, 10, "target for GET /v1/devices/{id} and\nPOST …/commands: ≥ 10× the Node stack")
    b.set_ylim(0, max(io_ex + [10]) * 1.25)
    b.set_ylabel("iotfin req/s ÷ Express req/s (same run)")
    b.set_title("against the Node stack")
    b.legend(loc="upper right")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
    save(plt, fig, os.path.join(out, "http_throughput.svg"))


def chart_http_latency(plt, res, out):
    doc, routes, src = http_doc(res)
    names = [route_label(r.get("method", "?"), r.get("path", k)) for k, r in routes.items()]
    io = [(get(r, "iotfin.p50_ms", src), get(r, "iotfin.p99_ms", src)) for r in routes.values()]
    ex = [(get(r, "express.p50_ms", src), get(r, "express.p99_ms", src)) for r in routes.values()]
    ng = (get(doc, "nginx.p50_ms", src), get(doc, "nginx.p99_ms", src))
    fig, (a,) = figure(plt, "HTTP API latency: p50 (dark, inside) and p99 (light) per route",
                       f"wrk over loopback, 2 threads, 64 connections, {date_of(doc, src)}; "
                       "routes under /v1; log scale", width=10, height=4.6)
    latency_bars(a, names + ["nginx\nfixed answer"],
                 [("iotfin", IOTFIN, IOTFIN_LIGHT, io + [None]),
                  ("Express", OTHER, OTHER_LIGHT, ex + [None]),
                  ("nginx", CEILING, "#c8c8c8", [None] * len(io) + [ng])], headroom=10)
    target_line(a, 5, "target for GET /v1/devices/{id}: p99 < 5 ms at 64 connections")
    a.tick_params(axis="x", labelsize=7)
    a.legend(loc="upper left", ncols=4)
    save(plt, fig, os.path.join(out, "http_latency.svg"))


def dev_doc(res):
    path = os.path.join(res, "devices.json")
    return load(path), shown(path)


def chart_devices_latency(plt, res, out):
    doc, src = dev_doc(res)
    if not doc.get("command_round_trip"):
        raise Missing(f"{src} has no command round trip (section not run)")
    legs = [("round_trip_ms", "round trip\nAPI → device → ack visible"),
            ("api_to_device_ms", "API call →\ndevice has it"),
            ("post_ms", "POST answered\n(202)"),
            ("device_to_visible_ms", "device acks →\nvisible over the API")]
    def leg_values(base):
        return [(get(doc, f"{base}.{k}.p50", src), get(doc, f"{base}.{k}.p99", src)) for k, _ in legs]
    series = []
    if doc["command_round_trip"].get("c_clients"):
        series.append(("C clients", IOTFIN, IOTFIN_LIGHT, leg_values("command_round_trip.c_clients")))
    series.append(("Python clients", OTHER, OTHER_LIGHT, leg_values("command_round_trip")))
    fig, (a,) = figure(plt, "Command round trip: p50 (dark, inside) and p99 (light) per leg",
                       f"300 sequential round trips per run over one keep-alive connection, "
                       f"an MQTT v5 device; {date_of(doc, src)}; log scale", width=8)
    latency_bars(a, [n for _, n in legs], series, width=0.7)
    target_line(a, 2, "target: round trip p50 < 2 ms")
    a.legend(loc="upper right")
    save(plt, fig, os.path.join(out, "devices_latency.svg"))


def chart_devices_events(plt, res, out):
    doc, src = dev_doc(res)
    if not doc.get("device_events"):
        raise Missing(f"{src} has no device events (section not run)")
    broker = get(doc, "device_events.broker_alone_events_per_s", src)
    stored = get(doc, "device_events.iotfin_stored_events_per_s", src)
    fwd = get(doc, "device_events.iotfin_stored_and_forwarded_events_per_s", src)
    st = doc.get("settings", {})
    fig, (a,) = figure(plt, "Device events in over MQTT: iotfin against its broker alone",
                       f"{st.get('devices', '?')} devices publish {st.get('events', '?')} events "
                       f"at QoS 1 with mosquitto_pub -l, {date_of(doc, src)}", width=8, height=3.6)
    labels = ["broker alone\n(no plugin)", "iotfin: stored", "iotfin: stored and\nforwarded to BANK"]
    vals = [broker, stored, fwd]
    bars = a.barh(range(3), vals, 0.6, color=[CEILING, IOTFIN, IOTFIN_LIGHT], zorder=2)
    a.bar_label(bars, labels=[f"{v:,.0f}/s ({v / broker:.2f}×)" for v in vals], padding=3,
                fontsize=7)
    a.set_yticks(range(3))
    a.set_yticklabels(labels)
    a.invert_yaxis()
    target_line(a, broker / 2, "target: stored and forwarded ≥ ½ of the broker alone",
                horizontal=False)
    a.grid(axis="x", color="#dddddd")
    a.grid(axis="y", visible=False)
    a.set_xlim(0, broker * 1.3)
    a.set_xlabel("events per second")
    a.legend(loc="lower right")
    save(plt, fig, os.path.join(out, "devices_events.svg"))


def chart_devices_fleet(plt, res, out):
    doc, src = dev_doc(res)
    fl = doc.get("fleet")
    if not fl:
        raise Missing(f"{src} has no fleet (section not run)")
    limit = get(fl, "disk_limit_appends_per_s", src + " fleet")
    rows = [("disk limit: write + fdatasync\nof one record, one writer", limit, CEILING),
            ("bare broker\n(mosquitto alone, not durable)",
             get(fl, "bare_broker_events_per_s", src + " fleet"), "#a0a0a0"),
            ("iotfin, durable PUBACK:\nstored", get(fl, "durable_stored_events_per_s", src), IOTFIN),
            ("iotfin, durable PUBACK:\nstored and forwarded to BANK",
             get(fl, "durable_forwarded_events_per_s", src + " fleet"), IOTFIN_LIGHT)]
    old = (fl.get("old_build") or {}).get("commit", "old")
    if fl.get("old_stored_events_per_s") is not None:
        rows += [(f"old path ({old}, PUBACK\nbefore storing): stored",
                  get(fl, "old_stored_events_per_s", src + " fleet"), OTHER),
                 ("old path: stored and\nforwarded to BANK",
                  get(fl, "old_forwarded_events_per_s", src + " fleet"), OTHER_LIGHT)]
    fig, (a,) = figure(plt, "A fleet at QoS 1 with the durable PUBACK, against the disk's limit",
                       f"{fl.get('devices', '?')} devices, {fl.get('events', '?')} events per run, "
                       f"unpaced, {date_of(doc, src)}; bars say events/s and ÷ disk limit",
                       width=9, height=4.8)
    ys = range(len(rows))
    bars = a.barh(ys, [r[1] for r in rows], 0.65, color=[r[2] for r in rows], zorder=2)
    a.bar_label(bars, labels=[f"{r[1]:,.0f}/s ({r[1] / limit:.2f}×)" for r in rows], padding=3,
                fontsize=7)
    a.set_yticks(list(ys))
    a.set_yticklabels([r[0] for r in rows], fontsize=7.5)
    a.invert_yaxis()
    target_line(a, 0.8 * limit, "target: stored ≥ 0.8× the disk limit", horizontal=False)
    target_line(a, 0.5 * limit, "target: stored and forwarded ≥ 0.5× the disk limit",
                horizontal=False, color="#e67e22", style=":")
    a.grid(axis="x", color="#dddddd")
    a.grid(axis="y", visible=False)
    a.set_xlim(0, max(r[1] for r in rows) * 1.3)
    a.set_xlabel("events per second")
    a.legend(loc="lower right")
    save(plt, fig, os.path.join(out, "devices_fleet.svg"))


def pg_doc(res):
    path = os.path.join(res, "pg.json")
    src, doc = shown(path), load(path)
    if not isinstance(doc.get("summary"), dict):
        raise Malformed(f"{src}: no summary")
    return doc, src


def pg_subtitle(doc, src, what):
    runs = doc.get("settings", {}).get("runs", "?")
    load_before = doc.get("loadavg_before") or [0]
    busy = "; a busy machine: figures low and noisy" if num(load_before[0], src) > 2.5 else ""
    return f"{what}, median of {runs} run(s), {date_of(doc, src)}{busy}"


def chart_pg_bus(plt, res, out):
    doc, src = pg_doc(res)
    b = doc["summary"].get("bus")
    if not isinstance(b, dict):
        raise Malformed(f"{src}: no summary.bus")
    one32 = get(b, "one_row_commits_32", src)
    rows = [("bus on\nSQLite", get(b, "sqlite", src), IOTFIN_LIGHT),
            ("bus on\nPostgreSQL", get(b, "pg", src), IOTFIN),
            ("bus on PostgreSQL,\n3 instances", get(b, "pg_instances", src), THIRD),
            ("PostgreSQL one-row\ncommits, 32 clients", one32, CEILING),
            ("PostgreSQL one-row\ncommits, 1 client", get(b, "one_row_commits_1", src), "#a0a0a0")]
    fig, (a, c) = figure(plt, "PostgreSQL: the bus beside the same server's one-row commits",
                         pg_subtitle(doc, src, "build/bench_bus 20000 32 2 on each store; "
                                     "pgbench one INSERT per transaction"),
                         ncols=2, width=11, height=4.6, gridspec_kw={"width_ratios": [3, 2]})
    bars = a.bar(range(len(rows)), [r[1] for r in rows], 0.6, color=[r[2] for r in rows], zorder=2)
    a.bar_label(bars, labels=[fmt_rate(r[1]) for r in rows], padding=2, fontsize=7)
    a.set_xticks(range(len(rows)))
    a.set_xticklabels([r[0] for r in rows], fontsize=7)
    target_line(a, 2 * one32, "target: bus on PostgreSQL ≥ 2× one-row commits (32 clients)")
    target_line(a, get(b, "pg", src), "one instance (3 must not be slower)", color=THIRD,
                style=":")
    a.set_ylim(0, max([r[1] for r in rows] + [2 * one32]) * 1.2)
    a.set_ylabel("events (commits) per second")
    a.set_title(f"throughput: bus ÷ one-row commits {get(b, 'ratio_pg_over_one_row_32', src):.2f}×, "
                f"3 instances ÷ 1 {get(b, 'ratio_instances_over_one', src):.2f}×")
    a.legend(loc="upper right")
    latency_bars(c, ["SQLite", "PostgreSQL", "PostgreSQL,\n3 instances*"],
                 [("bus", IOTFIN, IOTFIN_LIGHT,
                   [(get(b, "sqlite_p50_ms", src), get(b, "sqlite_p99_ms", src)),
                    (get(b, "pg_p50_ms", src), get(b, "pg_p99_ms", src)),
                    (get(b, "pg_instances_p50_ms", src), get(b, "pg_instances_p99_ms", src))])],
                 width=0.5)
    c.set_title("publish → handler done, p50 inside p99\n(*median / worst instance)")
    c.legend(loc="upper left")
    save(plt, fig, os.path.join(out, "pg_bus.svg"))


def chart_pg_http(plt, res, out):
    doc, src = pg_doc(res)
    h = doc["summary"].get("http")
    if not isinstance(h, dict) or not h:
        raise Malformed(f"{src}: no summary.http")
    label = {"device_get": "GET\n/v1/devices/{id}", "command_create": "POST\n/v1/devices/{id}/commands"}
    names = [label.get(k, k) for k in h]
    stores = [("SQLite", "sqlite", IOTFIN_LIGHT, "#6d9bd1"), ("PostgreSQL", "pg", IOTFIN, "#0d3a6e"),
              ("PostgreSQL, 3 instances", "pg_x3", THIRD_LIGHT, THIRD)]
    w = doc.get("settings", {}).get("wrk", {})
    fig, (a, c) = figure(plt, "PostgreSQL: the HTTP API on SQLite, on PostgreSQL, on three instances",
                         pg_subtitle(doc, src, f"wrk over loopback, {w.get('threads', '?')} threads, "
                                     f"{w.get('connections', '?')} connections"),
                         ncols=2, width=11, height=4.8)
    grouped_bars(a, names, [(n, dark, [get(r, f"{k}.rps", src) for r in h.values()])
                            for n, k, _, dark in stores], fmt_rate, log=True)
    a.set_ylabel("requests per second (log scale)")
    a.set_title("throughput; 3 ÷ 1 instances: " + ", ".join(
        f"{label.get(k, k).split(chr(10))[0]} {get(r, 'ratio_three_over_one', src):.2f}×"
        for k, r in h.items()) + " (target ≥ 1×)")
    a.legend(loc="upper right")
    latency_bars(c, names, [(n, dark, light, [(get(r, f"{k}.p50_ms", src), get(r, f"{k}.p99_ms", src))
                                              for r in h.values()])
                            for n, k, light, dark in stores], headroom=12)
    c.set_title("latency, p50 inside p99")
    c.legend(loc="upper left", ncols=3, fontsize=7)
    for ax in (a, c):
        ax.tick_params(axis="x", labelsize=7)
    save(plt, fig, os.path.join(out, "pg_http.svg"))


def chart_pg_instances(plt, res, out):
    doc, src = pg_doc(res)
    s = doc["summary"]
    if not isinstance(s.get("bus"), dict) or not isinstance(s.get("http"), dict):
        raise Malformed(f"{src}: no summary.bus or summary.http")
    label = {"device_get": "GET /v1/devices/{id}\n(reads, no lock)",
             "command_create": "POST …/commands\n(writes, order lock)"}
    rows = [("the bus\n(writes, order lock)", get(s, "bus.ratio_instances_over_one", src))]
    rows += [(label.get(k, k), get(r, "ratio_three_over_one", src)) for k, r in s["http"].items()]
    fig, (a,) = figure(plt, "PostgreSQL: three instances on one database, against one",
                       pg_subtitle(doc, src, "each ratio computed within a run"), width=8,
                       height=3.8)
    bars = a.bar(range(len(rows)), [r[1] for r in rows], 0.5, zorder=2,
                 color=[THIRD if r[1] >= 1 else OTHER for r in rows])
    a.bar_label(bars, labels=[f"{r[1]:.2f}×" for r in rows], padding=2, fontsize=8)
    a.set_xticks(range(len(rows)))
    a.set_xticklabels([r[0] for r in rows], fontsize=8)
    target_line(a, 1.0, "target: three instances not slower than one (≥ 1×)")
    a.set_ylim(0, max([r[1] for r in rows] + [1]) * 1.3)
    a.set_ylabel("3 instances ÷ 1 instance (throughput)")
    a.legend(loc="upper right")
    save(plt, fig, os.path.join(out, "pg_instances.svg"))


# (file, bench/run.sh step, function, alt text, report heading it goes under). The link
# is placed before the first table after that heading, beside the figures it draws.
CHARTS = [
    ("bus.svg", "bus", chart_bus, "Bus throughput against one-row SQLite commits and the 20,000 events/s "
     "target; bus latency p50 and p99", "## Bus"),
    ("http_throughput.svg", "http", chart_http_throughput, "HTTP throughput per route: iotfin and Express "
     "req/s against nginx's ceiling, and iotfin ÷ Express, with the targets", "## HTTP API"),
    ("http_latency.svg", "http", chart_http_latency, "HTTP latency p50 and p99 per route: iotfin, "
     "Express, nginx, with the 5 ms p99 target", "## HTTP API"),
    ("devices_latency.svg", "devices", chart_devices_latency, "Command round trip p50 and p99 per leg, "
     "with the 2 ms target", "### Command round trip"),
    ("devices_events.svg", "devices", chart_devices_events, "Device events per second: broker alone, "
     "iotfin stored, stored and forwarded, with the ½ broker target", "### Device events in"),
    ("devices_fleet.svg", "devices", chart_devices_fleet, "Fleet ingest per second: disk limit, bare broker, "
     "iotfin stored, stored and forwarded, old path, with the 0.8× and 0.5× targets",
     "### A fleet at QoS 1"),
    ("pg_bus.svg", "pg", chart_pg_bus, "The bus on SQLite, PostgreSQL and three instances beside "
     "PostgreSQL one-row commits, with the 2× target; latency p50 and p99",
     "### Bus: publish → handler done, durable"),
    ("pg_http.svg", "pg", chart_pg_http, "HTTP throughput and latency per route on SQLite, "
     "PostgreSQL and three instances", "### HTTP API on SQLite"),
    ("pg_instances.svg", "pg", chart_pg_instances, "Three instances ÷ one for the bus and each route, "
     "with the 1× target", "### HTTP API on SQLite"),
]

LINK = re.compile(r"^!\[[^\]]*\]\(bench/[^)]*\.svg\)\s*$")


def embed(report, out):
    """Rewrites report with a link to each drawn chart before the first table under its
    heading; links already there (a section kept from an earlier report) are dropped
    first, so embedding twice changes nothing."""
    with open(report) as f:
        lines = [line for line in f.read().split("\n") if not LINK.match(line)]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    lines = text.split("\n")
    # Relative to docs/, where the report ends up (bench/run.sh assembles it elsewhere).
    rel = os.path.relpath(os.path.abspath(out), os.path.join(ROOT, "docs"))
    todo = {}
    for name, _, _, alt, heading in CHARTS:
        if os.path.exists(os.path.join(out, name)):
            todo.setdefault(heading, []).append(f"![{alt}]({rel}/{name})")
    result, pending = [], []
    for line in lines:
        # Before the first table of the section, or at its end if it has none.
        if pending and (line.startswith("|") or line.startswith("#")):
            result += [link for p in pending for link in (p, "")]
            pending = []
        if line.startswith("#"):
            for heading in list(todo):
                if line.startswith(heading):
                    pending += todo.pop(heading)
        result.append(line)
    if pending:
        result += [""] + pending
    for heading in todo:
        print(f"charts: no section '{heading}' in {report}; its chart is not linked",
              file=sys.stderr)
    with open(report, "w") as f:
        f.write("\n".join(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--embed", metavar="REPORT", help="link the drawn charts into REPORT")
    ap.add_argument("--steps", default="", help="steps just run (bench/run.sh): where one of "
                    "them left no result, its old chart is stale and is removed")
    args = ap.parse_args()
    if args.embed:
        embed(args.embed, args.out)
        return 0
    try:
        plt = plt_setup()
    except ImportError:
        print("charts: matplotlib is missing (apt-get install python3-matplotlib)", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    bad = 0
    ran = set(filter(None, args.steps.split(",")))
    for name, step, fn, _, _ in CHARTS:
        try:
            fn(plt, args.results, args.out)
            print(f"charts: wrote {os.path.relpath(os.path.join(args.out, name), ROOT)}",
                  file=sys.stderr)
        except Missing as e:
            old = os.path.join(args.out, name)
            if step in ran and os.path.exists(old):
                os.remove(old)  # drawn from results this run replaced with nothing
                print(f"charts: {name} removed: {e} after step {step} ran", file=sys.stderr)
            else:
                print(f"charts: {name} skipped: {e}", file=sys.stderr)
        except (Malformed, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            bad += 1
            print(f"charts: {name} not drawn, malformed input: {e}", file=sys.stderr)
            plt.close("all")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
