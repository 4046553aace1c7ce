"""Turns bench_bus JSON lines (one per run) into the bus section of
docs/BENCHMARKS.md: medians, and the ratio to raw SQLite commits computed pair by
pair within each run."""
import json
import os
import statistics
import subprocess
import sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]


def med(k):
    return statistics.median(r[k] for r in runs)


ratios = [r["end_to_end_per_s"] / r["raw_sqlite_commits_per_s"] for r in runs]
cpu = subprocess.run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", shell=True,
                     capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[0]
print(f"""## Bus: publish → handler done, durable

Command: `build/bench_bus 20000 32 2`: 20,000 events, 32 publishing threads, each event
its own durable transaction (its change, its CloudEvent and its queue message), 2 bus
workers, a handler that does nothing. Beside it, in the same run, one-row SQLite
commits with the same durability (WAL, synchronous=FULL), one after another.
{len(runs)} run(s); machine: {cpu}, {os.cpu_count()} cores; load average {load} after.

| measure | iotfin bus | raw SQLite one-row commits | ratio |
|---|---|---|---|
| events (commits) per second | {med('end_to_end_per_s'):.0f} | {med('raw_sqlite_commits_per_s'):.0f} | {statistics.median(ratios):.1f}× |
| latency publish → handler done, p50 (ms) | {med('p50_ms'):.2f} | | |
| latency publish → handler done, p99 (ms) | {med('p99_ms'):.2f} | | |

Each event costs three transactions (publish with fan-out, claim, settle), yet the bus
outruns one-row commits (the ratio above) because the store's single writer commits
every transaction waiting at that moment together: one fsync serves a whole batch.
The DESIGN.md target is 20,000 events/s on 2 cores. The limit here is CPU on the
writer thread, not the disk: see the profile section.""")
