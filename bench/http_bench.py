#!/usr/bin/python3
"""HTTP API benchmark: iotfin against the original team's stack and an nginx ceiling.

Targets, all on loopback on this machine, measured with wrk:
  iotfin   a running iotfin (--iotfin-url/--iotfin-token/--iotfin-device); "n/a" without
  express  bench/baselines/express (Node.js + Express + jsonwebtoken + @hapi/boom +
           better-sqlite3, SQLite WAL + synchronous=FULL), started and seeded here
  nginx    a fixed 100-byte answer (bench/nginx.conf.tmpl), started here

Routes: POST /v1/sessions/anonymous, GET /v1/me, GET /v1/devices/{id},
POST /v1/devices/{id}/commands. nginx answers one fixed route; it is measured once
per run and every route's ratio to it uses that run's figure.

Each target and route is warmed up first, then measured --runs times; runs are
interleaved (run 1 of every target and route, then run 2, ...) and each figure is
the median over runs. Ratios are computed pair by pair within one run, then the
median of those ratios is reported. Prints one JSON document on stdout (and writes
it to --out); progress goes to stderr. Exit status 1 if a target failed a sanity
request or a measured run saw non-2xx answers or timeouts.

Usage:
  /usr/bin/python3 bench/http_bench.py [--quick] [--runs N] [--duration S] \
      [--iotfin-url URL --iotfin-token TOKEN --iotfin-device ID [--iotfin-bin PATH]]
"""
import argparse
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
EXPRESS_DIR = os.path.join(BENCH, "baselines", "express")
LUA = os.path.join(BENCH, "wrk", "route.lua")
NGINX_TMPL = os.path.join(BENCH, "nginx.conf.tmpl")
NGINX_BODY = ('{"status":"ok","pad":"' + "x" * 76 + '"}')
assert len(NGINX_BODY.encode()) == 100

COMMAND_BODY = '{"type":"bench.noop","payload":{"n":1,"note":"benchmark"},"ttl_seconds":300}'

# name, method, path (with {device}), body, needs token, expected status
ROUTES = [
    ("sessions_anonymous", "POST", "/v1/sessions/anonymous", None, False, 201),
    ("me", "GET", "/v1/me", None, True, 200),
    ("device_get", "GET", "/v1/devices/{device}", None, True, 200),
    ("command_create", "POST", "/v1/devices/{device}/commands", COMMAND_BODY, True, 202),
]

started = []  # (name, Popen) of every child this script started, stopped by pid


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def rel(path):
    return os.path.relpath(path, ROOT)


def run_out(cmd, **kw):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(url, method="GET", token=None, body=None, timeout=5):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        headers["Content-Type"] = "application/json"
    elif method == "POST":
        body = ""
    try:
        conn.request(method, u.path or "/", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def wait_http(url, proc, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: {name} exited with {proc.returncode} while starting")
        try:
            http_request(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: {name} did not answer on {url} within {timeout}s")


def start(name, cmd, **kw):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    started.append((name, p))
    return p


def stop_all():
    while started:
        name, p = started.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


# --- tools ----------------------------------------------------------------------


def ensure_tools(args, tools=(("wrk", "wrk"), ("nginx", "nginx-light")), node=True):
    """Installs the Debian packages of the tools missing (as root), or says which."""
    missing = [pkg for tool, pkg in tools if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0 or args.no_install:
            raise SystemExit(f"bench: missing {' '.join(missing)}; run: "
                             f"sudo apt-get install -y {' '.join(missing)}")
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       env=env, stdout=subprocess.DEVNULL, check=True)
    if node and (not shutil.which("node") or not shutil.which("npm")):
        raise SystemExit("bench: node and npm are needed for the Express baseline")


def npm_ci(args):
    """`npm ci` from the committed lock file, unless node_modules already matches it."""
    cmd = ["npm", "ci", "--no-audit", "--no-fund"]
    lock = os.path.join(EXPRESS_DIR, "package-lock.json")
    stamp = os.path.join(EXPRESS_DIR, "node_modules", ".package-lock.json")
    addon = os.path.join(EXPRESS_DIR, "node_modules", "better-sqlite3", "build", "Release",
                         "better_sqlite3.node")
    fresh = (os.path.exists(stamp) and os.path.exists(addon)
             and os.path.getmtime(stamp) >= os.path.getmtime(lock))
    if fresh and not args.npm_ci:
        log("express baseline: node_modules matches package-lock.json, npm ci skipped")
        return ("npm_config_build_from_source=true " + shlex.join(cmd) +
                "  (cwd bench/baselines/express; skipped: node_modules already matches the lock)")
    log("express baseline: npm ci (builds better-sqlite3; a few minutes the first time)")
    env = dict(os.environ, npm_config_build_from_source="true")
    subprocess.run(cmd, cwd=EXPRESS_DIR, env=env, check=True, stdout=sys.stderr)
    return "npm_config_build_from_source=true " + shlex.join(cmd) + "  (cwd bench/baselines/express)"


def versions(args):
    def pkg(name):
        try:
            with open(os.path.join(EXPRESS_DIR, "node_modules", name, "package.json")) as f:
                return json.load(f)["version"]
        except OSError:
            return "?"
    wrk = run_out(["wrk", "--version"]).splitlines()
    v = {
        "node": run_out(["node", "--version"]),
        "express": pkg("express"),
        "jsonwebtoken": pkg("jsonwebtoken"),
        "@hapi/boom": pkg("@hapi/boom"),
        "better-sqlite3": pkg("better-sqlite3"),
        "sqlite_in_better_sqlite3": run_out(
            ["node", "-e", "const D=require('better-sqlite3');"
             "console.log(new D(':memory:').prepare('select sqlite_version()').pluck().get())"],
            cwd=EXPRESS_DIR),
        "nginx": run_out(["nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": wrk[0].split(" Copyright")[0] if wrk else "?",
        "python": platform.python_version(),
    }
    if args.iotfin_bin:
        v["iotfin"] = run_out([args.iotfin_bin, "--version"]).splitlines()[0:1] or ["?"]
        v["iotfin"] = v["iotfin"][0]
    return v


def machine(data_dir):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1048576:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    fs = run_out(["df", "--output=fstype", data_dir]).splitlines()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "distribution": run_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "express_data_filesystem": fs[-1].strip() if fs else "?",
    }


# --- targets --------------------------------------------------------------------


def start_nginx(tmp, args):
    prefix = os.path.join(tmp, "nginx")
    os.makedirs(prefix)
    port = args.nginx_port or free_port()
    with open(NGINX_TMPL) as f:
        conf = f.read()
    conf = conf.replace("@PORT@", str(port)).replace("@PREFIX@", prefix).replace("@BODY@", NGINX_BODY)
    conf_path = os.path.join(prefix, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    cmd = ["nginx", "-p", prefix, "-c", conf_path, "-e", os.path.join(prefix, "error.log")]
    p = start("nginx", cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", p, "nginx")
    status, body = http_request(url + "/")
    if status != 200 or len(body) != 100:
        raise SystemExit(f"bench: nginx answered {status} with {len(body)} bytes, not 200 with 100")
    shown = shlex.join(cmd).replace(tmp, "$TMP")
    return url, shown + f"  (nginx.conf: bench/nginx.conf.tmpl with @PORT@={port}, @PREFIX@=$TMP/nginx)"


def start_express(tmp, args):
    data = os.path.join(tmp, "express-data")
    env = dict(os.environ, DATA_DIR=data, NODE_ENV="production",
               WEB_CONCURRENCY=str(args.express_workers))
    seed = subprocess.run(["node", "server.js", "--seed"], cwd=EXPRESS_DIR, env=env,
                          capture_output=True, text=True, check=True)
    s = json.loads(seed.stdout.strip().splitlines()[-1])
    port = args.express_port or free_port()
    env["PORT"] = str(port)
    cmd = ["node", "server.js"]
    p = start("express", cmd, cwd=EXPRESS_DIR, env=env, stdout=subprocess.DEVNULL,
              stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", p, "express baseline")
    shown = (f"cd bench/baselines/express && DATA_DIR=$TMP NODE_ENV=production "
             f"WEB_CONCURRENCY={args.express_workers}")
    return {"url": url, "token": s["token"], "device": s["device_id"]}, {
        "seed": f"{shown} node server.js --seed",
        "serve": f"{shown} PORT={port} node server.js",
    }


def start_iotfin(tmp, args):
    import iotfin_fixture

    data = os.path.join(tmp, "iotfin-data")
    os.makedirs(data)
    binary = os.path.abspath(args.iotfin_bin)
    log(f"starting {rel(binary)} serve and provisioning a user and an active device")
    try:
        p, url, settings = iotfin_fixture.start(binary, data, ROOT,
                                                os.path.join(tmp, "iotfin.stderr"))
        started.append(("iotfin", p))
        token, device = iotfin_fixture.provision(url, data)
    except iotfin_fixture.IotfinError as e:
        try:
            with open(os.path.join(tmp, "iotfin.stderr"), errors="replace") as f:
                sys.stderr.write(f.read()[-3000:])
        except OSError:
            pass
        raise SystemExit(f"bench: {e}")
    shown = " ".join(f"{k}=" + ("$TMP/iotfin-data" if k == "IOTFIN_DATA_DIR" else
                                "$REPO/mocks" if k == "IOTFIN_MOCK_DIR" else shlex.quote(v))
                     for k, v in settings.items())
    return {"url": url, "token": token, "device": device}, f"{shown} {rel(binary)} serve"


# --- wrk ------------------------------------------------------------------------


def wrk_cmd(args, url, duration):
    return ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
            "--timeout", f"{args.timeout}s", "--latency",
            "-s", LUA, url]


def wrk_env(method, token, body):
    env = {"BENCH_METHOD": method}
    if token:
        env["BENCH_TOKEN"] = token
    if body:
        env["BENCH_BODY"] = body
    return env


def shown_cmd(cmd, env):
    parts = []
    for k, v in env.items():
        parts.append(f"{k}=" + ("$TOKEN" if k == "BENCH_TOKEN" else shlex.quote(v)))
    c = list(cmd)
    c[c.index(LUA)] = rel(LUA)
    return " ".join(parts + [shlex.join(c)])


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def parse_wrk(text):
    """Figures from wrk's output: the route.lua line (exact), checked against wrk's text."""
    m = re.search(r"^WRK_RESULT (\{.*\})$", text, re.M)
    if not m:
        raise ValueError("no WRK_RESULT line in wrk output:\n" + text)
    r = json.loads(m.group(1))
    out = {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000.0,
        "p90_ms": r["p90_us"] / 1000.0,
        "p99_ms": r["p99_us"] / 1000.0,
        "max_ms": r["max_us"] / 1000.0,
        "requests": r["requests"],
        "non_2xx_3xx": r["errors"]["status"],
        "socket_errors": {k: r["errors"][k] for k in ("connect", "read", "write", "timeout")},
    }
    # wrk's own report, as printed (rounded): kept to show both agree.
    t = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    out["wrk_text"] = {
        "rps": float(t.group(1)) if t else None,
        "p50_ms": float(p50.group(1)) * UNIT[p50.group(2)] if p50 else None,
        "p99_ms": float(p99.group(1)) * UNIT[p99.group(2)] if p99 else None,
    }
    return out


def run_wrk(args, url, method, token, body, duration, raw_name=None, extra_env=None):
    cmd = wrk_cmd(args, url, duration)
    env = dict(wrk_env(method, token, body), **(extra_env or {}))
    p = subprocess.run(cmd, env=dict(os.environ, **env), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: wrk failed ({p.returncode}): {p.stderr.strip()}")
    if raw_name and args.raw_dir:
        with open(os.path.join(args.raw_dir, raw_name + ".txt"), "w") as f:
            f.write(shown_cmd(cmd, env) + "\n\n" + p.stdout)
    return parse_wrk(p.stdout), shown_cmd(cmd, env)


# --- report ---------------------------------------------------------------------


def markdown(doc):
    """A Markdown section for docs/BENCHMARKS.md, every figure taken from `doc`."""
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "n/a"

    def fig(t, k, fmt):
        return num(t[k], fmt) if isinstance(t, dict) else "n/a"

    def ratio(r):
        return num(r["median"], ".2f") + "×" if isinstance(r, dict) else "n/a"

    m, v, st, c = doc["machine"], doc["versions"], doc["settings"], doc["commands"]
    w = st["wrk"]
    ng = doc["nginx"]
    out = [
        "## HTTP API",
        "",
        f"Written by `bench/http_bench.py` on {doc['date_utc']}; do not edit by hand. "
        f"wrk over loopback, {w['threads']} threads, {w['connections']} connections, "
        f"{w['duration_s']} s per run after a {w['warmup_s']} s warm-up of each target and route; "
        f"each figure is the median of {st['runs']} run(s); each ratio is computed within one run "
        "(same run, same machine state), then the median is taken.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']} ({m['distribution']}); "
        f"databases on {m['express_data_filesystem']}; load average (1 min) "
        f"{m['loadavg_1_5_15_before'][0]} before, {m['loadavg_1_5_15_after'][0]} after the run. "
        f"iotfin: {v.get('iotfin', 'n/a')}. Baseline: Node.js {v['node']}, Express {v['express']}, "
        f"jsonwebtoken {v['jsonwebtoken']} (ES256), @hapi/boom {v['@hapi/boom']}, "
        f"better-sqlite3 {v['better-sqlite3']} (SQLite {v['sqlite_in_better_sqlite3']}, WAL, "
        f"synchronous=FULL), {st['express']['workers']} worker process(es). "
        f"Ceiling: {v['nginx']} answering a fixed 100-byte body. {v['wrk']}.",
        "",
        "| route | iotfin req/s | Express req/s | iotfin ÷ Express | iotfin ÷ nginx "
        "| iotfin p50 / p99 (ms) | Express p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["routes"].values():
        io_, ex, ra = r["iotfin"], r["express"], r["ratios_rps"]
        out.append(
            f"| `{r['method']} {r['path']}` | {fig(io_, 'rps', '.0f')} | {fig(ex, 'rps', '.0f')} "
            f"| {ratio(ra['iotfin_over_express'])} | {ratio(ra['iotfin_over_nginx'])} "
            f"| {fig(io_, 'p50_ms', '.2f')} / {fig(io_, 'p99_ms', '.2f')} "
            f"| {fig(ex, 'p50_ms', '.2f')} / {fig(ex, 'p99_ms', '.2f')} |")
    out += [
        "",
        f"nginx, fixed 100-byte body: {fig(ng, 'rps', '.0f')} req/s, p50 {fig(ng, 'p50_ms', '.2f')} ms, "
        f"p99 {fig(ng, 'p99_ms', '.2f')} ms.",
    ]
    if doc["problems"]:
        out += ["", "Problems in this run:", ""] + [f"- {p}" for p in doc["problems"]]
    out += ["", "Commands ($TOKEN is the seeded user's token, $TMP a temporary directory):", "",
            "```", "# " + c["this_script"], c["npm"], c["express"]["seed"], c["express"]["serve"],
            c["nginx"]]
    if c["iotfin"] != "n/a":
        out.append(c["iotfin"])
    out.append(c["wrk"]["nginx"])
    for per in c["wrk"]["routes"].values():
        out += list(per.values())
    out += ["```", ""]
    return "\n".join(out)


# --- main -----------------------------------------------------------------------


def median_of(runs, key):
    vals = [r[key] for r in runs if r is not None and r.get(key) is not None]
    return statistics.median(vals) if vals else "n/a"


def summarize(runs):
    if not runs:
        return "n/a"
    s = {k: median_of(runs, k) for k in ("rps", "p50_ms", "p99_ms")}
    s["runs"] = runs
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured runs per target and route (3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target and route (2)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    ap.add_argument("--timeout", type=int, default=10,
                    help="wrk --timeout seconds (10): slower answers count as timeouts and are "
                         "missing from wrk's latency figures, so keep it well above any p99")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 run of 3 s, 1 s warm-up")
    ap.add_argument("--iotfin-url", help="base URL of a running iotfin, e.g. http://127.0.0.1:8080")
    ap.add_argument("--iotfin-token", help="a user-tier access token valid for the whole run")
    ap.add_argument("--iotfin-device", help="id of an active device owned by that user")
    ap.add_argument("--iotfin-bin",
                    help="iotfin binary: without --iotfin-url, this script starts it on a temporary "
                         "data dir and provisions a user and an active device itself "
                         "(bench/iotfin_fixture.py); with it, only reports `iotfin --version`")
    ap.add_argument("--express-workers", type=int, default=os.cpu_count() or 1,
                    help="Express worker processes (node:cluster, WEB_CONCURRENCY); default "
                         "one per core, so the baseline may use the cores iotfin uses")
    ap.add_argument("--express-port", type=int, default=0, help="default: a free port")
    ap.add_argument("--nginx-port", type=int, default=0, help="default: a free port")
    ap.add_argument("--routes", default=",".join(r[0] for r in ROUTES),
                    help="comma-separated subset of: " + ", ".join(r[0] for r in ROUTES))
    ap.add_argument("--npm-ci", action="store_true", help="run npm ci even if node_modules is fresh")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install wrk/nginx")
    ap.add_argument("--out", help="also write the JSON document to this file")
    ap.add_argument("--markdown", help="also write a Markdown section of the figures to this file")
    ap.add_argument("--raw-dir", help="keep each wrk run's full output in this directory")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 3, 1
    iot = [args.iotfin_url, args.iotfin_token, args.iotfin_device]
    if any(iot) and not all(iot):
        ap.error("--iotfin-url, --iotfin-token and --iotfin-device go together")
    wanted = args.routes.split(",")
    routes = [r for r in ROUTES if r[0] in wanted]
    if len(routes) != len(wanted):
        ap.error(f"unknown route in --routes {args.routes}")
    if args.raw_dir:
        os.makedirs(args.raw_dir, exist_ok=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    load_before = os.getloadavg()
    ensure_tools(args)
    npm_cmd = npm_ci(args)
    tmp = tempfile.mkdtemp(prefix="iotfin-http-bench-")
    problems = []
    try:
        nginx_url, nginx_cmd = start_nginx(tmp, args)
        express, express_cmds = start_express(tmp, args)
        targets = {"express": express}
        iotfin_cmd = "n/a"
        if all(iot):
            targets["iotfin"] = {"url": args.iotfin_url.rstrip("/"), "token": args.iotfin_token,
                                 "device": args.iotfin_device}
            iotfin_cmd = f"already running at {args.iotfin_url} (given with --iotfin-url)"
        elif args.iotfin_bin:
            targets["iotfin"], iotfin_cmd = start_iotfin(tmp, args)
        order = [t for t in ("iotfin", "express") if t in targets]

        # Sanity: one request per target and route, with the expected status.
        skip = set()
        for t in order:
            tg = targets[t]
            for name, method, path, body, auth, want in routes:
                url = tg["url"] + path.format(device=tg["device"])
                try:
                    status, payload = http_request(url, method, tg["token"] if auth else None, body)
                except OSError as e:
                    status, payload = None, str(e).encode()
                if status != want:
                    problems.append(f"{t} {method} {path}: sanity request got {status}, "
                                    f"want {want}: {payload[:200].decode(errors='replace')}")
                    skip.add((t, name))
        log(f"targets: {', '.join(order)} + nginx; routes: {', '.join(r[0] for r in routes)}; "
            f"{args.runs} run(s) of {args.duration}s, warm-up {args.warmup}s")

        def measure(t, route, duration, raw):
            name, method, path, body, auth, _ = route
            tg = targets[t]
            url = tg["url"] + path.format(device=tg["device"])
            return run_wrk(args, url, method, tg["token"] if auth else None, body, duration, raw)

        # Warm-up (results discarded).
        run_wrk(args, nginx_url + "/", "GET", None, None, args.warmup)
        for route in routes:
            for t in order:
                if (t, route[0]) not in skip:
                    log(f"warm-up {t} {route[0]}")
                    measure(t, route, args.warmup, None)

        nginx_runs = []
        results = {r[0]: {t: [] for t in order} for r in routes}
        commands = {"nginx": None, "routes": {r[0]: {} for r in routes}}
        for i in range(args.runs):
            res, cmd = run_wrk(args, nginx_url + "/", "GET", None, None, args.duration,
                               f"run{i + 1}-nginx")
            res["run"] = i + 1
            nginx_runs.append(res)
            commands["nginx"] = cmd
            log(f"run {i + 1} nginx: {res['rps']:.0f} req/s p50 {res['p50_ms']:.3f} ms "
                f"p99 {res['p99_ms']:.3f} ms")
            for route in routes:
                # alternate which target goes first, so neither always follows nginx
                for t in (order if i % 2 == 0 else order[::-1]):
                    if (t, route[0]) in skip:
                        continue
                    res, cmd = measure(t, route, args.duration, f"run{i + 1}-{t}-{route[0]}")
                    res["run"] = i + 1
                    results[route[0]][t].append(res)
                    commands["routes"][route[0]][t] = cmd
                    log(f"run {i + 1} {t} {route[0]}: {res['rps']:.0f} req/s "
                        f"p50 {res['p50_ms']:.3f} ms p99 {res['p99_ms']:.3f} ms"
                        + (f" NON-2xx {res['non_2xx_3xx']}" if res["non_2xx_3xx"] else ""))
                    if res["non_2xx_3xx"] or res["socket_errors"]["timeout"]:
                        problems.append(f"run {i + 1} {t} {route[0]}: {res['non_2xx_3xx']} non-2xx "
                                        f"answers, {res['socket_errors']['timeout']} timeouts")

        vers = versions(args)
        mach = machine(tmp)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    def ratio(a_runs, b_runs):
        b_by_run = {r["run"]: r for r in b_runs}
        per_run = [a["rps"] / b_by_run[a["run"]]["rps"] for a in a_runs if a["run"] in b_by_run]
        return ({"median": statistics.median(per_run), "per_run": per_run} if per_run else "n/a")

    route_docs = {}
    for name, method, path, body, auth, want in routes:
        ex = results[name].get("express", [])
        io_ = results[name].get("iotfin", [])
        route_docs[name] = {
            "method": method,
            "path": path.replace("{device}", "{id}"),
            "body": body,
            "authorization": "Bearer <user token>" if auth else None,
            "expected_status": want,
            "iotfin": summarize(io_),
            "express": summarize(ex),
            "ratios_rps": {
                "iotfin_over_express": ratio(io_, ex),
                "iotfin_over_nginx": ratio(io_, nginx_runs),
                "express_over_nginx": ratio(ex, nginx_runs),
            },
        }
    doc = {
        "benchmark": "iotfin HTTP API (bench/http_bench.py)",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": not problems,
        "problems": problems,
        "machine": dict(mach, loadavg_1_5_15_before=[round(x, 2) for x in load_before],
                        loadavg_1_5_15_after=[round(x, 2) for x in os.getloadavg()]),
        "versions": vers,
        "settings": {
            "wrk": {"threads": args.threads, "connections": args.connections,
                    "timeout_s": args.timeout,
                    "duration_s": args.duration, "warmup_s": args.warmup},
            "runs": args.runs,
            "figures": "median over runs; ratios computed per run (same run), then median",
            "loopback": True,
            "express": {"workers": args.express_workers, "node_env": "production",
                        "sqlite": "journal_mode=WAL, synchronous=FULL",
                        "jwt": "ES256 (jsonwebtoken has no EdDSA)",
                        "auth": "jwt.verify + session row lookup on every request"},
            "nginx": {"body_bytes": 100, "worker_processes": "auto", "access_log": "off",
                      "keepalive_requests": 1000000},
            "iotfin": ({"url": args.iotfin_url} if all(iot) else
                       {"started_by": "bench/iotfin_fixture.py", "binary": rel(os.path.abspath(
                           args.iotfin_bin))} if args.iotfin_bin else "n/a"),
        },
        "commands": {
            "npm": npm_cmd,
            "express": express_cmds,
            "nginx": nginx_cmd,
            "iotfin": iotfin_cmd,
            "wrk": commands,
            "this_script": "/usr/bin/python3 " + " ".join(
                [rel(os.path.abspath(sys.argv[0]))] +
                [("$TOKEN" if a == args.iotfin_token else shlex.quote(a)) for a in sys.argv[1:]]),
        },
        "nginx": summarize(nginx_runs),
        "routes": route_docs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(markdown(doc))
    for p in problems:
        log("PROBLEM: " + p)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
