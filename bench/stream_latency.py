#!/usr/bin/env python3
"""How soon an event reaches an open event stream: starts `iotfin serve` (bench/
iotfin_fixture.py), opens GET /v1/events/stream as a user, posts commands to the
user's device one at a time, and reports the time from each 202 reaching this client
to the command's `device.command.queued` event reaching the stream (negative: the
event came first). Not part of `make bench`; run it beside an older binary to
compare, e.g.:

    /usr/bin/python3 bench/stream_latency.py build/iotfin [--commands 40]
"""
import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iotfin_fixture as fx  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--commands", type=int, default=40)
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parent.parent)
    data = tempfile.mkdtemp(prefix="iotfin-stream-")
    proc, base, _ = fx.start(args.binary, data, root, data + "/stderr.log")
    try:
        token, device = fx.provision(base, data)
        headers = {"Authorization": f"Bearer {token}"}
        seen = {}

        def read_stream():
            r = requests.get(base + "/v1/events/stream", stream=True, timeout=120,
                             headers={**headers, "Accept": "text/event-stream"})
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:") and "device.command.queued" in line:
                    seen[json.loads(line[5:])["data"]["command_id"]] = time.monotonic()

        threading.Thread(target=read_stream, daemon=True).start()
        time.sleep(0.5)  # the stream is open before the first command
        lat = []
        for _ in range(args.commands):
            r = requests.post(f"{base}/v1/devices/{device}/commands", headers=headers,
                              json={"type": "t", "payload": {}}, timeout=10)
            answered = time.monotonic()
            cid = r.json()["id"]
            while cid not in seen and time.monotonic() - answered < 2:
                time.sleep(0.0005)
            if cid in seen:
                lat.append((seen[cid] - answered) * 1000)
            time.sleep(0.05)
        if not lat:
            sys.exit("no event reached the stream within 2 s")
        lat.sort()
        print(f"{args.binary}: 202 -> event on the stream, ms: p50 {statistics.median(lat):.1f} "
              f"p90 {lat[int(len(lat) * 0.9)]:.1f} max {lat[-1]:.1f} ({len(lat)} of "
              f"{args.commands} seen)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
