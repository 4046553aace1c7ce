#!/usr/bin/python3
"""PostgreSQL benchmark (issue #13), all in one run on one throwaway server:

  bus        build/bench_bus on PostgreSQL beside the same program on SQLite, and
             beside the same server's one-row commits (Debian's pgbench, a script of
             one INSERT, one transaction each, N client connections); then the bus
             with three bench_bus processes (instances) on one database
  http       GET /v1/devices/{id} and POST /v1/devices/{id}/commands with wrk, iotfin
             on SQLite beside iotfin on PostgreSQL
  instances  the same routes spread over three `iotfin serve` on one PostgreSQL
             (same IOTFIN_DB and IOTFIN_ADMIN_TOKEN, each its own data dir, port and
             managed broker) beside one of them alone

The server keeps PostgreSQL's durable defaults (fsync on, synchronous_commit on; iotfin
sets synchronous_commit=on on its connections anyway, pgbench gets the default); this
script checks both before measuring. Runs are interleaved, each figure is the median
over runs and each ratio is computed within one run, then the median is taken.

Needs IOTFIN_TEST_PG, the URL of an empty database on a server this script may create
databases on: run it under `sh scripts/pg.sh run` (bench/run.sh, step pg, does).
Prints the JSON document on stdout (and --out), a Markdown section with --markdown.

Usage:
  sh scripts/pg.sh run /usr/bin/python3 bench/pg_bench.py [--quick] [--runs N] \\
      --iotfin-bin build/iotfin --bench-bus build/bench_bus [--out F] [--markdown F]
"""
import argparse
import glob
import json
import os
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import http_bench
import iotfin_fixture
from http_bench import log, rel, ROOT

PGBIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
               key=lambda d: [int(x) for x in re.findall(r"\d+", d)])[-1:] or ["/usr/bin"]
PGBIN = PGBIN[0]
ONE_INSERT = "INSERT INTO one_row (v) VALUES ('x');\n"
ROUTES = [r for r in http_bench.ROUTES if r[0] in ("device_get", "command_create")]
INSTANCES = 3


def mask(url):
    """The URL with its password shown as ***."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def db_url(base, name):
    u = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(u._replace(path="/" + name))


def psql(url, sql):
    p = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url,
                        "-c", sql], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: psql failed: {sql}: {p.stderr.strip()}")
    return p.stdout.strip()


def create_db(base, name):
    psql(base, f"CREATE DATABASE {name}")
    return db_url(base, name)


def commits(base, name):
    return int(psql(base, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"))


class Sampler:
    """While a measurement runs: every 0.2 s, how many of a database's backends wait
    for an advisory lock (iotfin's order lock: a writer waiting for another instance's
    batch) and how many are active (pg_stat_activity, one psql with \\watch)."""

    def __init__(self, base, datname):
        self.p = subprocess.Popen([f"{PGBIN}/psql", "-X", "-At", base], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.p.stdin.write(
            "SELECT count(*) FILTER (WHERE wait_event = 'advisory'), count(*) FILTER "
            f"(WHERE state = 'active') FROM pg_stat_activity WHERE datname = '{datname}' "
            "AND pid <> pg_backend_pid() \\watch 0.2\n")
        self.p.stdin.flush()

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        time.sleep(0.1)
        out, _ = self.p.communicate(timeout=10)
        rows = [tuple(map(int, l.split("|"))) for l in out.splitlines() if "|" in l]
        if not rows:
            return None
        return {"samples": len(rows),
                "waiting_for_order_lock": sum(r[0] for r in rows) / len(rows),
                "active": sum(r[1] for r in rows) / len(rows)}


# --- the bus --------------------------------------------------------------------


def bench_bus(args, n, threads, env=None):
    cmd = [args.bench_bus, str(n), str(threads), "2"]
    p = subprocess.run(cmd, env=dict(os.environ, **(env or {})), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(cmd)} failed: {p.stderr.strip()[-500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["handled"] < n and r.get("instances", 1) == 1:
        raise SystemExit(f"bench: bench_bus handled {r['handled']} of {n}")
    return r


def bus_instances(args, url, n, threads):
    """INSTANCES bench_bus processes on one database, started together; n events each."""
    start_at = int(time.time() * 1000) + 3000  # after every process has connected
    env = dict(os.environ, IOTFIN_BENCH_DB=url, IOTFIN_BENCH_INSTANCES=str(INSTANCES),
               IOTFIN_BENCH_START_AT=str(start_at))
    cmd = [args.bench_bus, str(n), str(threads), "2"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(INSTANCES)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SystemExit(f"bench: bench_bus instance failed: {err.strip()[-500:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    span = (max(o["wall_done_ms"] for o in outs) - min(o["wall_start_ms"] for o in outs)) / 1000
    return {"end_to_end_per_s": n * INSTANCES / span,
            "p50_ms": statistics.median(o["p50_ms"] for o in outs),
            "p99_ms": max(o["p99_ms"] for o in outs),
            "handled_by_instance": [o["handled"] for o in outs]}


def pgbench(url, clients, duration, script):
    cmd = [f"{PGBIN}/pgbench", "-n", "-M", "prepared", "-f", script, "-c", str(clients),
           "-j", str(min(clients, 2)), "-T", str(duration), url]
    p = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise SystemExit(f"bench: pgbench failed: {p.stdout[-300:]} {p.stderr.strip()[-300:]}")
    shown = shlex.join(cmd[:-1]).replace(script, "one_insert.sql").replace(PGBIN + "/", "")
    return float(m.group(1)), shown + " $URL"


def run_bus(args, base, tmp, i, res, cmds):
    script = os.path.join(tmp, "one_insert.sql")
    with open(script, "w") as f:
        f.write(ONE_INSERT)
    n, threads = args.events, 32
    # A run takes about a minute (two pgbench runs alone are 2 × pgbench_s): say each part.
    log(f"run {i} bus: bench_bus on SQLite, then on PostgreSQL ({n} events each)")
    sq = bench_bus(args, n, threads)
    name = f"bus_{i}"
    url = create_db(base, name)
    sampler = Sampler(base, name)
    pg = bench_bus(args, n, threads, {"IOTFIN_BENCH_DB": url})
    pg["backends"] = sampler.stop()
    time.sleep(0.6)  # statistics of backends that just ended reach pg_stat_database
    pg["commits"] = commits(base, name)
    log(f"run {i} bus: PostgreSQL {pg['end_to_end_per_s']:.0f}/s; pgbench one-row commits, "
        f"32 clients then 1, {args.pgbench_s} s each")
    one = {}
    for c in (32, 1):
        one[c], cmds[f"pgbench_{c}"] = pgbench(res["one_row_url"], c, args.pgbench_s, script)
    log(f"run {i} bus: {INSTANCES} bench_bus instances on one database")
    url3 = create_db(base, f"bus3_{i}")
    sampler = Sampler(base, f"bus3_{i}")
    multi = bus_instances(args, url3, n // INSTANCES, threads // INSTANCES + 1)
    multi["backends"] = sampler.stop()
    r = {"run": i, "sqlite": sq, "pg": pg, "one_row_commits_32": one[32],
         "one_row_commits_1": one[1], "pg_instances": multi}
    res["bus"].append(r)
    log(f"run {i} bus: SQLite {sq['end_to_end_per_s']:.0f}/s, PostgreSQL "
        f"{pg['end_to_end_per_s']:.0f}/s ({pg['commits']} commits), one-row commits "
        f"{one[32]:.0f}/s (32 clients) {one[1]:.0f}/s (1), {INSTANCES} instances "
        f"{multi['end_to_end_per_s']:.0f}/s")
    cmds["bus_sqlite"] = f"build/bench_bus {n} {threads} 2"
    cmds["bus_pg"] = f"IOTFIN_BENCH_DB=$URL build/bench_bus {n} {threads} 2"
    cmds["bus_instances"] = (f"{INSTANCES}× at once: IOTFIN_BENCH_DB=$URL IOTFIN_BENCH_INSTANCES="
                             f"{INSTANCES} IOTFIN_BENCH_START_AT=$T build/bench_bus "
                             f"{n // INSTANCES} {threads // INSTANCES + 1} 2")


# --- HTTP -----------------------------------------------------------------------


def start_iotfin(args, tmp, name, extra_env=None):
    data = os.path.join(tmp, name)
    os.makedirs(data, exist_ok=True)
    starts = len([f for f in os.listdir(tmp) if f.startswith(name + ".")])
    try:
        p, url, settings = iotfin_fixture.start(os.path.abspath(args.iotfin_bin), data, ROOT,
                                                os.path.join(tmp, f"{name}.{starts + 1}.stderr"),
                                                extra_env)
    except iotfin_fixture.IotfinError as e:
        raise SystemExit(f"bench: {name}: {e}")
    http_bench.started.append(("iotfin", p))
    shown = " ".join(f"{k}=" + ("$TMP/" + name if k == "IOTFIN_DATA_DIR" else
                                "$REPO/mocks" if k == "IOTFIN_MOCK_DIR" else
                                "$URL" if k == "IOTFIN_DB" else
                                "$ADMIN" if k == "IOTFIN_ADMIN_TOKEN" else shlex.quote(v))
                     for k, v in settings.items())
    return p, url, data, f"{shown} {rel(os.path.abspath(args.iotfin_bin))} serve"


def check(url, tg, routes):
    for name, method, path, body, auth, want in routes:
        status, payload = http_bench.http_request(url + path.format(device=tg["device"]), method,
                                                  tg["token"], body)
        if status != want:
            raise SystemExit(f"bench: {url} {method} {path}: {status}, want {want}: "
                             f"{payload[:200]!r}")


class Others:
    """The second and third instance on the database: running only for the
    three-instance rows, so that in the one-instance rows the first is alone on it
    (its bus workers too: the others would claim its queue messages)."""

    def __init__(self, args, tmp, env, tg):
        self.args, self.tmp, self.env, self.tg, self.procs = args, tmp, env, tg, []

    def up(self):
        if self.procs:
            return
        urls = [self.tg["url"]]
        for k in range(2, INSTANCES + 1):
            p, url, _, _ = start_iotfin(self.args, self.tmp, f"pg{k}", self.env)
            self.procs.append(p)
            urls.append(url)
            # Every instance answers for the user and device provisioned on the first.
            check(url, self.tg, ROUTES[:1])
        self.tg["addrs"] = ",".join(urllib.parse.urlsplit(u).netloc for u in urls)

    def down(self):
        for p in self.procs:
            http_bench.started.remove(("iotfin", p))
            p.terminate()
            p.wait(timeout=15)
        self.procs = []


def start_targets(args, tmp, base, cmds):
    """iotfin on SQLite and on PostgreSQL, one user and device provisioned on each; the
    other instances on that database to start with Others. Returns (targets, Others)."""
    _, sq_url, sq_data, cmds["iotfin_sqlite"] = start_iotfin(args, tmp, "sqlite")
    token, device = iotfin_fixture.provision(sq_url, sq_data)
    targets = {"sqlite": {"url": sq_url, "token": token, "device": device, "addrs": None}}
    admin = secrets.token_hex(16)
    env = {"IOTFIN_DB": create_db(base, "http"), "IOTFIN_ADMIN_TOKEN": admin}
    _, url, data, cmd = start_iotfin(args, tmp, "pg1", env)
    token, device = iotfin_fixture.provision(url, data, admin=admin)
    cmds["iotfin_pg"] = cmd.replace("$TMP/pg1", "$TMP/pgK") + f"   (K = 1..{INSTANCES})"
    targets["pg"] = {"url": url, "token": token, "device": device, "addrs": None}
    targets["pg_x3"] = dict(targets["pg"])
    others = Others(args, tmp, env, targets["pg_x3"])
    others.up()
    check(url, targets["pg"], ROUTES)
    return targets, others


def measure(args, tg, route, duration, raw=None):
    name, method, path, body, auth, _ = route
    env = {"BENCH_ADDRS": tg["addrs"]} if tg["addrs"] else None
    return http_bench.run_wrk(args, tg["url"] + path.format(device=tg["device"]), method,
                              tg["token"], body, duration, raw, env)


def run_http(args, base, targets, others, i, res, cmds, problems):
    order = list(targets) if i % 2 else list(targets)[::-1]
    for t in order:
        others.up() if t == "pg_x3" else others.down()
        for route in ROUTES:
            sampler = Sampler(base, "http") if t != "sqlite" else None
            r, cmds.setdefault("wrk", {})[f"{t}_{route[0]}"] = measure(
                args, targets[t], route, args.duration, f"run{i}-{t}-{route[0]}")
            r["run"] = i
            r["backends"] = sampler.stop() if sampler else None
            res["http"][route[0]][t].append(r)
            log(f"run {i} {t} {route[0]}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms")
            if r["non_2xx_3xx"] or r["socket_errors"]["timeout"]:
                problems.append(f"run {i} {t} {route[0]}: {r['non_2xx_3xx']} non-2xx answers, "
                                f"{r['socket_errors']['timeout']} timeouts")


def read_logs(tmp):
    """From each iotfin's log (all its starts): answers >= 400 by status, requests slower
    than 1 s (iotfin logs both; error lines are storm-limited, so counts are at least)
    and its warnings and errors."""
    out = {}
    for name in sorted(os.listdir(tmp)):
        if not name.endswith(".stderr"):
            continue
        d = out.setdefault(name.split(".")[0], {"errors": {}, "slow": 0, "warnings": []})
        with open(os.path.join(tmp, name), errors="replace") as f:
            for line in f:
                m = re.search(r'"module":"access".*"status":(\d+),"duration_ms":([\d.]+)', line)
                if m:
                    if int(m.group(1)) >= 400:
                        d["errors"][m.group(1)] = d["errors"].get(m.group(1), 0) + 1
                    d["slow"] += float(m.group(2)) >= 1000
                elif re.search(r'"level":"(warn|error)"', line) and "is mocked" not in line:
                    d["warnings"].append(line.strip()[:300])
    return out


# --- report ---------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def waiting(runs, key="waiting_for_order_lock"):
    return med((r.get("backends") or {}).get(key) for r in runs)


def summary(res):
    bus = res["bus"]
    s = {"bus": {
        "sqlite": med(b["sqlite"]["end_to_end_per_s"] for b in bus),
        "pg": med(b["pg"]["end_to_end_per_s"] for b in bus),
        "pg_p50_ms": med(b["pg"]["p50_ms"] for b in bus),
        "pg_p99_ms": med(b["pg"]["p99_ms"] for b in bus),
        "sqlite_p50_ms": med(b["sqlite"]["p50_ms"] for b in bus),
        "sqlite_p99_ms": med(b["sqlite"]["p99_ms"] for b in bus),
        "pg_events_per_commit": med(b["pg"]["events"] / max(b["pg"]["commits"], 1) for b in bus),
        "one_row_commits_32": med(b["one_row_commits_32"] for b in bus),
        "one_row_commits_1": med(b["one_row_commits_1"] for b in bus),
        "pg_instances": med(b["pg_instances"]["end_to_end_per_s"] for b in bus),
        "pg_instances_p50_ms": med(b["pg_instances"]["p50_ms"] for b in bus),
        "pg_instances_p99_ms": med(b["pg_instances"]["p99_ms"] for b in bus),
        "pg_waiting_for_order_lock": waiting([b["pg"] for b in bus]),
        "pg_instances_waiting_for_order_lock": waiting([b["pg_instances"] for b in bus]),
        "ratio_pg_over_one_row_32": med(b["pg"]["end_to_end_per_s"] / b["one_row_commits_32"]
                                        for b in bus),
        "ratio_pg_over_one_row_1": med(b["pg"]["end_to_end_per_s"] / b["one_row_commits_1"]
                                       for b in bus),
        "ratio_pg_over_sqlite": med(b["pg"]["end_to_end_per_s"] / b["sqlite"]["end_to_end_per_s"]
                                    for b in bus),
        "ratio_instances_over_one": med(b["pg_instances"]["end_to_end_per_s"] /
                                        b["pg"]["end_to_end_per_s"] for b in bus),
    }, "http": {}}
    for route, per in res["http"].items():
        def ratio(a, b):
            by = {r["run"]: r["rps"] for r in per[b]}
            return med(r["rps"] / by[r["run"]] for r in per[a] if r["run"] in by)
        s["http"][route] = {t: dict({k: med(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms")},
                                    waiting_for_order_lock=waiting(runs),
                                    active_backends=waiting(runs, "active"))
                            for t, runs in per.items()}
        s["http"][route]["ratio_pg_over_sqlite"] = ratio("pg", "sqlite")
        s["http"][route]["ratio_three_over_one"] = ratio("pg_x3", "pg")
    return s


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def markdown(doc):
    s, c, st = doc["summary"], doc["commands"], doc["settings"]
    b = s["bus"]
    lb, la = doc["loadavg_before"], doc["loadavg_after"]
    busy = lb[0] > 2.5  # after the run it counts the benchmark's own load too
    route_name = {r[0]: f"`{r[1]} {r[2].replace('{device}', '{id}')}`" for r in ROUTES}
    out = [
        "## PostgreSQL: the bus, the HTTP API, one instance and three",
        "",
        f"Written by `bench/pg_bench.py` on {doc['date_utc']}; do not edit by hand. "
        f"{doc['versions']['postgres']} on loopback, a fresh cluster from `scripts/pg.sh` "
        f"(fsync={doc['server']['fsync']}, synchronous_commit={doc['server']['synchronous_commit']}, "
        f"full_page_writes={doc['server']['full_page_writes']}, wal_sync_method="
        f"{doc['server']['wal_sync_method']}, shared_buffers 64MB), on the same 2 cores as "
        f"everything else. {st['runs']} run(s), interleaved; each figure is the median over "
        "runs, each ratio is computed within one run, then the median is taken.",
        "",
        f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, "
        f"{doc['machine']['express_data_filesystem']}. Load average (1, 5, 15 min): "
        f"{' '.join(map(str, lb))} before (other work on the machine), "
        f"{' '.join(map(str, la))} after (the benchmark's own load included)"
        + (" — **a busy machine** (other work on the same cores): figures are low and noisy, "
           "rerun `ONLY=pg make bench` on a quiet one." if busy else "."),
        "",
        "### Bus: publish → handler done, durable",
        "",
        f"`build/bench_bus {st['events']} 32 2` on each store (each event its own durable "
        "transaction from 32 threads, 2 bus workers, a no-op handler), beside the same "
        "PostgreSQL server's one-row commits: `pgbench` with a script of one INSERT, one "
        "transaction each, 32 client connections (and 1, for scale), "
        f"{st['pgbench_s']} s each. Three instances: three bench_bus processes on one "
        f"database started together, {st['events'] // INSTANCES} events and "
        f"{32 // INSTANCES + 1} publishing threads each, 2 bus workers each; a message "
        "goes to whichever instance claims it; done when every event is handled.",
        "",
        "| measure | events (commits) / s | p50 / p99 (ms) |",
        "|---|---|---|",
        f"| bus on SQLite | {b['sqlite']:.0f} | {b['sqlite_p50_ms']:.2f} / {b['sqlite_p99_ms']:.2f} |",
        f"| bus on PostgreSQL | {b['pg']:.0f} | {b['pg_p50_ms']:.2f} / {b['pg_p99_ms']:.2f} |",
        f"| bus on PostgreSQL, {INSTANCES} instances | {b['pg_instances']:.0f} | "
        f"{b['pg_instances_p50_ms']:.2f} / {b['pg_instances_p99_ms']:.2f} (median / worst instance) |",
        f"| PostgreSQL one-row commits, 32 clients | {b['one_row_commits_32']:.0f} | |",
        f"| PostgreSQL one-row commits, 1 client | {b['one_row_commits_1']:.0f} | |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| bus on PostgreSQL ÷ one-row commits (32 clients) | {b['ratio_pg_over_one_row_32']:.2f}× "
        f"| ≥ 2× — {'met' if b['ratio_pg_over_one_row_32'] >= 2 else '**not met**'} |",
        f"| bus on PostgreSQL ÷ one-row commits (1 client, one after another, as the SQLite "
        f"bus's baseline) | {b.get('ratio_pg_over_one_row_1', 0):.2f}× | reported |",
        f"| bus on PostgreSQL ÷ bus on SQLite | {b['ratio_pg_over_sqlite']:.2f}× | reported |",
        f"| bus, {INSTANCES} instances ÷ 1 | {b['ratio_instances_over_one']:.2f}× | ≥ 1× — "
        f"{'met' if b['ratio_instances_over_one'] >= 1 else '**not met**'} |",
        "",
        f"Each bus event is three transactions (publish, claim, settle); on PostgreSQL this run "
        f"made {b['pg_events_per_commit']:.2f} events per commit (`xact_commit` of the "
        "database in `pg_stat_database` after the run, all connections). Backends waiting "
        "for an advisory lock (iotfin's order lock, taken by every write batch; mean of "
        f"samples of `pg_stat_activity` every 0.2 s): {fmt(b['pg_waiting_for_order_lock'])} "
        f"with one instance, {fmt(b['pg_instances_waiting_for_order_lock'])} with three.",
        "",
        "### HTTP API on SQLite, on PostgreSQL, and on three instances",
        "",
        f"wrk over loopback, {st['wrk']['threads']} threads, {st['wrk']['connections']} "
        f"connections, {st['wrk']['duration_s']} s per run after a {st['wrk']['warmup_s']} s "
        "warm-up (three threads so that, spread, each instance gets one: `BENCH_ADDRS` in "
        "bench/wrk/route.lua points each wrk thread at the next instance in turn; one user "
        "token and one device for all). The three instances share IOTFIN_DB and "
        "IOTFIN_ADMIN_TOKEN, each with its own data dir, port and managed broker; the "
        "second and third run only for the three-instance rows (started before them, "
        "stopped after), so in the one-instance rows the first is alone on the database.",
        "",
        "| route | SQLite req/s | PostgreSQL req/s | PostgreSQL, 3 instances req/s "
        "| PG ÷ SQLite | 3 ÷ 1 instances | p99 ms (SQLite / PG / 3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, h in s["http"].items():
        out.append(
            f"| {route_name[route]} | {h['sqlite']['rps']:.0f} | {h['pg']['rps']:.0f} "
            f"| {h['pg_x3']['rps']:.0f} | {h['ratio_pg_over_sqlite']:.2f}× "
            f"| {h['ratio_three_over_one']:.2f}× "
            f"| {h['sqlite']['p99_ms']:.1f} / {h['pg']['p99_ms']:.1f} / {h['pg_x3']['p99_ms']:.1f} |")
    for route, h in s["http"].items():
        out += ["", f"During {route_name[route]}, backends waiting for the order lock / active "
                f"(mean of samples every 0.2 s): one instance {fmt(h['pg']['waiting_for_order_lock'])}"
                f" / {fmt(h['pg']['active_backends'])}, three instances "
                f"{fmt(h['pg_x3']['waiting_for_order_lock'])} / {fmt(h['pg_x3']['active_backends'])}."]
    out += ["", "Three instances must not be slower than one: "
            + ", ".join(f"{route_name[r]} {h['ratio_three_over_one']:.2f}× — "
                        + ("met" if h["ratio_three_over_one"] >= 1 else "**not met**")
                        for r, h in s["http"].items()) + "."]
    logs = doc["iotfin_logs"]
    out += ["", "iotfin's own logs (answers ≥ 400 by status, at least; requests slower than "
            "1 s): " + "; ".join(
                f"{k}: " + (", ".join(f"{n}× {st}" for st, n in v["errors"].items()) or "no errors")
                + f", {v['slow']} slow" for k, v in logs.items()) + "."]
    warns = [f"- {k}: `{w}`" for k, v in logs.items() for w in v["warnings"][-3:]]
    if warns:
        out += ["", "Their warnings and errors (the last three of each):", ""] + warns
    if doc["problems"]:
        out += ["", "Problems in this run:", ""] + [f"- {p}" for p in doc["problems"]]
    out += ["", "Commands ($URL a database on the throwaway server, $ADMIN a random admin "
            "token, $TOKEN the provisioned user's, $TMP a temporary directory; one-insert.sql "
            f"is `{ONE_INSERT.strip()}` into `CREATE TABLE one_row (id bigserial PRIMARY KEY, "
            "v text)`):", "", "```",
            "# " + c["this_script"], c["bus_sqlite"], c["bus_pg"], c["pgbench_32"],
            c["pgbench_1"], c["bus_instances"], c["iotfin_sqlite"], c["iotfin_pg"]]
    out += list(c["wrk"].values())
    out += ["```", ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--events", type=int, default=20000, help="bus events per run (20000)")
    ap.add_argument("--pgbench-s", type=int, default=10, help="seconds per pgbench run (10)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 run, wrk 3 s, pgbench 3 s, 6000 events")
    ap.add_argument("--iotfin-bin", default="build/iotfin")
    ap.add_argument("--bench-bus", default="build/bench_bus")
    ap.add_argument("--out")
    ap.add_argument("--markdown")
    ap.add_argument("--raw-dir", help="keep each wrk run's full output in this directory")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = ap.parse_args()
    # On a fresh machine `ONLY=pg make bench` runs before anything installed wrk.
    http_bench.ensure_tools(args, tools=(("wrk", "wrk"),), node=False)
    if args.quick:
        args.runs, args.duration, args.warmup, args.pgbench_s, args.events = 1, 3, 1, 3, 6000
    args.threads, args.connections, args.timeout = INSTANCES, 21 * INSTANCES, 10
    base = os.environ.get("IOTFIN_TEST_PG")
    if not base:
        raise SystemExit("bench: IOTFIN_TEST_PG is not set; run under `sh scripts/pg.sh run`")
    if args.raw_dir:
        os.makedirs(args.raw_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, http_bench.on_signal)
    signal.signal(signal.SIGINT, http_bench.on_signal)
    server = {k: psql(base, f"SHOW {k}") for k in
              ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")}
    if server["fsync"] != "on" or server["synchronous_commit"] != "on":
        raise SystemExit(f"bench: the server is not durable ({server}); a benchmark on it "
                         "would not count")
    load_before = [round(x, 2) for x in os.getloadavg()]
    log(f"PostgreSQL at {mask(base)}; load average {load_before}")
    tmp = tempfile.mkdtemp(prefix="iotfin-pg-bench-")
    res = {"bus": [], "http": {r[0]: {"sqlite": [], "pg": [], "pg_x3": []} for r in ROUTES},
           "one_row_url": create_db(base, "one_row")}
    psql(res["one_row_url"], "CREATE TABLE one_row (id bigserial PRIMARY KEY, v text)")
    cmds, problems = {}, []
    try:
        log(f"starting iotfin on SQLite and {INSTANCES} on PostgreSQL; warm-up of each "
            f"target and route ({args.warmup} s each)")
        targets, others = start_targets(args, tmp, base, cmds)
        for t in ("pg_x3", "pg", "sqlite"):
            others.up() if t == "pg_x3" else others.down()
            for route in ROUTES:
                measure(args, targets[t], route, args.warmup)
        for i in range(1, args.runs + 1):
            others.down()  # the bus runs with nothing else on the server
            run_bus(args, base, tmp, i, res, cmds)
            run_http(args, base, targets, others, i, res, cmds, problems)
        logs = read_logs(tmp)
        mach = http_bench.machine(tmp)
    finally:
        http_bench.stop_all()
        subprocess.run(["rm", "-rf", tmp])
    doc = {
        "benchmark": "iotfin on PostgreSQL (bench/pg_bench.py)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": not problems, "problems": problems,
        "machine": mach, "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "server": server,
        "versions": {"postgres": psql(base, "SELECT split_part(version(), ' on ', 1)"),
                     "wrk": http_bench.run_out(["wrk", "--version"]).split(" Copyright")[0]},
        "settings": {"runs": args.runs, "events": args.events, "pgbench_s": args.pgbench_s,
                     "wrk": {"threads": args.threads, "connections": args.connections,
                             "duration_s": args.duration, "warmup_s": args.warmup}},
        "commands": dict(cmds, this_script="/usr/bin/python3 " + shlex.join(
            [rel(os.path.abspath(sys.argv[0]))] + sys.argv[1:])),
        "summary": summary(res),
        "iotfin_logs": logs,
        "runs": {"bus": res["bus"], "http": res["http"]},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    for path, body in ((args.out, text + "\n"), (args.markdown, markdown(doc) if args.markdown else "")):
        if path:
            with open(path, "w") as f:
                f.write(body)
    for p in problems:
        log("PROBLEM: " + p)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
