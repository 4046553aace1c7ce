"""Instructions iotfin executes per request, for one route, for one or more builds:
each build runs under valgrind's callgrind while `wrk -t1 -c4` sends the route for
--seconds after a warm-up; the counts are zeroed before and dumped after the load.
An instruction count does not drift with the machine's speed as time does (this
virtual machine's CPU steal moves requests per second by a third between runs), so
it shows what a change on the request path saves even where throughput cannot.

    /usr/bin/python3 bench/instructions_per_request.py --route device_get OLD/iotfin build/iotfin

Also printed: the count outside libc's memset, nearly all of which is libmicrohttpd
zeroing the connection's 64 KiB pool (valgrind counts each step of `rep stosb`,
so it inflates that share), and the functions with the largest inclusive counts.
Under valgrind iotfin runs some 50 times slower, so background work (the bus's
idle polls) weighs more per request than at full speed. The store benchmark the
same way: `valgrind --tool=callgrind build/bench_bus 3000 8 2` ("Collected")."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotfin_fixture as fx  # noqa: E402
from cpu_per_request import ROUTES, wrk_target  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def annotate(out):
    """(inclusive count, function) rows of a callgrind dump, largest first."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no",
                           "--threshold=99.5", out], capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([0-9,]+)\s+\([^)]*\)\s+(\S+)(?:\s+\[(.*)\])?", line)
        if m:
            rows.append((int(m.group(1).replace(",", "")), m.group(2), m.group(3) or ""))
    return rows


def source_name(fn):
    """"http/server.c:on_request" of callgrind's name for a function, however the
    build named its source (absolute, or relative to the build folder)."""
    return re.sub(r"^.*?(?:^|/)src/", "", fn)


def one_run(binary, route, seconds):
    tmp = tempfile.mkdtemp()
    out = os.path.join(tmp, "callgrind.out")
    wrapper = os.path.join(tmp, "iotfin")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} "
                f"{os.path.abspath(binary)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    # iotfin looks for its broker plugin beside the binary it was started as.
    shutil.copy(os.path.join(os.path.dirname(os.path.abspath(binary)),
                             "mosquitto_iotfin_auth.so"), tmp)
    d = os.path.join(tmp, "data")
    p, base, _ = fx.start(wrapper, d, ROOT, os.path.join(tmp, "err.log"), ready_timeout=120)
    try:
        tok, dev = fx.provision(base, d, timeout=300)
        env, url = wrk_target(route, base, tok, dev)
        wrk = ["wrk", "-t1", "-c4", "-s", f"{ROOT}/bench/wrk/route.lua"]
        subprocess.run(wrk + ["-d3s", url], env=env, capture_output=True)  # warm-up
        time.sleep(1)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], capture_output=True, check=True)
        text = subprocess.run(wrk + [f"-d{seconds}s", url], env=env, capture_output=True,
                              text=True).stdout
        subprocess.run(["callgrind_control", "--dump", str(p.pid)], capture_output=True, check=True)
        n = int(re.search(r"(\d+) requests in", text).group(1))
        rows = annotate(out + ".1")
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    total = rows[0][0]
    memset = sum(c for c, f, _ in rows if "memset" in f)
    return n, total, memset, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", help="iotfin binaries to compare")
    ap.add_argument("--route", default="device_get", choices=sorted(ROUTES))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=15, help="functions to list per build")
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("needs valgrind (apt-get install valgrind)")
    for b in args.binaries:
        n, total, memset, rows = one_run(b, args.route, args.seconds)
        print(f"{b}: {n} requests; {total / n:,.0f} instructions a request, "
              f"{(total - memset) / n:,.0f} outside memset", flush=True)
        # iotfin's own functions (the binary's, not a library's), largest first.
        own = [(c, f) for c, f, obj in rows if obj == os.path.abspath(b)]
        for count, fn in own[:args.top]:
            print(f"  {count / n:>10,.0f}  {source_name(fn)}")


if __name__ == "__main__":
    main()
