"""The profile section of docs/BENCHMARKS.md: runs perf on the hottest paths (the bus
benchmark, and authenticated GET /v1/devices/{id} and POST /v1/devices/{id}/commands
under wrk) and reports where the time goes, by thread and by library, and how many
context switches a durable POST costs. Figures come from this run; the
prose says what was changed because of earlier such runs."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")


def top(data, sort, n=6, comm=None):
    # perf's --comm filter loses samples with --sort dso; sort by comm,dso and filter here.
    keys = "comm," + sort if comm else sort
    cmd = ["perf", "report", "-i", data, "--no-children", "--sort", keys, "--stdio"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\S.*?)\s*$", line)
        if not m or line.strip().startswith("|") or "--" in line:
            continue
        parts = m.group(2).split()
        if comm:
            if len(parts) < 2 or parts[0] != comm:
                continue
            parts = parts[1:]
        # Several keys without a filter (comm,dso): each row names them all; a symbol
        # row reads "<dso> [.] <symbol>".
        if sort == "dso,sym":
            name = f"{parts[-1]}` in `{parts[0]}"
        else:
            name = "`, `".join(parts[:2]) if "," in sort and not comm else parts[0]
        rows.append((float(m.group(1)), name))
    return rows[:n]


def table(rows, what):
    out = [f"| {what} | share of samples |", "|---|---|"]
    out += [f"| `{name}` | {pct:.1f}% |" for pct, name in rows]
    return "\n".join(out)


def main():
    if not shutil.which("perf") or subprocess.run(["perf", "stat", "-e", "task-clock", "true"],
                                                  capture_output=True).returncode != 0:
        print("## Profile\n\nperf is not usable on this machine; no profile was taken.")
        return
    tmp = tempfile.mkdtemp()
    bus = os.path.join(tmp, "bus.data")
    subprocess.run(["perf", "record", "-F", "2000", "-o", bus, f"{ROOT}/{BUILD}/bench_bus",
                    "20000", "32", "2"], capture_output=True)
    import iotfin_fixture as fx
    d = os.path.join(tmp, "data")
    p, base, _ = fx.start(f"{ROOT}/{BUILD}/iotfin", d, ROOT, os.path.join(tmp, "err.log"))
    http = os.path.join(tmp, "http.data")
    try:
        tok, dev = fx.provision(base, d)
        perf = subprocess.Popen(["perf", "record", "-F", "2000", "-p", str(p.pid), "-o", http],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-s", f"{ROOT}/bench/wrk/route.lua",
                        f"{base}/v1/devices/{dev}"], env=dict(os.environ, BENCH_TOKEN=tok),
                       capture_output=True)
        perf.send_signal(2)
        perf.wait()
        # The durable POST: where its time goes, and how often its threads hand over.
        post = os.path.join(tmp, "post.data")
        body = '{"type":"bench.noop","payload":{"n":1,"note":"benchmark"},"ttl_seconds":300}'
        env = dict(os.environ, BENCH_TOKEN=tok, BENCH_METHOD="POST", BENCH_BODY=body)
        perf = subprocess.Popen(["perf", "record", "-F", "2000", "-p", str(p.pid), "-o", post],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-s", f"{ROOT}/bench/wrk/route.lua",
                        f"{base}/v1/devices/{dev}/commands"], env=env, capture_output=True)
        perf.send_signal(2)
        perf.wait()
        stat = subprocess.Popen(["perf", "stat", "-x,", "-e", "context-switches", "-p",
                                 str(p.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        w = subprocess.run(["wrk", "-t2", "-c64", "-d5s", "-s", f"{ROOT}/bench/wrk/route.lua",
                            f"{base}/v1/devices/{dev}/commands"], env=env, capture_output=True,
                           text=True).stdout
        stat.send_signal(2)
        err = stat.communicate()[1]
        switches = next((int(float(line.split(",")[0])) for line in err.splitlines()
                         if "context-switches" in line and line.split(",")[0].strip()
                         .replace(".", "").isdigit()), None)
        m = re.search(r"^Requests/sec:\s+([0-9.]+)", w, re.M)
        posts = float(m.group(1)) * 5 if m else None
    finally:
        p.terminate()
        p.wait()
    sign = None
    try:
        sign = json.loads(subprocess.run([f"{ROOT}/{BUILD}/bench_sign", "20000"],
                                         capture_output=True, text=True).stdout)
    except (OSError, ValueError):
        pass
    # Instructions a request: the one figure here this machine's drifting speed leaves
    # alone (bench/instructions_per_request.py; valgrind is a bench dependency).
    counts = []
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        import instructions_per_request as ipr
        for route in ("device_get", "me", "command_create", "sessions_anonymous"):
            try:
                n, total, memset, rows = ipr.one_run(f"{ROOT}/{BUILD}/iotfin", route, 6)
            except (fx.IotfinError, OSError, subprocess.CalledProcessError, AttributeError,
                    IndexError):
                continue
            # The request's own work, below the wrappers every request passes through.
            wrappers = ("http/server.c:on_request", "http/server.c:dispatch",
                        "http/server.c:run_fn", "http/server.c:write_run",
                        "http/defer.c:worker_main", "store/store.c:store_read",
                        "store/store.c:store_write", "store/store.c:store_exec")
            own = [(c, ipr.source_name(f)) for c, f, obj in rows
                   if obj == os.path.abspath(f"{ROOT}/{BUILD}/iotfin")
                   and ipr.source_name(f) not in wrappers]
            counts.append((route, n, total / n, (total - memset) / n,
                           [(c / n, f) for c, f in own[:4]]))
    print("## Profile of the hottest paths\n")
    print("Commands: `perf record -F 2000 build/bench_bus 20000 32 2`, and `perf record -F 2000 -p "
          "<iotfin>` while `wrk -t2 -c64 -d5s` fetches `GET /v1/devices/{id}`, then posts "
          "`POST /v1/devices/{id}/commands`, with a user token (bench/profile.py). Shares are of "
          "all samples in the process.\n")
    print("### Bus benchmark, by thread\n")
    print(table(top(bus, "comm"), "thread"))
    print("\nOn the store's writer thread, by library (shares of all samples):\n")
    print(table(top(bus, "dso", comm="store-writer"), "library"))
    print("\n### GET /v1/devices/{id}, by library\n")
    print(table(top(http, "dso"), "library"))
    print("\nBy function:\n")
    print(table(top(http, "dso,sym", n=5), "function"))
    print("\n### POST /v1/devices/{id}/commands, by thread\n")
    print(table(top(post, "comm"), "thread"))
    print("\nBy thread and library (shares of all samples):\n")
    print(table([(pct, name) for pct, name in top(post, "comm,dso", n=8)], "thread, library"))
    if sign:
        print(f"\nOne token signature (Ed25519, libsodium {sign['libsodium']}, what "
              f"`POST /v1/sessions/anonymous` adds to a durable write): {sign['sign_us']:.1f} µs; "
              f"one verification (a token not yet remembered): {sign['verify_us']:.1f} µs "
              f"(`build/bench_sign 20000`, {sign['signatures']:,} of each in a loop).")
    if switches and posts:
        print(f"\nContext switches in iotfin while wrk posted commands for 5 s (`perf stat -e "
              f"context-switches`): {switches:,} for about {posts:,.0f} requests, "
              f"{switches / posts:.1f} a request.")
    if counts:
        method_path = {"device_get": "GET /v1/devices/{id}", "me": "GET /v1/me",
                       "command_create": "POST /v1/devices/{id}/commands",
                       "sessions_anonymous": "POST /v1/sessions/anonymous"}
        print("\n### Instructions a request\n")
        print("valgrind's callgrind counts what iotfin executes while `wrk -t1 -c4` sends the "
              "route for 6 s (`bench/instructions_per_request.py --route <route> build/iotfin`). "
              "Unlike time, the count does not move with this machine's speed. \"Outside memset\" "
              "leaves out libc's memset, nearly all of it libmicrohttpd zeroing the connection's "
              "64 KiB pool per request (valgrind counts each step of `rep stosb`, which inflates "
              "it). Under valgrind iotfin runs some 50 times slower, so its background work "
              "weighs a little more per request than at full speed.\n")
        print("| route | requests counted | instructions a request | outside memset | "
              "iotfin's largest functions (inclusive) |")
        print("|---|---|---|---|---|")
        for route, n, tot, out, own in counts:
            fns = "; ".join(f"`{f}` {c / 1000:.0f}k" for c, f in own)
            print(f"| `{method_path[route]}` | {n:,} | {tot / 1000:.0f}k | {out / 1000:.0f}k | {fns} |")
    print("""
### What the profiles showed, and what was done

- The single store writer is the bus's bottleneck: every transaction's callback runs
  on it. Earlier profiles showed it spending much of its time waking waiters (one
  broadcast condition woke every waiting thread per batch), parsing SAVEPOINT
  statements, turning claimed rows into JSON and formatting ids and timestamps with
  printf. Now each waiter has its own semaphore and waiters wake each other in a
  chain, savepoints are prepared once, JSON is built by the worker after the commit,
  and ids and timestamps are formatted by hand. What remains is SQLite itself and
  the events' JSON: the next step is a second writer connection per queue table, or
  moving event serialisation out of the transaction callback entirely.
- Durable POSTs used to run on libmicrohttpd's 16 threads: at most 16 writes shared
  a commit, and 16 threads on 2 cores stretched every GET's tail (p99 about 12 ms).
  Requests that write now run on a pool of their own (`http-write`, 64) with their
  connection suspended, and libmicrohttpd runs one thread a core. What the POST
  profile shows now is hand-overs: the kernel is the largest share of each thread
  (the top kernel symbol is the hypervisor's interrupt enable after a context
  switch), at about five context switches a request.
- On the HTTP path the first profile was dominated by Ed25519 verification in
  libsodium (the largest share of samples then): every request verified its token again. Verified
  tokens are now remembered by a BLAKE2b hash of the token. The access-log line was
  built with jansson and is now formatted by hand; reads prepare BEGIN and COMMIT
  once. The kernel (loopback TCP, shared with wrk on the same two cores) is now the
  largest share; nginx's ceiling does a fraction of this work per request (no token,
  no database read, no JSON, no log line).
- jansson's `json_dumps` hands every token to a callback and decodes every string
  byte by byte; replies, events and log lines are now written by `core/jsontext.c`,
  the same bytes from one growing buffer. CPU per GET, against the build before it
  (0e0078f), in three interleaved runs on 2026-12-03: medians 29 against 33, 43
  against 53 and 50 against 51 µs a request: less, by an amount this machine's noise
  blurs (`bench/cpu_per_request.py --route device_get --runs 6 <before>/iotfin
  build/iotfin`; its docstring says how to build the other binary).
- Instruction counts (valgrind's callgrind; they do not drift with this machine's
  speed as time does) showed waste that time profiles blurred, measured per request
  with `bench/instructions_per_request.py --route <route> <before>/iotfin build/iotfin`
  and for the bus with `valgrind --tool=callgrind build/bench_bus 3000 8 2`, against
  6cd4bf5, on 2026-12-03:
  - SQLite counted every allocation under one process-wide mutex (its memory
    statistics, on by default), so the writer and every reader thread met on it:
    now off (`SQLITE_CONFIG_MEMSTATUS`). CPU per GET fell from 49.8 to 43.6 µs
    (medians of six interleaved runs of `bench/cpu_per_request.py`).
  - On SQLite, `INSERT ... RETURNING` costs nearly twice a plain insert (an events
    row: 54k against 28k instructions, `valgrind --tool=callgrind
    build/bench_returning returning` against `... rowid`): an event's insert now
    asks for the rowid, and a claim on the only writer counts its changes instead.
  - Every event, even one no queue takes (a queued command), woke each bus worker
    into two reads looking for work: now only events that fan out wake them.
  - `GET /v1/devices/{id}`, `GET /v1/me` and the command's 202 write their answer as
    JSON text straight from the row (`store/rowjson.h`), not a jansson value built
    and dumped; a result row's cells are one allocation; the router tries the
    request's method first and fills its match in place.
  - Result: the bus 930M to 720M instructions for 3,000 events; a request, outside
    the pool's memset: `GET /v1/devices/{id}` 83k to 54k, `GET /v1/me` 65k to 48k,
    `POST /v1/devices/{id}/commands` 360k to 237k, `POST /v1/sessions/anonymous`
    568k to 461k (of which the Ed25519 signature is 257k; the token's base64url is
    now written by a table, not libsodium's constant-time encoder). In requests per
    second, interleaved runs against 6cd4bf5 on a slow phase of this machine: the
    bus 9.9k to 15.4k events/s (medians of five runs of `build/bench_bus 20000 32
    2` each); `POST /v1/devices/{id}/commands` 9.7k to 13.4k req/s and 166 to 114 µs
    of CPU a request (medians of four runs each, `bench/cpu_per_request.py --route
    command_create --runs 4 <before>/iotfin build/iotfin`).
- The largest single function of a GET is libc's `memset` (the table above), called
  by libmicrohttpd 0.9.75 to zero the connection's memory pool (`HEAD_POOL`, 64 KiB,
  in src/http/server.c) for every request: built with a 32 KiB pool, the same profile
  showed it at 3% instead of 8%. Heads between 32 and 64 KiB would then get
  libmicrohttpd's own HTML 431 instead of problem+json, so the pool stays.""")


if __name__ == "__main__":
    main()
