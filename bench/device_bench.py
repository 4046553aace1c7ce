#!/usr/bin/python3
"""Device-side benchmark of iotfin: commands, device events, start/stop, memory.

Measured on loopback on this machine against `build/iotfin serve` started here on
free ports and temporary data dirs (users and devices provisioned through the public
API: bench/iotfin_fixture.py, bench/device_fixture.py):

1. command round trip: POST /v1/devices/{id}/commands -> a paho device (MQTT v5,
   device credentials) receives it on devices/<id>/commands and acks
   {"status":"succeeded"} -> GET /v1/devices/{id}/commands/{cid} shows succeeded.
   Sequential round trips after a warm-up; p50/p99 of the whole trip and of the
   API -> device leg (DESIGN.md target: round trip p50 under 2 ms). With
   --nagle-probe (needs cc), the round trip is measured once more on an iotfin whose
   sockets, and its broker's, get TCP_NODELAY from an LD_PRELOAD shim built here: a
   diagnostic, reported apart (before commit 34f0cce it took the p50 from 88 ms to 4).
   The same trips are then timed with C clients on both ends (build/bench_roundtrip:
   a libmosquitto device, a raw keep-alive HTTP/1.1 client), which leave out what
   paho's thread and http.client add to a trip of a few milliseconds; the target is
   read from that row, with the Python one beside it.
2. device events in over MQTT, stored and forwarded: K devices publish N events
   (QoS 1, {"id","type":"t","data":{"n"}} on devices/<id>/events) to iotfin until
   every one is stored and POSTed to the BANK mock (/notifications); beside it the
   same mosquitto binary with nothing behind it (a plain config, anonymous) carries
   the same messages from the same K publishers to one QoS 1 subscriber on
   devices/+/events. Publishers are mosquitto_pub -l and the subscriber
   mosquitto_sub (libmosquitto, like iotfin's own client), so the load generator is
   not the Python interpreter. iotfin is fed as fast as its broker takes the
   messages (--window-iotfin 0). The broker alone is fed through a window: at most
   --window-broker (32) events published and not yet received by the subscriber,
   because mosquitto with its default limits silently drops QoS 1 messages it has
   already acknowledged to the publisher when its one subscriber falls behind
   (mosquitto_sub writes every message to a pipe; it lost some from 64 outstanding
   on, with "Outgoing messages are being dropped" logged though max_queued_messages
   is 1000 by default; we did not find out why). iotfin's managed broker queues for
   iotfin instead (since commit 3bffbe8); for an older iotfin, which lost events
   that way, pass --window-iotfin 256 (its hub's intake is then read from /metrics
   every --poll-ms). One unpaced burst (--burst) is also run on both sides to show
   what each loses. Target: iotfin at least half of the broker alone.
2b. a fleet with the durable PUBACK (issues #10, #14): --fleet-devices (200) devices,
   one mosquitto_pub each, publish --fleet-events at QoS 1, unpaced, into iotfin as
   built (each event written and fdatasynced to the spool before its PUBACK) until
   stored and forwarded to the BANK mock; in the same run, the disk's limit (one
   writer, write + fdatasync of 200-byte records in the data dir's folder, before and
   after), the bare broker with the same publishers, and iotfin at --old-commit (the
   path before the spool), built once in a git worktree outside the repository
   (--old-dir) and reused while the commit is the same. Targets: stored >= 0.8x the
   disk limit, stored and forwarded >= 0.5x.
3. start and stop: exec of `iotfin serve` -> its ready line, on fresh data dirs and
   restarts of an existing one (and of the loaded one from 1-2); SIGTERM -> exit.
   Target: ready under 100 ms, managed broker included.
4. memory: VmRSS of iotfin plus its mosquitto child, idle after start, after
   provisioning --mem-devices devices, and with all of them connected (one paho client
   each, CONNACK 0 and SUBACK checked, driven from one thread with a selector).
5. connected (only with --sections connected; `make bench` step connected, issue #14):
   the same readings with --conn-devices (10,000) devices connected at once by
   build/bench_fleet (bench/bench_fleet.c: one process, one libmosquitto connection per
   device, one poll loop), then one `ping` request per device (CONTRACT section 5),
   every answer counted and timed. Target: iotfin under 2 KiB per connected device
   (connected against provisioned) and every device answered.

Each figure is the median over --runs runs; ratios are computed within a run, then
the median is taken. Prints one JSON document on stdout (and writes --out, and a
Markdown section to --markdown); progress goes to stderr. Exit status 1 if a check
failed (lost events, a refused connection, a non-zero exit, ...), still reporting.

Usage:
  /usr/bin/python3 bench/device_bench.py [--quick] [--runs N] [--out F] [--markdown F]
      [--sections commands,events,fleet,startstop,memory] [--events N] [--devices K] ...
"""
import argparse
import collections
import datetime
import json
import os
import platform
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import device_fixture as dfx  # noqa: E402
import iotfin_fixture  # noqa: E402

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
except ImportError:  # pragma: no cover
    raise SystemExit("bench: paho-mqtt is needed (run with /usr/bin/python3)")

SECTIONS = ("commands", "events", "fleet", "startstop", "memory")
# Run only when asked (bench/run.sh step "connected"): 10,000 devices take minutes.
EXTRA_SECTIONS = ("connected",)
started = []  # every server or child process this script started; stopped by pid
problems = []


T_START = time.monotonic()


def log(msg):
    print(f"bench: [{time.monotonic() - T_START:6.1f} s] {msg}", file=sys.stderr, flush=True)


def problem(msg):
    log("PROBLEM: " + msg)
    problems.append(msg)


def rel(path):
    return os.path.relpath(path, ROOT)


def track(p):
    started.append(p)
    return p


def stop_all():
    while started:
        p = started.pop()
        proc = p.proc if isinstance(p, dfx.Server) else p
        if proc.poll() is None:
            try:
                proc.terminate()
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


def _die_with_parent():
    """preexec_fn: children started here get SIGTERM if this script dies (even by kill -9)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def med(values):
    v = [x for x in values if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def r3(x, nd=3):
    return round(x, nd) if isinstance(x, float) else x


def start_server(args, tmp, name, data_dir=None, extra_env=None):
    data_dir = data_dir or os.path.join(tmp, name)
    os.makedirs(data_dir, exist_ok=True)
    srv = dfx.start(args.iotfin_bin, data_dir, ROOT, os.path.join(tmp, name + ".stderr"),
                    extra_env)
    track(srv)
    return srv


def stop_server(srv):
    res = srv.stop()
    if srv in started:
        started.remove(srv)
    return res


# --- 1. command round trip ----------------------------------------------------------


class CommandDevice:
    """A paho device (network thread of its own) that acks every command at once."""

    def __init__(self, creds, host, port):
        self.id = creds["client_id"]
        self.arrived = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.refused = None
        c = mqtt.Client(client_id=creds["client_id"], protocol=mqtt.MQTTv5)
        c.username_pw_set(creds["username"], creds["password"])
        c.on_connect = self.on_connect
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = self.on_message
        self.c = c
        c.connect(host, port, keepalive=60)
        c.loop_start()
        if not self.ready.wait(10):
            raise iotfin_fixture.IotfinError(f"device did not connect and subscribe ({self.refused})")

    def on_connect(self, c, userdata, flags, rc, props=None):
        if rc != 0:
            self.refused = str(rc)
            return
        c.subscribe(f"devices/{self.id}/commands", qos=1)

    def on_message(self, c, userdata, msg):
        t = time.perf_counter()
        cid = json.loads(msg.payload)["id"]
        c.publish(f"devices/{self.id}/commands/{cid}/ack", b'{"status":"succeeded"}', qos=1)
        with self.cond:
            self.arrived[cid] = t
            self.cond.notify_all()

    def wait_for(self, cid, timeout=10):
        with self.cond:
            if not self.cond.wait_for(lambda: cid in self.arrived, timeout):
                return None
            return self.arrived.pop(cid)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


ROUND_TRIP_LEGS = ("round_trip", "api_to_device", "post", "device_to_visible")


def leg_medians(out):
    """Adds to out, per leg, the medians over out["runs"] of each run's p50 and p99."""
    for k in ROUND_TRIP_LEGS:
        out[k + "_ms"] = {q: r3(med([x[k + "_ms"][q] for x in out["runs"]])) for q in ("p50", "p99")}
    out["meets_target"] = out["round_trip_ms"]["p50"] is not None and out["round_trip_ms"]["p50"] < 2
    return out


def round_trip(api, token, dev, device, i):
    path = f"/v1/devices/{dev}/commands"
    body = {"type": "bench.ping", "payload": {"i": i}}
    t0 = time.perf_counter()
    status, cmd = api.call("POST", path, token, body)
    t_api = time.perf_counter()
    if status != 202:
        raise iotfin_fixture.IotfinError(f"POST {path}: {status} {str(cmd)[:200]}")
    cid = cmd["id"]
    t_dev = device.wait_for(cid)
    if t_dev is None:
        raise iotfin_fixture.IotfinError(f"command {cid} never reached the device")
    polls = 0
    deadline = time.monotonic() + 10
    while True:
        status, c = api.call("GET", f"{path}/{cid}", token)
        polls += 1
        if status == 200 and c["status"] == "succeeded":
            break
        if status != 200 or c["status"] in ("failed", "expired") or time.monotonic() > deadline:
            raise iotfin_fixture.IotfinError(f"command {cid}: {status} {str(c)[:200]}")
    t_vis = time.perf_counter()
    return {"round_trip": (t_vis - t0) * 1e3, "api_to_device": (t_dev - t0) * 1e3,
            "post": (t_api - t0) * 1e3, "device_to_visible": (t_vis - t_dev) * 1e3,
            "polls": polls}


def bench_commands(args, srv, api, token, dev, creds):
    log(f"commands: {args.warmup_commands} warm-up + {args.runs} x {args.commands} round trips")
    sys.setswitchinterval(0.0005)  # the device's paho thread must not wait for the GIL
    device = CommandDevice(creds, srv.mqtt_host, srv.mqtt_port)
    runs = []
    try:
        for i in range(args.warmup_commands):
            round_trip(api, token, dev, device, -i)
        for r in range(args.runs):
            samples = [round_trip(api, token, dev, device, i) for i in range(args.commands)]
            run = {"run": r + 1, "n": len(samples)}
            for k in ROUND_TRIP_LEGS:
                vals = [s[k] for s in samples]
                run[k + "_ms"] = {"p50": r3(pct(vals, 50)), "p90": r3(pct(vals, 90)),
                                  "p99": r3(pct(vals, 99)), "max": r3(max(vals))}
            run["get_polls_per_trip_mean"] = r3(statistics.mean(s["polls"] for s in samples), 2)
            runs.append(run)
            log(f"commands run {r + 1}: round trip p50 {run['round_trip_ms']['p50']:.2f} ms "
                f"p99 {run['round_trip_ms']['p99']:.2f} ms; API->device p50 "
                f"{run['api_to_device_ms']['p50']:.2f} ms p99 {run['api_to_device_ms']['p99']:.2f} ms")
    finally:
        device.close()
        sys.setswitchinterval(0.005)
    out = leg_medians({"runs": runs})
    out["target_round_trip_p50_ms"] = 2
    return out


def bench_commands_c(args, srv, token, dev, creds):
    """The same round trips with C clients on both ends (bench/bench_roundtrip.c), on the
    same server, device and credentials, after the paho device has disconnected."""
    cmd = [args.bench_roundtrip, str(urllib.parse.urlsplit(srv.http).port), str(srv.mqtt_port),
           token, dev, creds["username"], creds["password"], str(args.warmup_commands),
           str(args.runs), str(args.commands)]
    log(f"commands, C clients: {args.warmup_commands} warm-up + {args.runs} x "
        f"{args.commands} round trips")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise iotfin_fixture.IotfinError(f"bench_roundtrip: {p.stderr.strip()[:300]}")
    out = json.loads(p.stdout)
    for r in out["runs"]:
        log(f"commands run {r['run']}, C clients: round trip p50 {r['round_trip_ms']['p50']:.2f} "
            f"ms p99 {r['round_trip_ms']['p99']:.2f} ms")
    out["command"] = " ".join([rel(args.bench_roundtrip), "HTTP_PORT", "MQTT_PORT", "TOKEN",
                               "DEVICE", "USER", "PASSWORD"] + cmd[7:])
    return leg_medians(out)


# --- diagnostic: the round trip with TCP_NODELAY everywhere ----------------------------

NODELAY_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
static void nodelay(int fd) {
  int one = 1, type;
  socklen_t len = sizeof(type);
  if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM)
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
int connect(int fd, const struct sockaddr *a, socklen_t l) {
  static int (*real)(int, const struct sockaddr *, socklen_t);
  if (!real) real = dlsym(RTLD_NEXT, "connect");
  nodelay(fd);
  return real(fd, a, l);
}
int accept(int fd, struct sockaddr *a, socklen_t *l) {
  static int (*real)(int, struct sockaddr *, socklen_t *);
  if (!real) real = dlsym(RTLD_NEXT, "accept");
  int c = real(fd, a, l);
  nodelay(c);
  return c;
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
  static int (*real)(int, struct sockaddr *, socklen_t *, int);
  if (!real) real = dlsym(RTLD_NEXT, "accept4");
  int c = real(fd, a, l, flags);
  nodelay(c);
  return c;
}
"""


def bench_nagle_probe(args, tmp):
    """Command round trips on an iotfin whose TCP sockets (HTTP, its MQTT client, and
    its managed broker's, which inherits the environment) all have TCP_NODELAY."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return {"skipped": "no C compiler"}
    src = os.path.join(tmp, "nodelay_shim.c")
    so = os.path.join(tmp, "nodelay_shim.so")
    with open(src, "w") as f:
        f.write(NODELAY_SHIM)
    p = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", so, src, "-ldl"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"skipped": "shim did not build: " + p.stderr[-300:]}
    log("nagle probe: iotfin with TCP_NODELAY on every socket (LD_PRELOAD shim)")
    srv = start_server(args, tmp, "nodelay", extra_env={"LD_PRELOAD": so})
    api = dfx.Api(srv.http)
    runs = args.runs
    try:
        token, dev = iotfin_fixture.provision(srv.http, srv.data_dir)
        creds = api.expect(201, "POST", f"/v1/devices/{dev}/credentials", token)
        args.runs = 1
        r = bench_commands(args, srv, api, token, dev, creds)
    finally:
        args.runs = runs
        api.close()
        stop_server(srv)
    return {"how": "LD_PRELOAD shim setting TCP_NODELAY on connect/accept (source in this "
                   "script, NODELAY_SHIM), in iotfin's environment and so its broker's",
            "runs": 1,
            **{k: r[k] for k in ("round_trip_ms", "api_to_device_ms", "post_ms",
                                 "device_to_visible_ms")}}


# --- 2. device events ----------------------------------------------------------------


class PlainBroker:
    """The same mosquitto binary, no iotfin: a plain config in a temporary directory."""

    def __init__(self, tmp, mosquitto):
        d = os.path.join(tmp, "plain-mosquitto")
        os.makedirs(d, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(d, "mosquitto.conf")
        user = __import__("pwd").getpwuid(os.geteuid()).pw_name
        # As iotfin's managed config, less the auth plugin: same packet limit, no
        # persistence, default queue and in-flight limits.
        with open(self.conf, "w") as f:
            f.write("per_listener_settings false\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                    "log_timestamp false\nmax_packet_size 1048576\n"
                    f"listener {self.port} 127.0.0.1\nuser {user}\n")
        self.log = os.path.join(d, "mosquitto.log")
        self.cmd = [mosquitto, "-c", self.conf]
        self.proc = track(subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                           stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                           preexec_fn=_die_with_parent))
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: plain mosquitto exited {self.proc.returncode}: "
                                 + open(self.log, errors="replace").read()[-500:])
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench: plain mosquitto does not accept connections")
                time.sleep(0.02)
        self.pid = self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc in started:
            started.remove(self.proc)

    def dropped_notices(self):
        try:
            with open(self.log, errors="replace") as f:
                return sum("being dropped" in line for line in f)
        except OSError:
            return 0


class Subscriber:
    """mosquitto_sub on devices/+/events, QoS 1; counts lines carrying the run's tag."""

    def __init__(self, port, tag, n):
        self.tag, self.n = tag.encode(), n
        self.count = self.warm = 0
        self.t_done = None
        self.last_t = None
        # Line-buffered standard output (stdbuf): otherwise the last few kB of
        # messages sit in mosquitto_sub's stdio buffer and are never counted.
        self.cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", "1",
                    "-i", f"bench-sub-{tag}", "-t", "devices/+/events"]
        self.proc = track(subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                           preexec_fn=_die_with_parent))
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        fd = self.proc.stdout.fileno()
        rest = b""
        run = b'{"id":"' + self.tag + b'-'
        warm = b'{"id":"' + self.tag + b'w'
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            c = sum(1 for line in lines if line.startswith(run))
            self.warm += sum(1 for line in lines if line.startswith(warm))
            if c:
                self.count += c
                self.last_t = time.perf_counter()
                if self.count >= self.n and self.t_done is None:
                    self.t_done = self.last_t

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        if self.proc in started:
            started.remove(self.proc)


class Publishers:
    """K mosquitto_pub -l (one per device), each fed lines through a pipe."""

    def __init__(self, port, devices, qos=1):
        self.procs = []
        self.cmds = []
        for d in devices:
            cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", str(qos),
                   "-i", d["client_id"], "-t", f"devices/{d['client_id']}/events", "-l"]
            if d.get("password"):
                cmd[9:9] = ["-u", d["username"], "-P", d["password"]]
            self.cmds.append(cmd)
            self.procs.append(track(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                                     stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.PIPE,
                                                     preexec_fn=_die_with_parent)))

    def write(self, k, data):
        self.procs[k].stdin.write(data)
        self.procs[k].stdin.flush()

    def cpu_s(self):
        return sum(dfx.cpu_s(p.pid) or 0 for p in self.procs)

    def close(self, timeout=60):
        """EOF on stdin; mosquitto_pub exits once its last message is acknowledged."""
        bad = []
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p, cmd in zip(self.procs, self.cmds):
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode != 0:
                bad.append(f"mosquitto_pub exit {p.returncode}: "
                           f"{p.stderr.read().decode(errors='replace')[:200]}")
            if p in started:
                started.remove(p)
        return bad


def event_lines(tag, n, k_devices):
    """Per device, in order: the lines device k publishes (event i goes to device i % K)."""
    out = [[] for _ in range(k_devices)]
    for i in range(n):
        out[i % k_devices].append(
            ('{"id":"%s-%d","type":"t","data":{"n":%d}}\n' % (tag, i, i)).encode())
    return out


def feed(pubs, lines, n, window, taken, poll_s, stall_s):
    """Writes event i (0..n-1, round robin over devices) while fewer than `window`
    are published and not yet taken (window 0: no limit). Gives up when nothing was
    taken for stall_s (events were lost). Returns (t_start, events written)."""
    k_devices = len(lines)
    sent = 0
    t0 = time.perf_counter()
    last, last_t = None, t0
    while sent < n:
        got = int(taken())
        if got != last:
            last, last_t = got, time.perf_counter()
        elif time.perf_counter() - last_t > stall_s:
            break
        allowed = n - sent if window <= 0 else window - (sent - got)
        if window <= 0 or allowed >= min(max(window // 8, 1), n - sent):
            m = min(allowed, n - sent)
            chunks = [[] for _ in range(k_devices)]
            for i in range(sent, sent + m):
                chunks[i % k_devices].append(lines[i % k_devices][i // k_devices])
            for k, ch in enumerate(chunks):
                if ch:
                    pubs.write(k, b"".join(ch))
            sent += m
        else:
            time.sleep(poll_s)
    return t0, sent


def wait_until(cond, timeout, step=0.005):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def events_baseline(args, broker, devices, n, window, tag):
    """The plain broker: K publishers -> one subscriber, until it has all n or stalls."""
    plain_devs = [{"client_id": d["client_id"]} for d in devices]
    sub = Subscriber(broker.port, tag, n)
    pubs = Publishers(broker.port, plain_devs)
    try:
        # Warm-up lines, resent until the subscriber has one from every publisher:
        # both connected, the subscription in place.
        def seen_all():
            return sub.warm >= len(plain_devs)
        for attempt in range(50):
            for k in range(len(plain_devs)):
                pubs.write(k, ('{"id":"%sw%d","type":"t","data":{"n":-1}}\n' % (tag, k)).encode())
            if wait_until(seen_all, 0.2):
                break
        else:
            raise SystemExit("bench: the plain broker's subscriber sees nothing")
        time.sleep(0.1)
        lines = event_lines(tag, n, len(devices))
        cpu0 = {"broker": dfx.cpu_s(broker.pid), "subscriber": dfx.cpu_s(sub.proc.pid),
                "publishers": pubs.cpu_s()}
        t0, sent = feed(pubs, lines, n, window, lambda: sub.count, 0.001, args.stall_s)
        # Done: all n taken, or nothing new for --stall-s (messages were dropped).
        while sub.count < n:
            last = sub.last_t or t0
            if time.perf_counter() - last > args.stall_s:
                break
            time.sleep(0.005)
        t_end = sub.t_done or sub.last_t or time.perf_counter()
        cpu1 = {"broker": dfx.cpu_s(broker.pid), "subscriber": dfx.cpu_s(sub.proc.pid),
                "publishers": pubs.cpu_s()}
        bad = pubs.close()
        for b in bad:
            problem("plain broker publishers: " + b)
        wall = t_end - t0
        return {
            "published": sent, "received": sub.count, "lost": sent - sub.count,
            "seconds": r3(wall), "events_per_s": r3(sub.count / wall if wall > 0 else None, 1),
            "cpu_s": {k: r3(cpu1[k] - cpu0[k], 2) for k in cpu0 if cpu0[k] is not None},
            "commands": {"subscriber": " ".join(sub.cmd),
                         "publisher": " ".join(pubs.cmds[0]).replace(devices[0]["client_id"], "$ID")},
        }
    finally:
        pubs.close(timeout=5)
        sub.stop()


class MetricsPoller:
    """Polls iotfin's /metrics every `interval` s on a thread of its own."""

    KEYS = {
        "in": 'iotfin_mqtt_messages_in_total{kind="event"}',
        "done": 'iotfin_bus_handler_outcomes_total{queue="bank-forwarder",outcome="done"}',
        "ready": 'iotfin_queue_messages{queue="bank-forwarder",state="ready"}',
        "in_flight": 'iotfin_queue_messages{queue="bank-forwarder",state="in_flight"}',
        "delayed": 'iotfin_queue_messages{queue="bank-forwarder",state="delayed"}',
        "rejected": "iotfin_mqtt_messages_rejected_total",
    }

    def __init__(self, base, interval=0.05):
        self.api = dfx.Api(base)
        self.interval = interval
        self.lock = threading.Lock()
        self.base = None
        self.cur = None
        self.samples = 0
        self.stop_ev = threading.Event()
        self.cur = self.read()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def read(self):
        m = self.api.metrics()
        v = {k: m.get(name, 0.0) for k, name in self.KEYS.items() if k != "rejected"}
        v["rejected"] = sum(x for k, x in m.items() if k.startswith(self.KEYS["rejected"]))
        v["backlog"] = v["ready"] + v["in_flight"] + v["delayed"]
        v["t"] = time.perf_counter()
        return v

    def loop(self):
        while not self.stop_ev.wait(self.interval):
            try:
                v = self.read()
            except Exception:  # noqa: BLE001 - keep polling through a hiccup
                continue
            with self.lock:
                self.cur = v
                self.samples += 1

    def get(self):
        with self.lock:
            return dict(self.cur)

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        self.api.close()


def count_stored(api, token, devices, tag):
    """Distinct event ids of this run per device, paging GET /v1/devices/{id}/events."""
    total = 0
    prefix = tag + "-"
    for d in devices:
        seen, cursor = set(), None
        while True:
            path = f"/v1/devices/{d['client_id']}/events?limit=200" + (
                f"&cursor={cursor}" if cursor else "")
            page = api.expect(200, "GET", path, token)
            seen.update(e["id"] for e in page["items"] if e["id"].startswith(prefix))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        total += len(seen)
    return total


def check_bank_log(api, admin, tag, devices):
    """From the BANK mock's request log: distinct events of this run forwarded to
    /notifications, and whether each device's arrived in order (first arrivals)."""
    body = api.expect(200, "GET", "/mock/_control/requests?partner=bank", admin)
    first = {}
    order_ok = True
    last_n = {}
    entries = 0
    for e in body["items"]:
        b = e.get("body")
        if e.get("path") != "/notifications" or not isinstance(b, dict):
            continue
        if b.get("type") != "device.event.received":
            continue
        data = b.get("data") or {}
        eid = data.get("event_id", "")
        if not eid.startswith(tag + "-"):
            continue
        entries += 1
        if eid in first:
            continue
        first[eid] = True
        dev = data.get("device_id")
        n = (data.get("data") or {}).get("n")
        if dev in last_n and isinstance(n, int) and n < last_n[dev]:
            order_ok = False
        last_n[dev] = n
    return {"log_entries": entries, "distinct": len(first), "in_order_per_device": order_ok,
            "log_items_total": len(body["items"])}


def events_iotfin(args, srv, api, token, creds, n, window, tag):
    """iotfin: K devices publish; done when all n are stored and forwarded to BANK."""
    poll = MetricsPoller(srv.http, args.poll_ms / 1000)
    pubs = None
    try:
        # Idle first: nothing left for the forwarder from earlier work.
        if not wait_until(lambda: poll.get()["backlog"] == 0, 120, 0.05):
            problem("events: iotfin's bank-forwarder queue did not drain before the run")
        api.expect(204, "DELETE", "/mock/_control/requests", dfx.admin_token(srv.data_dir))
        pubs = Publishers(srv.mqtt_port, creds)
        v0 = poll.get()
        for k in range(len(creds)):
            pubs.write(k, ('{"id":"%sw%d","type":"t","data":{"n":-1}}\n' % (tag, k)).encode())
        if not wait_until(lambda: poll.get()["in"] - v0["in"] >= len(creds)
                          and poll.get()["done"] - v0["done"] >= len(creds)
                          and poll.get()["backlog"] == 0, 30, 0.02):
            raise SystemExit("bench: iotfin did not store and forward the warm-up events")
        base = poll.get()
        lines = event_lines(tag, n, len(creds))
        cpu0 = {"iotfin_threads": dfx.thread_cpu_s(srv.pid),
                "broker": sum(dfx.cpu_s(b) or 0 for b in srv.broker_pids()),
                "publishers": pubs.cpu_s()}
        t0, sent = feed(pubs, lines, n, window, lambda: poll.get()["in"] - base["in"], 0.01,
                        args.stall_s)
        t_sent = time.perf_counter()
        poll.interval = 0.05  # fed: the scrapes only time the end from now on
        t_stored = t_fwd = None
        peak_backlog = 0
        last_progress, last_val = time.perf_counter(), None
        deadline = time.perf_counter() + args.events_timeout
        while True:
            v = poll.get()
            stored = (v["done"] - base["done"]) + v["backlog"]
            fwd = v["done"] - base["done"]
            peak_backlog = max(peak_backlog, v["backlog"])
            if t_stored is None and stored >= n:
                t_stored = v["t"]
            if fwd >= n:
                t_fwd = v["t"]
                break
            cur = (v["in"], v["done"])
            if cur != last_val:
                last_val, last_progress = cur, time.perf_counter()
            elif time.perf_counter() - last_progress > args.stall_s and v["backlog"] == 0:
                break  # nothing left in flight: the rest was lost
            if time.perf_counter() > deadline:
                problem(f"events: iotfin had not forwarded all {n} events after "
                        f"{args.events_timeout} s (raise --events-timeout)")
                break
            time.sleep(0.02)
        t_end = time.perf_counter()
        v = poll.get()
        cpu1 = {"iotfin_threads": dfx.thread_cpu_s(srv.pid),
                "broker": sum(dfx.cpu_s(b) or 0 for b in srv.broker_pids()),
                "publishers": pubs.cpu_s()}
        for b in pubs.close():
            problem("iotfin publishers: " + b)
        pubs = None
        taken = v["in"] - base["in"]
        fwd = v["done"] - base["done"]
        stored_api = count_stored(api, token, creds, tag)
        bank = check_bank_log(api, dfx.admin_token(srv.data_dir), tag, creds)
        threads = {k: r3(cpu1["iotfin_threads"].get(k, 0) - cpu0["iotfin_threads"].get(k, 0), 2)
                   for k in cpu1["iotfin_threads"]}
        threads = {k: x for k, x in sorted(threads.items(), key=lambda kv: -kv[1]) if x >= 0.01}
        wall = (t_fwd or t_end) - t0
        res = {
            "published": sent,
            "taken_by_hub": int(taken),
            "stored": stored_api,
            "forwarded": int(fwd),
            "lost": sent - stored_api,
            "rejected": int(v["rejected"] - base["rejected"]),
            "seconds_feeding_publishers": r3(t_sent - t0),
            "seconds_to_stored": r3(t_stored - t0) if t_stored else None,
            "seconds_to_forwarded": r3(t_fwd - t0) if t_fwd else None,
            "stored_events_per_s": r3(n / (t_stored - t0), 1) if t_stored else
            r3(stored_api / (t_end - t0), 1),
            "events_per_s": r3(fwd / wall, 1) if wall > 0 else None,
            "complete": t_fwd is not None,
            "peak_forwarder_backlog": int(peak_backlog),
            "bank_log": bank,
            "cpu_s": {"wall_s": r3(t_end - t0, 2), "iotfin_threads": threads,
                      "iotfin_total": r3(sum(threads.values()), 2),
                      "managed_broker": r3(cpu1["broker"] - cpu0["broker"], 2),
                      "publishers": r3(cpu1["publishers"] - cpu0["publishers"], 2)},
            "metrics_samples": poll.samples,
        }
        if stored_api <= 10000 and bank["distinct"] < stored_api:
            problem(f"events: {stored_api} stored but only {bank['distinct']} in the BANK log")
        if not bank["in_order_per_device"]:
            problem("events: BANK received a device's events out of order")
        return res
    finally:
        if pubs:
            pubs.close(timeout=5)
        poll.stop()


def bench_events(args, tmp, srv, api, token, creds):
    mosq = args.mosquitto
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is needed (apt-get install mosquitto-clients)")
    broker = PlainBroker(tmp, mosq)
    log(f"events: plain {mosq} on port {broker.port}; {len(creds)} devices, "
        f"{args.events} events x {args.runs} run(s), windows {args.window_broker or 'none'} "
        f"(broker alone) and {args.window_iotfin or 'none'} (iotfin)")
    runs = []
    try:
        for r in range(args.runs):
            tag = "e" + uuid.uuid4().hex[:10]
            base = events_baseline(args, broker, creds, args.events, args.window_broker,
                                   tag + "b")
            log(f"events run {r + 1} broker alone: {base['received']}/{args.events} in "
                f"{base['seconds']:.2f} s = {base['events_per_s']:.0f}/s")
            io = events_iotfin(args, srv, api, token, creds, args.events, args.window_iotfin, tag)
            ratio = (io["events_per_s"] / base["events_per_s"]
                     if io["events_per_s"] and base["events_per_s"] else None)
            ratio_stored = (io["stored_events_per_s"] / base["events_per_s"]
                            if io["stored_events_per_s"] and base["events_per_s"] else None)
            log(f"events run {r + 1} iotfin: stored {io['stored']}/{args.events} "
                f"({io['stored_events_per_s']}/s), forwarded {io['forwarded']} in "
                f"{io['seconds_to_forwarded']} s = {io['events_per_s']}/s; ratio "
                f"{ratio if ratio is None else round(ratio, 3)}")
            if io["lost"]:
                problem(f"events run {r + 1}: iotfin lost {io['lost']} of {args.events} events "
                        f"(window {args.window_iotfin})")
            runs.append({"run": r + 1, "broker_alone": base, "iotfin": io,
                         "ratio": r3(ratio, 4), "ratio_stored": r3(ratio_stored, 4)})
        burst = None
        if args.burst:
            tag = "x" + uuid.uuid4().hex[:10]
            log(f"events: one unpaced burst of {args.burst} events (loss check)")
            b = events_baseline(args, broker, creds, args.burst, 0, tag + "b")
            io = events_iotfin(args, srv, api, token, creds, args.burst, 0, tag)
            log(f"burst: broker alone received {b['received']}/{args.burst}; iotfin stored "
                f"{io['stored']}/{args.burst}")
            burst = {"events": args.burst, "broker_alone": b, "iotfin": io,
                     "broker_drop_notices_plain": broker.dropped_notices(),
                     "managed_broker_drop_notices": sum(
                         "being dropped" in line for line in srv.stderr_tail(10 ** 7).splitlines())}
            if io["lost"]:
                problem(f"events burst: iotfin lost {io['lost']} of {io['published']} events that "
                        f"its managed broker had acknowledged to the devices (QoS 1) and then "
                        f"dropped for iotfin's subscription ('Outgoing messages are being dropped' "
                        f"notices: {burst['managed_broker_drop_notices']}); mosquitto's default "
                        f"queue limits do the same on the broker alone ({b['lost']} of "
                        f"{b['published']} lost there)")
    finally:
        broker.stop()
    out = {
        "runs": runs,
        "broker_alone_events_per_s": r3(med([x["broker_alone"]["events_per_s"] for x in runs]), 1),
        "iotfin_stored_events_per_s": r3(med([x["iotfin"]["stored_events_per_s"] for x in runs]), 1),
        "iotfin_stored_and_forwarded_events_per_s": r3(
            med([x["iotfin"]["events_per_s"] for x in runs]), 1),
        "ratio": {"median": r3(med([x["ratio"] for x in runs]), 4),
                  "runs": [x["ratio"] for x in runs]},
        "ratio_stored": {"median": r3(med([x["ratio_stored"] for x in runs]), 4),
                         "runs": [x["ratio_stored"] for x in runs]},
        "target_ratio": 0.5,
        "burst": burst,
        "plain_broker_config": open(broker.conf).read().replace(str(broker.port), "$PORT"),
    }
    out["meets_target"] = out["ratio"]["median"] is not None and out["ratio"]["median"] >= 0.5
    return out


# --- 2b. a fleet with the durable PUBACK, beside the disk's limit and the old path -----


def fs_of(path):
    """(mount point, filesystem type, device) holding path, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, typ, dev)
    except OSError:
        pass
    return best


def sync_limit(directory, seconds, size=200):
    """The disk's limit for a durable PUBACK: one writer appending size-byte records to
    a fresh file in `directory` (O_APPEND, the file growing), each write followed by
    fdatasync, as the broker plugin does for every message. The same loop without the
    fdatasync is timed too: an upper bound on what Python adds to each record."""
    path = os.path.join(directory, f"bench-sync-probe-{uuid.uuid4().hex[:8]}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    rec = b"r" * (size - 1) + b"\n"
    try:
        n, t0 = 0, time.perf_counter()
        while True:
            os.write(fd, rec)
            os.fdatasync(fd)
            n += 1
            t = time.perf_counter() - t0
            if t >= seconds:
                break
        m, t1 = 2000, time.perf_counter()
        for _ in range(m):
            os.write(fd, rec)
        t_w = (time.perf_counter() - t1) / m
    finally:
        os.close(fd)
        os.unlink(path)
    return {"appends_per_s": r3(n / t, 1), "us_per_append": r3(t / n * 1e6, 1), "records": n,
            "seconds": r3(t), "record_bytes": size, "write_only_us": r3(t_w * 1e6, 2),
            "write_only_share": r3(t_w / (t / n), 4)}


def sh(cmd, cwd=None, timeout=1800):
    """Runs cmd; returns (exit status, last 1,500 characters of its output)."""
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr)[-1500:]
    except (OSError, subprocess.SubprocessError) as e:
        return -1, str(e)


def old_build(args):
    """iotfin at --old-commit (the path before the spool), built in a git worktree
    outside the repository (--old-dir) and kept there: a stamp names the commit
    built, and a later run for the same commit reuses the build. Returns
    {commit, dir, iotfin, plugin, cached, seconds} or {commit?, error}."""
    t0 = time.monotonic()
    d = os.path.realpath(args.old_dir)
    if d == ROOT or d.startswith(ROOT + "/"):
        return {"error": f"--old-dir {d} is inside the repository"}
    rc, sha = sh(["git", "-C", ROOT, "rev-parse", "--verify", args.old_commit + "^{commit}"])
    sha = sha.strip()
    if rc != 0:
        return {"error": f"git rev-parse {args.old_commit}: {sha}"}
    out = {"commit": sha[:7], "subject": run_out(["git", "-C", ROOT, "log", "-1", "--format=%s", sha]),
           "dir": d, "iotfin": os.path.join(d, "build", "iotfin"),
           "plugin": os.path.join(d, "build", "mosquitto_iotfin_auth.so"),
           "commands": [f"git worktree add --detach {d} {sha[:7]}",
                        f"cmake -S {d} -B {d}/build -DCMAKE_BUILD_TYPE=RelWithDebInfo",
                        f"cmake --build {d}/build -j {os.cpu_count()} --target iotfin "
                        "mosquitto_iotfin_auth"]}
    stamp = os.path.join(d, "build", ".bench-commit")
    try:
        with open(stamp) as f:
            cached = f.read().strip() == sha
    except OSError:
        cached = False
    if cached and all(os.access(p, os.X_OK if p == out["iotfin"] else os.R_OK)
                      for p in (out["iotfin"], out["plugin"])):
        out["cached"] = True
        log(f"old path: reusing the build of {sha[:7]} in {d}")
        return out
    log(f"old path: building {sha[:7]} in {d} (cached for later runs)")
    if os.path.exists(os.path.join(d, ".git")):
        steps = [["git", "-C", d, "checkout", "--force", "--detach", sha]]
    elif os.path.exists(d):
        return {**out, "error": f"{d} exists and is not a git worktree; remove it or pass --old-dir"}
    else:
        steps = [["git", "-C", ROOT, "worktree", "prune"],
                 ["git", "-C", ROOT, "worktree", "add", "--detach", d, sha]]
    steps += [["cmake", "-S", d, "-B", os.path.join(d, "build"), "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
              ["cmake", "--build", os.path.join(d, "build"), "-j", str(os.cpu_count()),
               "--target", "iotfin", "mosquitto_iotfin_auth"]]
    for cmd in steps:
        log(f"old path: {' '.join(cmd[:4])} ...")  # the build alone can take minutes
        rc, text = sh(cmd)
        if rc != 0:
            return {**out, "error": f"`{' '.join(cmd)}` failed ({rc}): {text[-600:]}"}
    with open(stamp, "w") as f:
        f.write(sha + "\n")
    out["cached"] = False
    out["seconds"] = r3(time.monotonic() - t0, 1)
    return out


class FleetSide:
    """One iotfin (this build, or the old one) with K provisioned publishing devices."""

    def __init__(self, args, tmp, name, binary=None, root=ROOT, extra_env=None):
        data_dir = os.path.join(tmp, name)
        os.makedirs(data_dir, exist_ok=True)
        self.srv = track(dfx.start(binary or args.iotfin_bin, data_dir, root,
                                   os.path.join(tmp, name + ".stderr"), extra_env))
        self.api = dfx.Api(self.srv.http)
        self.token, _ = iotfin_fixture.provision(self.srv.http, data_dir)
        admin = dfx.admin_token(data_dir)
        ids = dfx.provision_devices(self.api, admin, self.token, args.fleet_devices)
        self.creds = dfx.credentials(self.api, self.token, ids)
        log(f"fleet: {name}: {len(self.creds)} devices active with credentials")

    def run(self, args, n, tag):
        return events_iotfin(args, self.srv, self.api, self.token, self.creds, n, 0, tag)

    def close(self):
        self.api.close()
        res = stop_server(self.srv)
        if res[1] != 0:
            problem(f"fleet: iotfin exit status {res[1]} after SIGTERM")


def ratio(a, b):
    return r3(a / b, 4) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def bench_fleet(args, tmp):
    """Issues #10 and #14: K devices at QoS 1 into iotfin with the durable PUBACK,
    beside the disk's one-record durable append rate (same folder as the data dir),
    the bare broker, and iotfin before the spool (the old path), in one run."""
    k, n = args.fleet_devices, args.fleet_events
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is needed (apt-get install mosquitto-clients)")
    old = old_build(args) if args.old_commit else {"error": "skipped (--old-commit '')"}
    if "error" in old:
        problem(f"fleet: the old path could not be built: {old['error']}")
    sides = {}
    broker = None
    runs = []
    try:
        log(f"fleet: starting iotfin (this build) and provisioning {k} devices")
        sides["durable"] = FleetSide(args, tmp, "fleet-durable")
        if "error" not in old:
            log(f"fleet: starting iotfin {old['commit']} (old path) and provisioning {k} devices")
            try:
                sides["old"] = FleetSide(args, tmp, "fleet-old", old["iotfin"], old["dir"],
                                         {"IOTFIN_BROKER_PLUGIN": old["plugin"]})
            except iotfin_fixture.IotfinError as e:
                old["error"] = f"it built, but did not run: {e}"
                problem(f"fleet: old path: {old['error']}")
        broker = PlainBroker(tmp, args.mosquitto)
        data_dir = sides["durable"].srv.data_dir
        for r in range(args.runs):
            tag = "f" + uuid.uuid4().hex[:10]
            lim0 = sync_limit(data_dir, args.sync_s)
            log(f"fleet run {r + 1}: disk limit {lim0['appends_per_s']:.0f} appends/s "
                f"({lim0['us_per_append']:.0f} us each; the loop without fdatasync "
                f"{lim0['write_only_us']:.1f} us)")
            base = events_baseline(args, broker, sides["durable"].creds, n, args.window_broker,
                                   tag + "b")
            log(f"fleet run {r + 1}: bare broker {base['received']}/{n} = "
                f"{base['events_per_s']:.0f}/s")
            res = {}
            for name, side in sides.items():
                res[name] = side.run(args, n, tag + name[0])
                x = res[name]
                log(f"fleet run {r + 1}: iotfin {name}: stored {x['stored']}/{n} = "
                    f"{x['stored_events_per_s']}/s, forwarded {x['forwarded']} = "
                    f"{x['events_per_s']}/s")
                if x["lost"]:
                    problem(f"fleet run {r + 1}: iotfin ({name}) lost {x['lost']} of {n} events")
            lim1 = sync_limit(data_dir, args.sync_s)
            limit = (lim0["appends_per_s"] + lim1["appends_per_s"]) / 2
            d, o = res["durable"], res.get("old")
            run = {"run": r + 1, "disk_limit_before": lim0, "disk_limit_after": lim1,
                   "disk_limit_appends_per_s": r3(limit, 1), "bare_broker": base,
                   "durable": d, "old": o,
                   "ratios": {
                       "stored_over_limit": ratio(d["stored_events_per_s"], limit),
                       "forwarded_over_limit": ratio(d["events_per_s"], limit),
                       "stored_over_bare": ratio(d["stored_events_per_s"], base["events_per_s"]),
                       "forwarded_over_bare": ratio(d["events_per_s"], base["events_per_s"]),
                       "limit_over_bare": ratio(limit, base["events_per_s"]),
                   }}
            if o:
                run["ratios"].update({
                    "durable_over_old_stored": ratio(d["stored_events_per_s"],
                                                     o["stored_events_per_s"]),
                    "durable_over_old_forwarded": ratio(d["events_per_s"], o["events_per_s"]),
                    "old_stored_over_limit": ratio(o["stored_events_per_s"], limit),
                    "old_stored_over_bare": ratio(o["stored_events_per_s"], base["events_per_s"]),
                    "old_forwarded_over_bare": ratio(o["events_per_s"], base["events_per_s"]),
                })
            log(f"fleet run {r + 1}: limit {limit:.0f}/s; stored/limit "
                f"{run['ratios']['stored_over_limit']}, forwarded/limit "
                f"{run['ratios']['forwarded_over_limit']}, durable/old stored "
                f"{run['ratios'].get('durable_over_old_stored')}")
            runs.append(run)
    finally:
        if broker:
            broker.stop()
        for side in sides.values():
            side.close()

    def m(f):
        return r3(med([f(x) for x in runs]), 4)

    out = {
        "devices": k, "events": n, "runs": runs,
        "bank": "iotfin's partner mock (IOTFIN_MOCK=on, /mock/bank inside the same iotfin "
                "process): every forwarded event is one POST over loopback to iotfin itself",
        "disk": dict(zip(("mount", "fs", "device"), fs_of(tmp))),
        "old_build": old,
        "disk_limit_appends_per_s": m(lambda x: x["disk_limit_appends_per_s"]),
        "disk_write_only_share": m(lambda x: x["disk_limit_before"]["write_only_share"]),
        "bare_broker_events_per_s": m(lambda x: x["bare_broker"]["events_per_s"]),
        "durable_stored_events_per_s": m(lambda x: x["durable"]["stored_events_per_s"]),
        "durable_forwarded_events_per_s": m(lambda x: x["durable"]["events_per_s"]),
        "old_stored_events_per_s": m(lambda x: (x["old"] or {}).get("stored_events_per_s")),
        "old_forwarded_events_per_s": m(lambda x: (x["old"] or {}).get("events_per_s")),
        "ratios": {key: m(lambda x, key=key: x["ratios"].get(key))
                   for key in (runs[0]["ratios"] if runs else {})},
        "lost": {"bare_broker": sum(x["bare_broker"]["lost"] for x in runs),
                 "durable": sum(x["durable"]["lost"] for x in runs),
                 "old": sum((x["old"] or {}).get("lost", 0) for x in runs)},
        "targets": {"stored_over_limit": 0.8, "forwarded_over_limit": 0.5},
    }
    rt = out["ratios"]
    out["meets_stored_target"] = (rt.get("stored_over_limit") or 0) >= 0.8
    out["meets_forwarded_target"] = (rt.get("forwarded_over_limit") or 0) >= 0.5
    return out


# --- 3. start and stop ------------------------------------------------------------------


def bench_start_stop(args, tmp, loaded=None):
    log(f"start/stop: {args.starts} fresh starts, {args.starts} restarts")
    fresh, restart, loaded_runs = [], [], []

    def one(kind, data_dir, into):
        srv = start_server(args, tmp, f"ss-{kind}-{len(into)}", data_dir)
        ready = srv.ready_s
        brokers = srv.broker_pids()
        time.sleep(random.uniform(0.2, 0.5))  # no fixed phase against periodic threads
        stop_s, code, gone = stop_server(srv)
        if code != 0:
            problem(f"start/stop: iotfin exit status {code} after SIGTERM ({kind})")
        if not brokers or not gone:
            problem(f"start/stop: managed broker {'missing' if not brokers else 'still running'} "
                    f"({kind})")
        into.append({"ready_ms": r3(ready * 1e3, 2),
                     "stop_ms": r3(stop_s * 1e3, 2) if stop_s else None, "exit": code})

    first_dir = None
    for i in range(args.starts):
        d = os.path.join(tmp, f"ss-fresh-data-{i}")
        first_dir = first_dir or d
        one("fresh", d, fresh)
    for i in range(args.starts):
        one("restart", first_dir, restart)
    if loaded:
        for i in range(args.starts):
            one("loaded", loaded, loaded_runs)

    def summary(xs):
        return {"ready_ms_median": r3(med([x["ready_ms"] for x in xs]), 2),
                "ready_ms_max": max(x["ready_ms"] for x in xs),
                "stop_ms_median": r3(med([x["stop_ms"] for x in xs]), 2),
                "stop_ms_max": max((x["stop_ms"] for x in xs if x["stop_ms"]), default=None),
                "runs": xs}

    out = {"fresh": summary(fresh), "restart": summary(restart), "target_ready_ms": 300}
    if loaded_runs:
        out["restart_loaded"] = summary(loaded_runs)
    out["meets_target"] = all(v["ready_ms_median"] < 100 for k, v in out.items()
                              if isinstance(v, dict) and "ready_ms_median" in v)
    return out


# --- 4. memory ----------------------------------------------------------------------


class DevicePool:
    """Many paho clients in one thread: a selector over their sockets and paho's
    loop_read/loop_write/loop_misc (no thread, no socket pair per client)."""

    def __init__(self, host, port, creds, keepalive=60):
        self.host, self.port, self.keepalive = host, port, keepalive
        self.creds = creds
        self.sel = selectors.DefaultSelector()
        self.clients = []
        self.connack = {}
        self.suback = {}
        self.closed = 0
        self.last_misc = time.monotonic()

    def on_connect(self, c, dev, flags, rc, props=None):
        self.connack[dev] = rc.value if hasattr(rc, "value") else int(rc)
        if self.connack[dev] == 0:
            c.subscribe(f"devices/{dev}/commands", qos=1)

    def on_subscribe(self, c, dev, mid, rcs, props=None):
        self.suback[dev] = rcs[0].value if hasattr(rcs[0], "value") else int(rcs[0])

    def service(self, timeout):
        for c in self.clients:
            if c.want_write():
                c.loop_write()
        for key, _ in self.sel.select(timeout):
            c = key.data
            if c.loop_read() != 0:
                try:
                    self.sel.unregister(key.fileobj)
                except (KeyError, ValueError):
                    pass
                self.closed += 1
        if time.monotonic() - self.last_misc > 1:
            self.last_misc = time.monotonic()
            for c in self.clients:
                c.loop_misc()

    def connect_all(self, timeout, batch=64):
        pending = collections.deque(self.creds)
        deadline = time.monotonic() + timeout
        while (pending or len(self.suback) + self.refused() + self.closed < len(self.creds)) \
                and time.monotonic() < deadline:
            while pending and len(self.clients) - len(self.connack) < batch:
                cr = pending.popleft()
                c = mqtt.Client(client_id=cr["client_id"], userdata=cr["client_id"],
                                protocol=mqtt.MQTTv5)
                c.username_pw_set(cr["username"], cr["password"])
                c.on_connect = self.on_connect
                c.on_subscribe = self.on_subscribe
                c.connect(self.host, self.port, keepalive=self.keepalive)
                self.sel.register(c.socket(), selectors.EVENT_READ, c)
                self.clients.append(c)
            self.service(0.01)
        return len(self.suback)

    def refused(self):
        return sum(1 for v in self.connack.values() if v != 0)

    def close(self):
        for c in self.clients:
            try:
                c.disconnect()
                c.loop_write()
            except Exception:  # noqa: BLE001
                pass
            s = c.socket()
            if s:
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
        self.sel.close()


def rss(srv):
    brokers = srv.broker_pids()
    io = dfx.rss_kib(srv.pid)
    br = sum(dfx.rss_kib(b) or 0 for b in brokers)
    return {"iotfin_kib": io, "broker_kib": br, "total_kib": (io or 0) + br,
            "total_mib": r3(((io or 0) + br) / 1024, 1),
            "broker_processes": [dfx.comm(b) for b in brokers]}


def per_device(before, after, n):
    """KiB per device of iotfin, of its broker and of both, from two rss() readings."""
    if not n:
        return {}
    return {k: r3(((after[k] or 0) - (before[k] or 0)) / n, 2)
            for k in ("iotfin_kib", "broker_kib", "total_kib")}


def bench_memory(args, tmp, n=None, loadgen=None):
    """VmRSS idle, with n devices provisioned, and with all n connected: one paho client
    each (DevicePool), or with loadgen (build/bench_fleet) one libmosquitto connection
    each from one C process, which then also sends every device's `ping` request."""
    n = n or args.mem_devices
    name = "connected" if loadgen else "memory"
    log(f"{name}: fresh iotfin; idle RSS, then {n} devices provisioned and connected")
    srv = start_server(args, tmp, name)
    api = dfx.Api(srv.http)
    try:
        time.sleep(args.idle_s)
        idle = rss(srv)
        token, _ = iotfin_fixture.provision(srv.http, srv.data_dir)
        admin = dfx.admin_token(srv.data_dir)
        t0 = time.monotonic()
        workers = 8 if n >= 2000 else 1
        ids = dfx.provision_devices(api, admin, token, n, progress=log, workers=workers,
                                    timeout=max(300, n // 10))
        t_prov = time.monotonic() - t0
        creds = dfx.credentials(api, token, ids, workers=workers)
        t_cred = time.monotonic() - t0 - t_prov
        log(f"{name}: {n} devices active in {t_prov:.1f} s, credentials in {t_cred:.1f} s")
        if not wait_until(lambda: api.metrics().get(
                'iotfin_queue_messages{queue="device-mail",state="ready"}', 0) == 0, 120, 0.2):
            problem(f"{name}: device-mail queue did not drain")
        time.sleep(args.idle_s)
        provisioned = rss(srv)
        if loadgen:
            return connected_fleet(args, tmp, srv, api, creds, loadgen, idle, provisioned,
                                   {"provision": r3(t_prov, 2), "credentials": r3(t_cred, 2)})
        pool = DevicePool(srv.mqtt_host, srv.mqtt_port, creds)
        t0 = time.monotonic()
        subscribed = pool.connect_all(timeout=120)
        t_conn = time.monotonic() - t0
        ok = sum(1 for v in pool.connack.values() if v == 0)
        if ok != n or subscribed != n:
            problem(f"memory: {ok} of {n} devices got CONNACK 0, {subscribed} SUBACKs "
                    f"({pool.refused()} refused, {pool.closed} closed)")
        online_key = "iotfin_devices_online"

        def all_online():
            pool.service(0.01)
            return api.metrics().get(online_key, 0) >= n
        t0 = time.monotonic()
        online_ok = wait_until(all_online, 30, 0.05)
        t_online = time.monotonic() - t0
        if not online_ok:
            problem(f"memory: iotfin shows {api.metrics().get(online_key)} of {n} devices online")
        end = time.monotonic() + args.idle_s
        while time.monotonic() < end:
            pool.service(0.05)
        connected = rss(srv)
        log(f"memory: idle {idle['total_mib']} MiB, provisioned {provisioned['total_mib']} MiB, "
            f"{ok} connected {connected['total_mib']} MiB")
        stop_s, code, gone = stop_server(srv)
        pool.close()
        if code != 0:
            problem(f"memory: iotfin exit status {code} after SIGTERM with {n} devices connected")
        per_dev = (connected["total_kib"] - provisioned["total_kib"]) / n if n else None
        return {
            "devices": n, "connack_ok": ok, "subscribed": subscribed,
            "online_seen_by_iotfin": online_ok,
            "seconds": {"provision": r3(t_prov, 2), "credentials": r3(t_cred, 2),
                        "connect_and_subscribe": r3(t_conn, 2), "until_all_online": r3(t_online, 2)},
            "idle": idle, "provisioned": provisioned, "connected": connected,
            "kib_per_connected_device": r3(per_dev, 2),
            "kib_per_connected_device_by_process": per_device(provisioned, connected, n),
            "stop_with_devices_connected_ms": r3(stop_s * 1e3, 1) if stop_s else None,
        }
    finally:
        api.close()
        if srv in started:
            stop_server(srv)


def connected_fleet(args, tmp, srv, api, creds, loadgen, idle, provisioned, seconds):
    """Issue #14, connected devices: every device connected at once by build/bench_fleet
    (one poll loop per process; as many processes as the hard open-file limit needs,
    three descriptors a device), iotfin's and its broker's VmRSS with all of them
    connected, then one `ping` request per device (CONTRACT section 5), every answer
    counted and timed. Returns the memory section's figures plus the ping's."""
    n = len(creds)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_proc = n if hard == resource.RLIM_INFINITY else max(1, (hard - 64) // 3)
    procs = -(-n // per_proc)
    window = max(1, args.conn_window // procs)  # the same window in all
    gens = []
    for k in range(procs):
        path = os.path.join(tmp, f"fleet-credentials-{k}.txt")
        with open(path, "w") as f:
            for c in creds[k::procs]:
                f.write(f"{c['client_id']} {c['username']} {c['password']}\n")
        cmd = [loadgen, srv.mqtt_host, str(srv.mqtt_port), path, str(window)]
        gens.append(track(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True, preexec_fn=_die_with_parent)))

    def phase(want):
        out = []
        for gen in gens:
            line = gen.stdout.readline()
            if not line:
                raise iotfin_fixture.IotfinError(f"connected: bench_fleet ended before {want} "
                                                 f"(exit {gen.wait()})")
            d = json.loads(line)
            if d.get("phase") != want:
                raise iotfin_fixture.IotfinError(f"connected: bench_fleet said {line.strip()[:300]}")
            out.append(d)
        return out

    def tell(word):
        for gen in gens:
            gen.stdin.write(word + "\n")
            gen.stdin.flush()

    parts = phase("connected")
    conn = {k: sum(p[k] for p in parts) for k in ("subscribed", "refused", "connect_errors",
                                                   "closed")}
    conn["connect_s"] = max(p["connect_s"] for p in parts)
    log(f"connected: {conn['subscribed']} of {n} connected and subscribed in "
        f"{conn['connect_s']:.1f} s by {procs} bench_fleet process(es) ({conn['refused']} "
        f"refused, {conn['closed']} closed)")
    if conn["subscribed"] != n:
        problem(f"connected: {conn['subscribed']} of {n} devices connected and subscribed "
                f"({conn['refused']} refused, {conn['connect_errors']} connect errors, "
                f"{conn['closed']} closed); broker log: {srv.stderr_tail(400)!r}")
    online_key = "iotfin_devices_online"
    t0 = time.monotonic()
    online_ok = wait_until(lambda: api.metrics().get(online_key, 0) >= conn["subscribed"], 60, 0.2)
    t_online = time.monotonic() - t0
    if not online_ok:
        problem(f"connected: iotfin shows {api.metrics().get(online_key)} of "
                f"{conn['subscribed']} devices online")
    time.sleep(args.idle_s)
    connected = rss(srv)
    log(f"connected: idle {idle['total_mib']} MiB, provisioned {provisioned['total_mib']} MiB, "
        f"{conn['subscribed']} connected {connected['total_mib']} MiB")
    tell("ping")
    parts = phase("answered")
    lat = sorted(x for p in parts for x in p["latencies_ms"])
    ping = {k: sum(p[k] for p in parts) for k in ("sent", "send_errors", "answered_ok",
                                                   "answered_error", "still_connected")}
    ping.update({"seconds": max(p["seconds"] for p in parts), "p50_ms": pct(lat, 50),
                 "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                 "max_ms": lat[-1] if lat else None})
    after_ping = rss(srv)
    log(f"connected: {ping['answered_ok']} of {n} pings answered ok ({ping['answered_error']} "
        f"errors) in {ping['seconds']:.1f} s, p50 {fmt(ping['p50_ms'])} ms p99 "
        f"{fmt(ping['p99_ms'])} ms; {ping['still_connected']} still connected")
    if ping["answered_ok"] != n:
        problem(f"connected: {ping['answered_ok']} of {n} devices answered ok "
                f"({ping['answered_error']} error answers, {ping['sent']} sent)")
    stop_s, code, gone = stop_server(srv)  # with every device still connected
    tell("close")
    for gen in gens:
        try:
            gen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        started.remove(gen)
    if code != 0:
        problem(f"connected: iotfin exit status {code} after SIGTERM with {n} devices connected")
    seconds.update({"connect_and_subscribe": conn["connect_s"], "until_all_online": r3(t_online, 2),
                    "pings": ping["seconds"]})
    per = per_device(provisioned, connected, n)
    return {
        "devices": n, "connack_ok": n - conn["refused"] - conn["connect_errors"],
        "subscribed": conn["subscribed"], "online_seen_by_iotfin": online_ok,
        "seconds": seconds, "idle": idle, "provisioned": provisioned, "connected": connected,
        "after_pings": after_ping,
        "kib_per_connected_device": per.get("total_kib"),
        "kib_per_connected_device_by_process": per,
        "ping": {k: ping[k] for k in ("sent", "answered_ok", "answered_error", "still_connected",
                                      "seconds", "p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "load_generator": {"command": " ".join([rel(loadgen), "HOST", "PORT", "CREDENTIALS",
                                                str(window)]),
                           "processes": procs, "window": window * procs,
                           "open_file_hard_limit": None if hard == resource.RLIM_INFINITY
                           else hard},
        "target_iotfin_kib_per_device": 2,
        "meets_target": (per.get("iotfin_kib") is not None and per["iotfin_kib"] < 2
                         and ping["answered_ok"] == n),
        "stop_with_devices_connected_ms": r3(stop_s * 1e3, 1) if stop_s else None,
    }


# --- report ---------------------------------------------------------------------------


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1048576:.1f} GiB"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "os": f"{platform.system()} {platform.release()}",
            "distribution": run_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"])}


def versions(args):
    mq = run_out([args.mosquitto, "-h"]).splitlines()
    pub = run_out(["mosquitto_pub", "--help"]).splitlines()
    commit = run_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?"
    if run_out(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "plugins"]):
        commit += " (src or plugins modified)"
    try:
        built = datetime.datetime.fromtimestamp(os.path.getmtime(args.iotfin_bin),
                                                datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OSError:
        built = "?"
    return {"iotfin": (run_out([args.iotfin_bin, "--version"]).splitlines() or ["?"])[0],
            "iotfin_commit": commit, "iotfin_binary_mtime": built,
            "mosquitto": mq[0] if mq else "?",
            "mosquitto_clients": pub[1].rstrip(".") if len(pub) > 1 else "?",
            "paho_mqtt": paho.mqtt.__version__, "python": platform.python_version()}


def fmt(v, f=".2f", unit=""):
    return (format(v, f) + unit) if isinstance(v, (int, float)) else "n/a"


def fleet_markdown(fl, doc):
    st, rt = doc["settings"], fl["ratios"]
    ob = fl["old_build"]
    have_old = "error" not in ob and fl["old_stored_events_per_s"] is not None
    disk = fl["disk"]
    out = ["### A fleet at QoS 1 with the durable PUBACK: what it costs", "",
           f"{fl['devices']} devices, each its own `mosquitto_pub -l` (MQTT v5, QoS 1, its "
           f"device credentials), publish {fl['events']} events in all per run, unpaced "
           f"({fl['events'] // max(fl['devices'], 1)} each). In the same run, one after another: "
           "the disk's limit, the bare broker, iotfin as built (every device event appended to "
           "the spool and fdatasynced before PUBACK), and iotfin "
           + (f"at {ob['commit']} (\"{ob.get('subject', '')}\", the last commit before the spool) "
              if ob.get("commit") else "before the spool ")
           + "with the same devices and messages. *Stored*: every event in the database "
           "(`GET /v1/devices/{id}/events` counts them afterwards); *forwarded*: every one also "
           f"POSTed to BANK, here {fl['bank']}.", "",
           "The disk's limit: one writer appends "
           f"{fl['runs'][0]['disk_limit_before']['record_bytes'] if fl['runs'] else 200}-byte "
           "records to a fresh file in the data dir's folder, each `write` followed by "
           f"`fdatasync` (Python `os.write` + `os.fdatasync`, {st['sync_s']} s before and "
           f"{st['sync_s']} s after the other measurements; their mean). Filesystem: "
           f"{disk['fs']} on {disk['device']} (mounted at {disk['mount']}). The same loop without "
           f"`fdatasync` takes {fmt((fl['disk_write_only_share'] or 0) * 100, '.1f')}% of a "
           "synced append, an upper bound on what Python adds. Bare broker: the same mosquitto "
           "binary, no plugin, no persistence, the same publishers, one `mosquitto_sub` (QoS 1), "
           f"at most {st['window_broker']} events published and not yet received (else it drops "
           "QoS 1 messages it acknowledged).", "",
           "| path | events/s | ÷ disk limit | ÷ bare broker |", "|---|---|---|---|",
           f"| disk limit: write + fdatasync of one record, one writer | "
           f"{fmt(fl['disk_limit_appends_per_s'], '.0f')} | 1 | {fmt(rt.get('limit_over_bare'), '.3f')} |",
           f"| bare broker (mosquitto alone, not durable) | {fmt(fl['bare_broker_events_per_s'], '.0f')}"
           f" | | 1 |",
           f"| iotfin, durable PUBACK: stored | {fmt(fl['durable_stored_events_per_s'], '.0f')} | "
           f"{fmt(rt.get('stored_over_limit'), '.2f')} | {fmt(rt.get('stored_over_bare'), '.3f')} |",
           f"| iotfin, durable PUBACK: stored and forwarded to BANK | "
           f"{fmt(fl['durable_forwarded_events_per_s'], '.0f')} | "
           f"{fmt(rt.get('forwarded_over_limit'), '.2f')} | {fmt(rt.get('forwarded_over_bare'), '.3f')} |"]
    if have_old:
        out += [f"| old path ({ob['commit']}, PUBACK before storing): stored | "
                f"{fmt(fl['old_stored_events_per_s'], '.0f')} | "
                f"{fmt(rt.get('old_stored_over_limit'), '.2f')} | "
                f"{fmt(rt.get('old_stored_over_bare'), '.3f')} |",
                f"| old path: stored and forwarded to BANK | "
                f"{fmt(fl['old_forwarded_events_per_s'], '.0f')} | | "
                f"{fmt(rt.get('old_forwarded_over_bare'), '.3f')} |"]
    out += ["", f"Events lost, all runs: bare broker {fl['lost']['bare_broker']}, iotfin "
                f"{fl['lost']['durable']}" + (f", old path {fl['lost']['old']}" if have_old else "")
            + ". Each ratio is computed within a run, then the median taken.", ""]
    if have_old:
        out += [f"**Cost of durability:** iotfin with the durable PUBACK stores "
                f"{fmt(rt.get('durable_over_old_stored'), '.2f')}× as many events per second as "
                f"the old path ({fmt(fl['durable_stored_events_per_s'], '.0f')} against "
                f"{fmt(fl['old_stored_events_per_s'], '.0f')}), and stores and forwards "
                f"{fmt(rt.get('durable_over_old_forwarded'), '.2f')}× as many.", ""]
    else:
        out += [f"**The old path was not measured:** {ob.get('error', 'no result')}", ""]
    out += [
        "Why: the plugin's message callback is the only code that runs before Mosquitto "
        "answers a QoS 1 PUBLISH, and Mosquitto sends the PUBACK as soon as that callback "
        "returns, in the same call, on its one network thread. So each device event costs one "
        "`write` + `fdatasync` on the broker's thread, and the plugin cannot gather the "
        "messages of many devices into one sync: a callback that returned before its record "
        "was synced would let the PUBACK out first. The broker therefore takes at most one "
        "event per disk flush, whatever the number of devices: the disk limit above is the "
        "ceiling of the whole path, and iotfin's own storing (the hub's lanes, SQLite group "
        "commits on the same disk) runs behind it, in parallel. The old path acknowledged "
        "from memory and was bounded by CPU instead. Raising the ceiling needs group commit "
        "below the PUBACK (a broker that can hold a PUBACK until a shared sync completes), "
        "not more work in the plugin.", ""]
    if fl["runs"]:
        r1 = fl["runs"][0]
        d = r1["durable"]
        out += [f"Run 1, iotfin as built: CPU seconds over {d['cpu_s']['wall_s']} s: "
                + ", ".join(f"{k} {x}" for k, x in list(d["cpu_s"]["iotfin_threads"].items())[:5])
                + f"; managed broker {d['cpu_s']['managed_broker']}; publishers "
                f"{d['cpu_s']['publishers']}. Disk limit before / after: "
                f"{fmt(r1['disk_limit_before']['appends_per_s'], '.0f')} / "
                f"{fmt(r1['disk_limit_after']['appends_per_s'], '.0f')} appends/s.", ""]
    if "error" not in ob:
        out += [f"Old path build ({'reused from an earlier run' if ob.get('cached') else 'built in this run'}):", "",
                "```"] + ob["commands"] + ["```", ""]
    return out


def memory_table(mm):
    """The memory table: idle, provisioned, connected (and after the pings, if any)."""
    out = ["| state | iotfin (MiB) | mosquitto (MiB) | total (MiB) |", "|---|---|---|---|"]
    states = [("idle", "idle after start"),
              ("provisioned", f"{mm['devices']:,} devices provisioned, none connected"),
              ("connected", f"{mm['subscribed']:,} devices connected")]
    if "after_pings" in mm:
        states.append(("after_pings", "the same, after a `ping` from each"))
    for k, name in states:
        x = mm[k]
        out.append(f"| {name} | {fmt((x['iotfin_kib'] or 0) / 1024, '.1f')} | "
                   f"{fmt(x['broker_kib'] / 1024, '.1f')} | {fmt(x['total_mib'], '.1f')} |")
    per = mm.get("kib_per_connected_device_by_process") or {}
    split = (f" (iotfin {fmt(per.get('iotfin_kib'), '.2f')}, mosquitto "
             f"{fmt(per.get('broker_kib'), '.2f')})" if per else "")
    return out + ["", f"VmRSS from /proc. {fmt(mm['kib_per_connected_device'], '.2f')} KiB per "
                      f"connected device{split}, connected against provisioned; SIGTERM → exit "
                      f"with them connected: {fmt(mm['stop_with_devices_connected_ms'], '.0f')} ms.",
                  ""]


def connected_markdown(cf):
    per, pg, sec = cf["kib_per_connected_device_by_process"], cf["ping"], cf["seconds"]
    lg = cf["load_generator"]
    n = cf["devices"]
    return [f"### {n:,} connected devices (issue #14)", "",
            f"A fresh iotfin with its managed broker; {n:,} devices imported (admin import, "
            "1,000 a call), claimed and given credentials over the public API (8 connections), "
            f"then all connected at once by {lg.get('processes', 1)} × "
            f"`{lg['command']}` (bench/bench_fleet.c: one libmosquitto MQTT v5 connection per "
            "device, all of a process's driven by one poll loop; libmosquitto takes three "
            "descriptors a client, so one process holds at most a third of the hard open-file "
            f"limit, here {lg.get('open_file_hard_limit')}; at most "
            f"{lg['window']} CONNACKs outstanding in all), each subscribed to "
            "`devices/<id>/responses/+`. With all of them connected, iotfin's and mosquitto's "
            "VmRSS; then one `ping` request per device (`devices/<id>/requests/ping`, QoS 1, at "
            f"most {lg['window']} unanswered at a time), every answer "
            "counted and timed from publish to the answer on the device's responses topic.", "",
            "| figure | value |", "|---|---|",
            f"| iotfin, KiB per connected device | {fmt(per.get('iotfin_kib'), '.2f')} |",
            f"| mosquitto (managed broker), KiB per connected device | "
            f"{fmt(per.get('broker_kib'), '.2f')} |",
            f"| answered `ok` | {pg['answered_ok']:,} of {n:,} ({pg['answered_error']} error "
            f"answers; {pg['still_connected']:,} still connected after) |",
            f"| ping answer p50 / p90 / p99 / max (ms) | {fmt(pg['p50_ms'])} / {fmt(pg['p90_ms'])} "
            f"/ {fmt(pg['p99_ms'])} / {fmt(pg['max_ms'])} |",
            f"| all pings sent and answered | {fmt(pg['seconds'], '.1f')} s |",
            f"| connect and subscribe {n:,} devices | {fmt(sec['connect_and_subscribe'], '.1f')} s |",
            f"| until iotfin counts them all online | {fmt(sec['until_all_online'], '.1f')} s more |",
            f"| provisioning: import + claim until active / credentials | "
            f"{fmt(sec['provision'], '.1f')} s / {fmt(sec['credentials'], '.1f')} s |", "",
            ] + memory_table(cf) + [
            f"Target (issue #14): iotfin under 2 KiB per connected device and every device "
            f"answered — {'met' if cf['meets_target'] else 'not met'}.", ""]


def markdown(doc):
    m, v, st = doc["machine"], doc["versions"], doc["settings"]
    only_connected = st["sections"] == ["connected"]
    out = ["## Connected devices" if only_connected else "## Devices and MQTT", "",
           f"Written by `bench/device_bench.py` on {doc['date_utc']}; do not edit by hand. "
           f"Each figure is the median of {st['runs']} run(s) on loopback; ratios are computed "
           "within one run, then the median is taken.", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']} "
           f"({m['distribution']}). {v['iotfin']} (commit {v['iotfin_commit']}), {v['mosquitto']}, "
           f"{v['mosquitto_clients']}, "
           f"paho-mqtt {v['paho_mqtt']}, Python {v['python']}.", ""]
    c = doc.get("command_round_trip")
    if c:
        out += ["### Command round trip", "",
                f"`POST /v1/devices/{{id}}/commands` → a paho device (MQTT v5) receives it and "
                f"acks → `GET /v1/devices/{{id}}/commands/{{cid}}` shows `succeeded`; "
                f"{st['commands']} sequential round trips per run after {st['warmup_commands']} "
                "warm-up ones, one keep-alive HTTP connection, GET polled back to back once the "
                "device has acked. The same trips are timed twice: with Python clients (paho, "
                "http.client), then with C clients on both ends (`build/bench_roundtrip`, "
                "bench/bench_roundtrip.c: a libmosquitto device, a raw keep-alive HTTP/1.1 "
                "client), which add far less of their own to each leg.", ""]
        cc = c.get("c_clients")
        if cc:
            out += ["| leg | C clients p50 (ms) | C clients p99 (ms) | Python clients p50 (ms) "
                    "| Python clients p99 (ms) |", "|---|---|---|---|---|"]
        else:
            out += ["| leg | p50 (ms) | p99 (ms) |", "|---|---|---|"]
        for k, name in (("round_trip", "round trip (API → device → ack visible)"),
                        ("api_to_device", "API call → device has it"),
                        ("post", "POST answered (202)"),
                        ("device_to_visible", "device acks → visible over the API")):
            py = f"{fmt(c[k + '_ms']['p50'])} | {fmt(c[k + '_ms']['p99'])}"
            if cc:
                out.append(f"| {name} | {fmt(cc[k + '_ms']['p50'])} | {fmt(cc[k + '_ms']['p99'])} "
                           f"| {py} |")
            else:
                out.append(f"| {name} | {py} |")
        judged = cc or c
        out += ["", f"Target: round trip p50 under 2 ms"
                    f"{' (C clients)' if cc else ''} — "
                    f"{'met' if judged['meets_target'] else 'not met'}.", ""]
        pr = c.get("tcp_nodelay_probe")
        if pr and "round_trip_ms" in pr:
            line = (f"Diagnostic, not a figure of iotfin as built: on an iotfin whose sockets and "
                    f"its broker's get TCP_NODELAY from an LD_PRELOAD shim, the round trip p50 is "
                    f"{fmt(pr['round_trip_ms']['p50'])} ms (API → device "
                    f"{fmt(pr['api_to_device_ms']['p50'])} ms, ack → visible "
                    f"{fmt(pr['device_to_visible_ms']['p50'])} ms).")
            if pr["round_trip_ms"]["p50"] * 2 < c["round_trip_ms"]["p50"]:
                line += (" Without it, each MQTT hop between iotfin and its broker waits for a "
                         "delayed ACK (Nagle's algorithm, about 40 ms on Linux).")
            out += [line, ""]
    e = doc.get("device_events")
    if e:
        r1 = e["runs"][0] if e["runs"] else None
        out += ["### Device events in over MQTT, stored and forwarded", "",
                f"{st['devices']} devices publish {st['events']} events (QoS 1, "
                "`{\"id\",\"type\":\"t\",\"data\":{\"n\"}}` on `devices/<id>/events`) with "
                "`mosquitto_pub -l`; "
                + (f"iotfin at most {st['window_iotfin']}" if st['window_iotfin'] else
                   "iotfin as fast as its broker takes them")
                + (f", the broker alone at most {st['window_broker']}" if st['window_broker'] else
                   ", the broker alone unpaced")
                + " published and not yet taken (mosquitto with its default limits drops QoS 1 "
                "messages its one subscriber cannot take in time). "
                "iotfin: done when every event is stored and POSTed to the BANK mock. Broker "
                "alone: the same mosquitto binary with a plain config (anonymous, no plugin), "
                "the same publishers and messages, one `mosquitto_sub` (QoS 1) on "
                "`devices/+/events`.", "",
                "| measure | broker alone | iotfin | iotfin ÷ broker |", "|---|---|---|---|",
                f"| events/s (stored and forwarded for iotfin) | "
                f"{fmt(e['broker_alone_events_per_s'], '.0f')} | "
                f"{fmt(e['iotfin_stored_and_forwarded_events_per_s'], '.0f')} | "
                f"{fmt(e['ratio']['median'], '.3f')} |",
                f"| events/s stored (iotfin) | | {fmt(e['iotfin_stored_events_per_s'], '.0f')} | "
                f"{fmt(e['ratio_stored']['median'], '.3f')} |",
                f"| events lost, all runs | {sum(x['broker_alone']['lost'] for x in e['runs'])} | "
                f"{sum(x['iotfin']['lost'] for x in e['runs'])} | |",
                ""]
        if r1:
            io = r1["iotfin"]
            out += [f"Run 1: iotfin stored {io['stored']} of {io['published']}, forwarded "
                    f"{io['forwarded']} (BANK log: {io['bank_log']['distinct']} distinct, in "
                    f"order per device: {io['bank_log']['in_order_per_device']}); CPU seconds over "
                    f"{io['cpu_s']['wall_s']} s: " + ", ".join(
                        f"{k} {x}" for k, x in list(io["cpu_s"]["iotfin_threads"].items())[:5])
                    + f"; managed broker {io['cpu_s']['managed_broker']}.", ""]
        out += [f"Target: iotfin at least half of the broker alone — "
                f"{'met' if e['meets_target'] else 'not met'}.", ""]
        b = e.get("burst")
        if b:
            out += [f"Unpaced burst of {b['events']} events (once), each acknowledged to its "
                    f"device at QoS 1: the broker alone delivered {b['broker_alone']['received']} "
                    f"to its subscriber; iotfin stored {b['iotfin']['stored']} (lost "
                    f"{b['iotfin']['lost']}; its broker's 'messages are being dropped' notices: "
                    f"{b['managed_broker_drop_notices']}).", ""]
    fl = doc.get("fleet")
    if fl:
        out += fleet_markdown(fl, doc)
    s = doc.get("start_stop")
    if s:
        out += ["### Start and stop", "",
                "| case | ready (ms, median / max) | SIGTERM → exit (ms, median / max) |",
                "|---|---|---|"]
        for k, name in (("fresh", "fresh data dir"), ("restart", "restart, same data dir"),
                        ("restart_loaded", "restart of the data dir used for the events")):
            if k in s:
                x = s[k]
                out.append(f"| {name} ({len(x['runs'])}×) | {fmt(x['ready_ms_median'], '.1f')} / "
                           f"{fmt(x['ready_ms_max'], '.1f')} | {fmt(x['stop_ms_median'], '.1f')} / "
                           f"{fmt(x['stop_ms_max'], '.1f')} |")
        out += ["", f"Ready measured from exec to the ready line on stdout (managed broker "
                    f"included). Target: under 100 ms — {'met' if s['meets_target'] else 'not met'}.",
                ""]
    mm = doc.get("memory")
    if mm:
        out += ["### Memory", ""] + memory_table(mm)
    cf = doc.get("connected")
    if cf:
        out += connected_markdown(cf)
    if doc["problems"]:
        out += ["Problems in this run:", ""] + [f"- {p}" for p in doc["problems"]] + [""]
    out += ["Command:", "", "```", doc["commands"]["this_script"], "```", ""]
    return "\n".join(out)


# --- main -----------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 run, 100 round trips, 2,000 events, 3 starts, 200 devices")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset of: " + ", ".join(SECTIONS + EXTRA_SECTIONS)
                    + " (default: all but " + ", ".join(EXTRA_SECTIONS) + ")")
    ap.add_argument("--iotfin-bin", default=os.path.join(ROOT, "build", "iotfin"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                    help="broker binary for the broker-alone baseline (iotfin finds its own)")
    ap.add_argument("--commands", type=int, default=300, help="round trips per run (300)")
    ap.add_argument("--warmup-commands", type=int, default=30, help="warm-up round trips (30)")
    ap.add_argument("--nagle-probe", action="store_true",
                    help="also measure the round trip with TCP_NODELAY forced on iotfin's and "
                         "its broker's sockets (an LD_PRELOAD shim built with cc)")
    ap.add_argument("--devices", type=int, default=4, help="publishing devices K (4)")
    ap.add_argument("--events", type=int, default=10000,
                    help="events per run N (10,000; the BANK mock keeps the last 10,000 calls, "
                         "so larger runs are only checked there in part)")
    ap.add_argument("--window-broker", type=int, default=32,
                    help="broker alone: most events published and not yet received "
                         "(32; 0: unpaced burst)")
    ap.add_argument("--window-iotfin", type=int, default=0,
                    help="iotfin: most events published and not yet taken by its hub "
                         "(0: unpaced, the default; 256 kept iotfin before 3bffbe8 lossless)")
    ap.add_argument("--poll-ms", type=float, default=10,
                    help="iotfin /metrics poll interval while feeding (10 ms); the window then "
                         "caps iotfin at window / poll events/s, reported as window_cap")
    ap.add_argument("--burst", type=int, default=10000,
                    help="events in one extra unpaced burst to check for loss (10,000; 0: skip)")
    ap.add_argument("--events-timeout", type=float, default=90,
                    help="give up on one iotfin events run after this many seconds (90)")
    ap.add_argument("--stall-s", type=float, default=3,
                    help="a run ends early when nothing moved for this long (3)")
    ap.add_argument("--fleet-devices", type=int, default=200,
                    help="fleet: devices publishing at QoS 1 at once (200)")
    ap.add_argument("--fleet-events", type=int, default=6000,
                    help="fleet: events per run, spread over the devices (6,000)")
    ap.add_argument("--sync-s", type=float, default=2,
                    help="fleet: seconds of write + fdatasync per disk-limit probe (2)")
    ap.add_argument("--old-commit", default="ad02109",
                    help="fleet: the old path, iotfin before the spool (ad02109; '' skips it)")
    ap.add_argument("--old-dir", default="/tmp/iotfin-old",
                    help="fleet: git worktree outside the repository where the old commit is "
                         "built and kept between runs (/tmp/iotfin-old)")
    ap.add_argument("--starts", type=int, default=5, help="fresh starts and restarts (5 each)")
    ap.add_argument("--mem-devices", type=int, default=1000, help="connected devices (1,000)")
    ap.add_argument("--conn-devices", type=int, default=10000,
                    help="connected: devices held at once by build/bench_fleet (10,000)")
    ap.add_argument("--conn-window", type=int, default=64,
                    help="connected: most CONNACKs, then ping answers, outstanding (64)")
    ap.add_argument("--bench-roundtrip", default=os.path.join(ROOT, "build", "bench_roundtrip"),
                    help="the C round-trip client (bench/bench_roundtrip.c)")
    ap.add_argument("--bench-fleet", default=os.path.join(ROOT, "build", "bench_fleet"),
                    help="connected: the load generator (bench/bench_fleet.c)")
    ap.add_argument("--idle-s", type=float, default=1.0, help="settle time before RSS (1 s)")
    ap.add_argument("--out", help="also write the JSON document to this file")
    ap.add_argument("--markdown", help="also write a Markdown section to this file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    if "--quick" in sys.argv[1:]:  # quick defaults; options given explicitly still win
        ap.set_defaults(runs=1, commands=100, warmup_commands=10, events=2000, burst=3000,
                        starts=3, mem_devices=200, fleet_events=2000, sync_s=1,
                        conn_devices=1000)
    args = ap.parse_args()
    sections = args.sections.split(",")
    if any(s not in SECTIONS + EXTRA_SECTIONS for s in sections):
        ap.error(f"unknown section in --sections {args.sections}")
    args.iotfin_bin = os.path.abspath(args.iotfin_bin)
    if not os.access(args.iotfin_bin, os.X_OK):
        raise SystemExit(f"bench: no {rel(args.iotfin_bin)}; run: make build")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.mem_devices, 2 * args.fleet_devices) + 256
    if soft < need:
        if hard < need and hard != resource.RLIM_INFINITY:
            raise SystemExit(f"bench: open-file limit {hard} is below {need}; lower --mem-devices")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_begin = time.monotonic()
    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="iotfin-device-bench-")
    doc = {"benchmark": "device", "date_utc": datetime.datetime.now(datetime.timezone.utc)
           .strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(), "versions": versions(args)}
    doc["settings"] = {k: getattr(args, k) for k in (
        "runs", "commands", "warmup_commands", "devices", "events", "window_broker",
        "window_iotfin", "burst",
        "events_timeout", "poll_ms", "starts", "mem_devices", "idle_s", "fleet_devices",
        "fleet_events", "sync_s", "old_commit", "old_dir", "conn_devices", "conn_window")}
    doc["settings"]["window_cap_events_per_s"] = (
        round(args.window_iotfin / (args.poll_ms / 1000)) if args.window_iotfin else None)
    doc["settings"]["sections"] = sections
    doc["settings"]["nagle_probe"] = args.nagle_probe
    doc["commands"] = {"this_script": "/usr/bin/python3 " + " ".join(
        [rel(os.path.abspath(sys.argv[0]))] + sys.argv[1:])}
    try:
        loaded_dir = None
        if "commands" in sections or "events" in sections:
            log("starting iotfin and provisioning a user, a device and "
                f"{args.devices} publishing devices")
            srv = start_server(args, tmp, "main")
            doc["commands"]["iotfin"] = (" ".join(
                f"{k}={'$TMP/main' if k == 'IOTFIN_DATA_DIR' else v}"
                for k, v in dfx.iotfin_env(srv.data_dir, ROOT)[1].items())
                + f" {rel(args.iotfin_bin)} serve")
            api = dfx.Api(srv.http)
            token, dev = iotfin_fixture.provision(srv.http, srv.data_dir)
            if "commands" in sections:
                creds = api.expect(201, "POST", f"/v1/devices/{dev}/credentials", token)
                doc["command_round_trip"] = bench_commands(args, srv, api, token, dev, creds)
                if os.path.exists(args.bench_roundtrip):
                    doc["command_round_trip"]["c_clients"] = bench_commands_c(args, srv, token,
                                                                              dev, creds)
                else:
                    problem(f"{rel(args.bench_roundtrip)} is missing: no round trip with C "
                            "clients (cmake --build build --target bench_roundtrip)")
                if args.nagle_probe:
                    doc["command_round_trip"]["tcp_nodelay_probe"] = bench_nagle_probe(args, tmp)
            if "events" in sections:
                admin = dfx.admin_token(srv.data_dir)
                ids = dfx.provision_devices(api, admin, token, args.devices)
                pub_creds = dfx.credentials(api, token, ids)
                doc["device_events"] = bench_events(args, tmp, srv, api, token, pub_creds)
            api.close()
            stop_s, code, gone = stop_server(srv)
            if code != 0:
                problem(f"main iotfin: exit status {code} after SIGTERM")
            doc["stop_after_load_ms"] = r3(stop_s * 1e3, 1) if stop_s else None
            loaded_dir = srv.data_dir
        if "fleet" in sections:
            doc["fleet"] = bench_fleet(args, tmp)
        if "startstop" in sections:
            doc["start_stop"] = bench_start_stop(args, tmp, loaded_dir)
            s = doc["start_stop"]
            log(f"start/stop: ready fresh {s['fresh']['ready_ms_median']} ms, restart "
                f"{s['restart']['ready_ms_median']} ms; stop {s['fresh']['stop_ms_median']} ms")
        if "memory" in sections:
            doc["memory"] = bench_memory(args, tmp)
        if "connected" in sections:
            if not os.access(args.bench_fleet, os.X_OK):
                raise SystemExit(f"bench: no {rel(args.bench_fleet)}; run: make build")
            doc["connected"] = bench_memory(args, tmp, args.conn_devices,
                                            os.path.abspath(args.bench_fleet))
    except iotfin_fixture.IotfinError as e:
        problem(str(e))
    finally:
        stop_all()
    doc["problems"] = problems
    doc["loadavg_1_5_15_before"] = [round(x, 2) for x in load_before]
    doc["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    doc["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    if args.keep_tmp:
        doc["tmp"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(doc))
    log(f"done in {doc['elapsed_s']} s" + (f"; {len(problems)} problem(s)" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
