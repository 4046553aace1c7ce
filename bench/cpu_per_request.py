"""CPU time iotfin spends per request, for one route, for one or more builds side by
side: each build serves `wrk -t2 -c64` for --seconds (wrk's p99 printed too) while
`perf stat -e task-clock` counts the iotfin process's CPU; the runs of the builds are
interleaved, so that a machine whose speed drifts (CPU steal) weighs on all of them alike. CPU per request
is steadier than requests per second on a shared machine, and it is what a change on
the request path moves.

    /usr/bin/python3 bench/cpu_per_request.py --route device_get --runs 4 OLD/iotfin build/iotfin

A build to compare with: `git worktree add /tmp/before <commit> && cmake -S /tmp/before
-B /tmp/before/build -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/before/build`.
Each binary needs mosquitto_iotfin_auth.so beside it (a build tree has it)."""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotfin_fixture as fx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_BODY = '{"type":"bench.noop","payload":{"n":1,"note":"benchmark"},"ttl_seconds":300}'
ROUTES = {
    "device_get": ("GET", "/v1/devices/{dev}", None, True),
    "me": ("GET", "/v1/me", None, True),
    "command_create": ("POST", "/v1/devices/{dev}/commands", COMMAND_BODY, True),
    "sessions_anonymous": ("POST", "/v1/sessions/anonymous", None, False),
}


def wrk_target(route, base, tok, dev):
    """(environment for bench/wrk/route.lua, URL) that send route to iotfin at base."""
    method, path, body, auth = ROUTES[route]
    env = dict(os.environ, BENCH_METHOD=method)
    if auth:
        env["BENCH_TOKEN"] = tok
    if body:
        env["BENCH_BODY"] = body
    return env, base + path.format(dev=dev)


def one_run(binary, route, seconds):
    tmp = tempfile.mkdtemp()
    d = os.path.join(tmp, "data")
    p, base, _ = fx.start(binary, d, ROOT, os.path.join(tmp, "err.log"))
    try:
        tok, dev = fx.provision(base, d)
        env, url = wrk_target(route, base, tok, dev)
        wrk = ["wrk", "-t2", "-c64", "--latency", "-s", f"{ROOT}/bench/wrk/route.lua"]
        subprocess.run(wrk + ["-d2s", url], env=env, capture_output=True)  # warm-up
        stat = subprocess.Popen(["perf", "stat", "-x,", "-e", "task-clock", "-p", str(p.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out = subprocess.run(wrk + [f"-d{seconds}s", url], env=env, capture_output=True,
                             text=True).stdout
        stat.send_signal(2)
        err = stat.communicate()[1]
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    cpu_ms = float(next(line for line in err.splitlines() if "task-clock" in line).split(",")[0])
    v, unit = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out).groups()
    p99_ms = float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
    return rps, cpu_ms * 1000 / (rps * seconds), p99_ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", help="iotfin binaries to compare")
    ap.add_argument("--route", default="device_get", choices=sorted(ROUTES))
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    results = {b: [] for b in args.binaries}
    for r in range(args.runs):
        order = args.binaries if r % 2 == 0 else list(reversed(args.binaries))
        for b in order:
            rps, us, p99 = one_run(b, args.route, args.seconds)
            results[b].append(us)
            print(f"run {r + 1} {b}: {rps:,.0f} req/s, {us:.1f} us CPU a request, "
                  f"p99 {p99:.1f} ms", flush=True)
    for b, us in results.items():
        print(f"{b}: median {statistics.median(us):.1f} us CPU a request "
              f"({', '.join(f'{u:.1f}' for u in us)})")


if __name__ == "__main__":
    main()
