"""Helpers for bench/device_bench.py on top of bench/iotfin_fixture.py: a timed start
of `iotfin serve` (exec -> ready line, read without polling), a keep-alive HTTP
client, provisioning of N active devices and their MQTT credentials, and /proc
readings (resident memory, CPU time, the managed broker child). Everything goes
through the public contract (CONTRACT.md sections 1, 4, 5). Standard library only.
"""
import http.client
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import uuid

import iotfin_fixture

READY_RE = iotfin_fixture.READY_RE


class Api:
    """One keep-alive HTTP/1.1 connection to iotfin; reconnects once if it was dropped."""

    def __init__(self, base, timeout=30):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.conn = None

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def raw(self, method, path, token=None, body=None, content_type="application/json"):
        headers = {}
        if token:
            headers["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            headers["Content-Type"] = content_type
        elif method in ("POST", "PUT"):
            data = ""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, raw
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method, path, token=None, body=None):
        status, raw = self.raw(method, path, token, body)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def expect(self, want, method, path, token=None, body=None):
        status, b = self.call(method, path, token, body)
        if status != want:
            raise iotfin_fixture.IotfinError(
                f"iotfin {method} {path}: got {status}, want {want}: {str(b)[:300]}")
        return b

    def metrics(self, prefixes=("iotfin_",)):
        """GET /metrics as {'name{labels}': value} for samples starting with a prefix."""
        status, raw = self.raw("GET", "/metrics")
        if status != 200:
            raise iotfin_fixture.IotfinError(f"GET /metrics: {status}")
        out = {}
        for line in raw.decode().splitlines():
            if line.startswith("#") or not line.startswith(prefixes):
                continue
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
        return out


def admin_token(data_dir):
    with open(os.path.join(data_dir, "admin-token")) as f:
        return f.read().strip()


iotfin_env = iotfin_fixture.iotfin_env  # one definition of the benchmark's settings


class Server:
    """A running `iotfin serve`: proc, http, mqtt (host, port), ready_s (exec -> ready line)."""

    def __init__(self, proc, http_url, mqtt_url, ready_s, data_dir, stderr_path):
        self.proc, self.http, self.ready_s = proc, http_url, ready_s
        self.data_dir, self.stderr_path = data_dir, stderr_path
        u = urllib.parse.urlsplit(mqtt_url)
        self.mqtt_url, self.mqtt_host, self.mqtt_port = mqtt_url, u.hostname, u.port

    @property
    def pid(self):
        return self.proc.pid

    def broker_pids(self):
        return children(self.proc.pid)

    def stop(self, timeout=20):
        """SIGTERM; returns (seconds to exit, exit status, broker child gone)."""
        if self.proc.poll() is not None:
            return None, self.proc.returncode, True
        brokers = self.broker_pids()
        t0 = time.perf_counter()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, "killed after %ss" % timeout, not any(alive(p) for p in brokers)
        dt = time.perf_counter() - t0
        deadline = time.monotonic() + 2
        while any(alive(p) for p in brokers) and time.monotonic() < deadline:
            time.sleep(0.01)
        return dt, self.proc.returncode, not any(alive(p) for p in brokers)

    def stderr_tail(self, n=3000):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


def start(binary, data_dir, root, stderr_path, extra_env=None, ready_timeout=30):
    """Starts `iotfin serve` and times exec -> ready line by blocking on its stdout
    (no polling interval in the figure). Standard output keeps being drained."""
    env, _ = iotfin_env(data_dir, root, extra_env)
    err = open(stderr_path, "ab")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "serve"], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=err)
    err.close()
    timer = threading.Timer(ready_timeout, p.kill)
    timer.start()
    m = None
    try:
        for line in p.stdout:
            m = READY_RE.search(line.decode(errors="replace"))
            if m:
                break
    finally:
        timer.cancel()
    ready = time.perf_counter() - t0
    if not m:
        p.wait()
        raise iotfin_fixture.IotfinError(
            f"iotfin printed no ready line (exit {p.returncode}); see {stderr_path}")

    def drain():
        for _ in p.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return Server(p, m.group("http"), m.group("mqtt"), ready, data_dir, stderr_path)


def _parallel(api, workers, fn, items):
    """[fn(api, item)] in order; with workers > 1 each thread has its own connection
    (the server's group commit then serves several writes per sync)."""
    if workers <= 1 or len(items) < 2 * workers:
        return [fn(api, x) for x in items]
    import concurrent.futures
    local = threading.local()
    conns = []

    def one(x):
        if not hasattr(local, "api"):
            local.api = Api(f"http://{api.host}:{api.port}")
            conns.append(local.api)
        return fn(local.api, x)

    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            return list(ex.map(one, items))
    finally:
        for c in conns:
            c.close()


def provision_devices(api, admin, token, n, timeout=300, progress=None, workers=1):
    """Imports n serials in one admin call (several if the body would pass 64 KiB),
    claims each as the user (over `workers` connections), waits until all are active.
    Returns their ids."""
    tag = uuid.uuid4().hex[:8].upper()
    serials = [f"B{tag}-{i:06d}" for i in range(n)]
    for i in range(0, n, 1000):
        chunk = serials[i:i + 1000]
        r = api.expect(200, "POST", "/v1/admin/devices/import", admin,
                       {"devices": [{"serial": s, "model": "bench-1"} for s in chunk]})
        if r.get("imported") != len(chunk):
            raise iotfin_fixture.IotfinError(f"device import: {r}")
    ids = _parallel(api, workers, lambda a, s: a.expect(202, "POST", "/v1/devices", token,
                                                         {"serial": s})["id"], serials)
    if progress:
        progress(f"{n} device(s) claimed; waiting until active")
    want = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        active, failed, cursor = set(), set(), None
        while True:
            path = "/v1/devices?limit=200" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            page = api.expect(200, "GET", path, token)
            for d in page["items"]:
                if d["id"] in want:
                    if d["status"] == "active":
                        active.add(d["id"])
                    elif d["status"] == "failed":
                        failed.add(d["id"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        if failed:
            raise iotfin_fixture.IotfinError(f"{len(failed)} device(s) failed to activate")
        if len(active) == n:
            return ids
        if time.monotonic() > deadline:
            raise iotfin_fixture.IotfinError(
                f"only {len(active)} of {n} devices active after {timeout} s")
        if progress and n >= 2000:
            progress(f"{len(active)} of {n} devices active")
        time.sleep(0.25 if n < 2000 else 2)


def credentials(api, token, ids, workers=1):
    """POST /v1/devices/{id}/credentials for each id -> list of credential objects."""
    return _parallel(api, workers, lambda a, i: a.expect(
        201, "POST", f"/v1/devices/{i}/credentials", token), ids)


# --- /proc --------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid):
    """Direct children of pid, from /proc/<pid>/task/*/children (any thread may fork)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return sorted(set(out))


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cpu_s(pid):
    """utime + stime of a whole process, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_s(pid):
    """{thread name: utime + stime seconds} summed over threads of the same name."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
            name = s[s.index("(") + 1:s.rindex(")")]
            fields = s.rsplit(")", 1)[1].split()
            name = re.sub(r"[-_]?\d+$", "", name) or name
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, ValueError, IndexError):
            pass
    return out
