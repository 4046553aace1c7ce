"""Starts an iotfin for bench/http_bench.py and gives it what the benchmark needs:
one approved user with a user-tier token, and one active device that user owns.
Everything goes through the public contract (CONTRACT.md sections 1, 3, 4): the
ready line, the admin token file, anonymous session -> registration -> (KYC at the
partner mock) -> user session, device import -> claim -> (SUPPLIER at the mock) ->
active. Standard library only, so /usr/bin/python3 runs it as is.
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

READY_RE = re.compile(r"iotfin ready http=(?P<http>http://\S+) mqtt=(?P<mqtt>mqtt://\S+)")
# Variables that locate helper programs pass through; other IOTFIN_* of the caller do not.
PASSTHROUGH = {"IOTFIN_MOSQUITTO", "IOTFIN_BROKER_PLUGIN"}
PASSWORD = "bench-password-0123456789"


class IotfinError(RuntimeError):
    pass


def _call(base, method, path, token=None, body=None, timeout=10):
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {}
    data = None
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    elif method == "POST":
        data = ""
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
    finally:
        conn.close()
    try:
        return r.status, json.loads(raw) if raw else None
    except ValueError:
        return r.status, raw.decode(errors="replace")


def _expect(want, res, what):
    status, body = res
    if status != want:
        raise IotfinError(f"iotfin {what}: got {status}, want {want}: {str(body)[:300]}")
    return body


def _poll(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return
        if time.monotonic() >= deadline:
            raise IotfinError(f"iotfin {what}: not done within {timeout} s")
        time.sleep(0.05)


def iotfin_env(data_dir, root, extra_env=None):
    """The environment of a benchmark iotfin: (full env, the IOTFIN_* settings shown)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTFIN_") or k in PASSTHROUGH}
    settings = {
        "IOTFIN_DATA_DIR": data_dir,
        "IOTFIN_LISTEN": "127.0.0.1:0",
        "IOTFIN_MQTT_LISTEN": "127.0.0.1:0",
        # The anonymous-session route is rate limited per client address (60/min by
        # default); the benchmark drives it from one address, so lift it to the maximum.
        "IOTFIN_AUTH_RATE": "1000000",
        # Tokens must outlive the run.
        "IOTFIN_ACCESS_TTL_S": "3600",
    }
    mocks = os.path.join(root, "mocks")
    if os.path.isdir(mocks):
        settings["IOTFIN_MOCK_DIR"] = mocks
    settings.update(extra_env or {})
    env.update(settings)
    return env, settings


def start(binary, data_dir, root, stderr_path, extra_env=None, ready_timeout=30):
    """Starts `iotfin serve` on free ports; returns (Popen, http base URL, env shown)."""
    env, settings = iotfin_env(data_dir, root, extra_env)
    err = open(stderr_path, "wb")
    p = subprocess.Popen([binary, "serve"], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=err)
    err.close()
    found = {}

    def read_stdout():
        for line in p.stdout:
            m = READY_RE.search(line.decode(errors="replace"))
            if m and "http" not in found:
                found["http"] = m.group("http")
        # keep draining until exit so iotfin never blocks on a full pipe

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    while "http" not in found:
        if p.poll() is not None:
            raise IotfinError(f"iotfin exited with {p.returncode} while starting; see {stderr_path}")
        if time.monotonic() >= deadline:
            p.terminate()
            raise IotfinError(f"iotfin printed no ready line within {ready_timeout} s")
        time.sleep(0.02)
    return p, found["http"], settings


def provision(base, data_dir, timeout=60, admin=None):
    """An approved user (token) and an active device it owns: returns (token, device_id).
    admin: the admin token when set with IOTFIN_ADMIN_TOKEN (else read from the data dir)."""
    if admin is None:
        with open(os.path.join(data_dir, "admin-token")) as f:
            admin = f.read().strip()
    anon = _expect(201, _call(base, "POST", "/v1/sessions/anonymous"), "anonymous session")
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    reg = _expect(202, _call(base, "POST", "/v1/registrations", anon["access_token"],
                             {"type": "local", "email": email, "password": PASSWORD,
                              "name": "Bench User"}), "registration")
    reg_id, reg_token = reg["registration"]["id"], reg["access_token"]

    def approved():
        body = _expect(200, _call(base, "GET", f"/v1/registrations/{reg_id}", reg_token),
                       "registration status")
        if body["status"] == "rejected":
            raise IotfinError("iotfin registration was rejected")
        return body["status"] == "approved"

    _poll(approved, timeout, "registration approval (KYC)")
    user = _expect(201, _call(base, "POST", f"/v1/registrations/{reg_id}/session", reg_token),
                   "user session")
    token = user["access_token"]
    serial = "BENCH-" + uuid.uuid4().hex[:12].upper()
    _expect(200, _call(base, "POST", "/v1/admin/devices/import", admin,
                       {"devices": [{"serial": serial, "model": "bench-1"}]}), "device import")
    dev = _expect(202, _call(base, "POST", "/v1/devices", token, {"serial": serial}), "claim")

    def active():
        body = _expect(200, _call(base, "GET", f"/v1/devices/{dev['id']}", token), "device")
        if body["status"] == "failed":
            raise IotfinError("iotfin device activation failed")
        return body["status"] == "active"

    _poll(active, timeout, "device activation (SUPPLIER)")
    return token, dev["id"]
