"""End-to-end harness: starts the real iotfin binary on free ports with a private
data dir, waits for its ready line, and checks on the way out that it stopped
cleanly (exit 0, no managed broker left behind).

Fixtures:
  iotfin          a fresh server for one test
  start_iotfin    factory: start_iotfin(env=None, data_dir=None) -> Iotfin
  shared_iotfin   one server per test module, for tests that only read or add data
  run_iotfin      runs `iotfin ARGS...` to completion (commands, bad settings)

Helpers the test files import: assert_problem, PROBLEM_MEMBERS.
"""

import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("IOTFIN_BIN") or str(REPO_ROOT / "build" / "iotfin")
READY_TIMEOUT_S = 10

# The one line iotfin prints when everything is up (CONTRACT section 1).
READY_RE = re.compile(
    r"iotfin ready http=(?P<http_scheme>https?)://"
    r"(?P<http_host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<http_port>[0-9]+)"
    r" mqtt=(?P<mqtt_scheme>mqtts?)://"
    r"(?P<mqtt_host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<mqtt_port>[0-9]+)"
)

# Deployment knobs that locate helper programs; every other IOTFIN_* variable of the
# calling shell is dropped so that the tests see only the settings they choose.
PASSTHROUGH = {"IOTFIN_MOSQUITTO", "IOTFIN_BROKER_PLUGIN"}

PROBLEM_MEMBERS = ("type", "title", "status", "detail", "code")

# What AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer print when they
# find something (`make e2e-asan` runs the suite against a sanitized binary).
SANITIZER_RE = re.compile(
    r"==\d+==ERROR: (?:Address|Leak)Sanitizer|SUMMARY: (?:Address|Leak|UndefinedBehavior)"
    r"Sanitizer|: runtime error: "
)


def sanitizer_report(text):
    """The sanitizer report in a process's standard error, or None."""
    m = SANITIZER_RE.search(text)
    if not m:
        return None
    start = max(0, text.rfind("\n", 0, max(0, m.start() - 2000)))
    return text[start : m.start() + 6000]


# Set by `sh scripts/pg.sh run ...` (make e2e-pg): the URL of an empty PostgreSQL
# database. Each data dir then gets its own schema there (search_path in the URL), so
# tests stay as independent as with one SQLite file per data dir, and a server
# restarted on the same data dir finds its state again. iotfin creates the schema its
# search_path names at its first start.
TEST_PG = os.environ.get("IOTFIN_TEST_PG")


def psql(url, sql):
    """One statement through psql against url (a PostgreSQL URL); its rows as text,
    columns separated by |, one row a line."""
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", url, "-c", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def pg_url(data_dir):
    """The IOTFIN_DB of a server on data_dir when the suite runs on PostgreSQL."""
    schema = "t_" + hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return f"{TEST_PG}?options=-csearch_path%3D{schema}"


def store_socket_inodes(pid):
    """Socket inodes (as in /proc/PID/fd links, "socket:[N]") of the server's
    connections to the test PostgreSQL; empty on SQLite. Tests that count a server's
    sockets leave these out: their number follows the threads that read, not clients."""
    if not TEST_PG:
        return set()
    port = urllib.parse.urlsplit(TEST_PG).port
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and int(cols[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    return inodes


def sqlite_only(reason):
    """Marks a test (or, as pytestmark, a module) that is about the SQLite file itself;
    it is skipped when the suite runs on PostgreSQL."""
    return pytest.mark.skipif(bool(TEST_PG), reason=f"SQLite only: {reason}")


# The shipped mocks (mocks/) answer a KYC verification by a callback after 2 s, as a
# person checking papers might. The suite's servers use a copy whose callbacks come
# after CALLBACK_MS instead: no test but those of the shipped mocks themselves
# (test_30, test_31, test_41, which name mocks/ as it is) depends on the wait, and
# every user the suite registers paid it (about a third of the suite's time).
CALLBACK_MS = 200
_suite_mocks = None


def suite_mocks():
    global _suite_mocks
    if _suite_mocks is None:
        d = Path(tempfile.mkdtemp(prefix="iotfin-mocks-")) / "mocks"
        atexit.register(shutil.rmtree, d.parent, True)
        shutil.copytree(REPO_ROOT / "mocks", d)
        for f in d.rglob("*.json"):
            doc = json.loads(f.read_text())
            cb = doc.get("callback") if isinstance(doc, dict) else None
            if isinstance(cb, dict) and cb.get("delay_ms", 0) > CALLBACK_MS:
                cb["delay_ms"] = CALLBACK_MS
                f.write_text(json.dumps(doc, indent=2))
        _suite_mocks = d
    return _suite_mocks


def base_env(data_dir, extra=None):
    """The environment of a test server: free ports, a private data dir, `extra`
    merged in last (a value of None removes that variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTFIN_") or k in PASSTHROUGH}
    env.update(
        {
            "IOTFIN_DATA_DIR": str(data_dir),
            "IOTFIN_LISTEN": "127.0.0.1:0",
            "IOTFIN_MQTT_LISTEN": "127.0.0.1:0",
        }
    )
    # Every user the suite registers costs one password hash, and logins one more: at
    # the default 64 MiB they were a quarter of the suite's CPU. 19 MiB (the lowest the
    # setting takes) runs the same code; test_10 checks the default cost itself.
    env["IOTFIN_PASSWORD_HASH_MIB"] = "19"
    if TEST_PG and "IOTFIN_DB" not in (extra or {}):
        env["IOTFIN_DB"] = pg_url(data_dir)
    env["IOTFIN_MOCK_DIR"] = str(suite_mocks())
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def parent_pid(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def broker_pids(data_dir):
    """Pids of live mosquitto processes running the config this data dir's iotfin
    wrote. The data dir is the test's own, so these are only brokers we started."""
    conf = str(Path(data_dir) / "broker" / "mosquitto.conf")
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if conf.encode() in argv and b"mosquitto" in argv[0]:
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z":
                pids.append(int(entry))
    return pids


def wait_until(predicate, timeout, interval=0.01):
    """Polls predicate until it returns a truthy value or timeout seconds pass;
    returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def poll(fn, timeout=15.0, step=0.05):
    """wait_until with the suites' usual cadence: fn every 50 ms for at most 15 s."""
    return wait_until(fn, timeout, step)


def bearer(token):
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


class Iotfin:
    """One running `iotfin serve`. Standard output and standard error go to files in
    the test's tmp dir, so a chatty server never blocks on a full pipe."""

    _count = 0

    def __init__(self, workdir, data_dir=None, env=None):
        Iotfin._count += 1
        self.n = Iotfin._count
        self.workdir = Path(workdir)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.env = base_env(self.data_dir, env)
        self.stdout_path = self.workdir / f"iotfin-{self.n}.stdout"
        self.stderr_path = self.workdir / f"iotfin-{self.n}.stderr"
        self.bin = BIN
        self.proc = None
        self.returncode = None
        self.stopped_by_test = False
        self.ready_line = None
        self._brokers = set()
        self.session = requests.Session()

    # -- starting -------------------------------------------------------------

    def start(self):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.bin, "serve"],
                env=self.env,
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for line in self.stdout_lines():
                m = READY_RE.fullmatch(line)
                if m:
                    self._ready(line, m)
                    self.broker_pids()
                    return self
                if line.startswith("iotfin ready"):
                    pytest.fail(
                        "the ready line does not match `iotfin ready http=http://HOST:PORT "
                        f"mqtt=mqtt://HOST:PORT`: {line!r}"
                    )
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                pytest.fail(
                    f"iotfin exited with {self.proc.returncode} before its ready line\n"
                    f"stdout:\n{self.stdout_text()}\nstderr:\n{self.stderr_text()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"no ready line within {READY_TIMEOUT_S} s\n"
                    f"stdout:\n{self.stdout_text()}\nstderr:\n{self.stderr_text()}"
                )
            time.sleep(0.003)

    def _ready(self, line, m):
        self.ready_line = line
        self.http_host = m["http_host"]
        self.http_port = int(m["http_port"])
        self.mqtt_host = m["mqtt_host"].strip("[]")
        self.mqtt_port = int(m["mqtt_port"])
        self.url = f"{m['http_scheme']}://{m['http_host']}:{self.http_port}"
        self.mqtt_url = f"{m['mqtt_scheme']}://{m['mqtt_host']}:{self.mqtt_port}"

    @property
    def admin_token(self):
        if self.env.get("IOTFIN_ADMIN_TOKEN"):
            return self.env["IOTFIN_ADMIN_TOKEN"]
        return (self.data_dir / "admin-token").read_text().strip()

    def admin_headers(self, **extra):
        return {"Authorization": f"Bearer {self.admin_token}", **extra}

    # -- HTTP ------------------------------------------------------------------

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        return self.session.request(method, self.url + path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def import_devices(self, devices):
        """POST /v1/admin/devices/import with a JSON list; returns the response."""
        return self.post(
            "/v1/admin/devices/import", json={"devices": devices}, headers=self.admin_headers()
        )

    def anonymous_token(self):
        r = self.post("/v1/sessions/anonymous")
        assert r.status_code == 201, r.text
        return r.json()["access_token"]

    # -- output ----------------------------------------------------------------

    def stdout_text(self):
        try:
            return self.stdout_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_lines(self):
        """Complete lines written to standard output so far."""
        text = self.stdout_text()
        return text.split("\n")[:-1]

    def stderr_text(self):
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stderr_lines(self):
        return [l for l in self.stderr_text().split("\n") if l]

    def stderr_json(self):
        """Standard error parsed line by line; fails the test on a non-JSON line."""
        out = []
        for line in self.stderr_lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"stderr line is not JSON: {line!r}")
        return out

    # -- stopping --------------------------------------------------------------

    def broker_pids(self):
        """Live brokers of this server: children of its process, and those seen as its
        children before (after iotfin is gone an orphan has another parent). Another
        server on the same data dir later does not count."""
        mine = []
        for pid in broker_pids(self.data_dir):
            if self.proc is not None and parent_pid(pid) == self.proc.pid:
                self._brokers.add(pid)
            if pid in self._brokers:
                mine.append(pid)
        return mine

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Sends sig and waits for the exit; returns the exit code (negative: killed
        by that signal). A server that does not exit in time is killed and the test
        fails."""
        self.stopped_by_test = True
        return self._stop(sig, timeout)

    def wait_exit(self, timeout=15):
        """Waits for an exit the test caused some other way; returns the exit code.
        Fails the test (after killing the process) if it does not come in time."""
        self.stopped_by_test = True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"iotfin did not exit within {timeout} s")
        self.returncode = self.proc.returncode
        return self.returncode

    def _stop(self, sig, timeout):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.broker_pids()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"iotfin did not exit within {timeout} s of signal {sig}")
        self.returncode = self.proc.returncode
        self.session.close()
        return self.returncode

    def kill(self):
        """SIGKILL, then reap."""
        if self.proc and self.proc.poll() is None:
            self.broker_pids()
            self.proc.kill()
            self.proc.wait(5)
        self.returncode = self.proc.returncode if self.proc else None

    def teardown(self):
        """Stops a still running server with SIGTERM and returns a list of problems:
        a non-zero exit the test did not ask for, a managed broker left running."""
        problems = []
        if self.proc is None:
            return problems
        was_running = self.running()
        try:
            rc = self._stop(signal.SIGTERM, 15)
        except BaseException as e:  # pytest.fail raises an OutcomeException
            problems.append(str(e))
            rc = self.returncode
        if was_running and not self.stopped_by_test and rc != 0:
            problems.append(
                f"iotfin exited with {rc} on SIGTERM\nstderr tail:\n"
                + "\n".join(self.stderr_lines()[-20:])
            )
        report = sanitizer_report(self.stderr_text())
        if report:
            problems.append(f"sanitizer report in iotfin's stderr:\n{report}")
        leftover = wait_until(lambda: not self.broker_pids(), 2.0)
        if not leftover:
            pids = self.broker_pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            problems.append(f"managed broker still running 2 s after iotfin exited: pids {pids}")
        return problems


@pytest.fixture
def start_iotfin(tmp_path):
    """Factory: start_iotfin(env=None, data_dir=None) starts a server and returns it
    once ready. Every server it started is stopped at teardown; the test fails if one
    exits non-zero on SIGTERM (unless the test stopped it itself) or leaves its broker."""
    started = []

    def start(env=None, data_dir=None):
        inst = Iotfin(tmp_path, data_dir=data_dir, env=env)
        started.append(inst)
        return inst.start()

    yield start
    problems = []
    for inst in started:
        problems += inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def iotfin(start_iotfin):
    """A fresh server for this test."""
    return start_iotfin()


@pytest.fixture(scope="module")
def shared_iotfin(tmp_path_factory):
    """One server for the whole module: for tests that do not depend on a clean state."""
    inst = Iotfin(tmp_path_factory.mktemp("shared"))
    inst.start()
    yield inst
    problems = inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def run_iotfin(tmp_path):
    """run_iotfin(*args, env=None, timeout=10) runs the binary to completion with the
    test environment and returns (returncode, stdout, stderr, seconds). A process still
    running at the timeout is killed (with any broker it started) and the test fails."""

    def run(*args, env=None, timeout=10):
        data_dir = tmp_path / "run-data"
        run_env = base_env(data_dir, env)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [BIN, *args],
            env=run_env,
            cwd=str(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            for pid in broker_pids(data_dir):
                os.kill(pid, signal.SIGKILL)
            pytest.fail(
                f"iotfin {' '.join(args)} still running after {timeout} s\n"
                f"stdout:\n{out.decode(errors='replace')}\nstderr:\n{err.decode(errors='replace')}"
            )
        report = sanitizer_report(err.decode(errors="replace"))
        if report:
            pytest.fail(f"sanitizer report in iotfin {' '.join(args)}'s stderr:\n{report}")
        return proc.returncode, out.decode(), err.decode(), time.monotonic() - t0

    return run


def assert_problem(resp, status, code):
    """Checks an error answer: the status, application/problem+json, the five RFC 9457
    members with the right types, `status` equal to the HTTP status and the stable code.
    Returns the parsed body."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip() == "application/problem+json", ctype
    body = resp.json()
    assert isinstance(body, dict), body
    for member in PROBLEM_MEMBERS:
        assert member in body, (member, body)
    assert isinstance(body["type"], str) and body["type"], body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["status"] == status, body
    assert body["code"] == code, body
    return body


def tcp_accepts(host, port, timeout=0.2):
    """True if something accepts a TCP connection on host:port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mqtt_connack(host, port, username=None, password=None, timeout=5):
    """Connects with MQTT 3.1.1 and returns the CONNACK return code (0 accepted,
    4 bad user name or password, 5 not authorised), or None if no CONNACK came.
    The network loop runs in this thread, so nothing lingers afterwards."""
    import uuid

    import paho.mqtt.client as mqtt

    got = {}

    def on_connect(client, userdata, flags, rc):
        got["rc"] = rc

    def on_disconnect(client, userdata, rc):
        got["closed"] = True

    client = mqtt.Client(client_id=f"e2e-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect(host, port, keepalive=10)
    deadline = time.monotonic() + timeout
    try:
        while "rc" not in got and "closed" not in got and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    finally:
        client.disconnect()
    return got.get("rc")


def jwks_keys(inst):
    """GET /.well-known/jwks.json, checked, as {kid: jwk}."""
    r = inst.get("/.well-known/jwks.json")
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert keys, r.text
    return {k["kid"]: k for k in keys}


def verify_token(inst, token):
    """Verifies an iotfin token with PyJWT against the server's JWKS, as any third
    party would; returns (header, claims)."""
    import jwt

    header = jwt.get_unverified_header(token)
    keys = jwks_keys(inst)
    assert header.get("kid") in keys, (header, list(keys))
    key = jwt.PyJWK(keys[header["kid"]])
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA", "ES256"],
        issuer="iotfin",
        options={"require": ["iss", "sub", "iat", "exp", "jti"], "verify_aud": False},
    )
    return header, claims


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: a heavy fault test (kill -9, full disks, floods, failover, a browser) that "
        "takes seconds; `make test` leaves it out, `make test SLOW=1` (CI) runs it",
    )
