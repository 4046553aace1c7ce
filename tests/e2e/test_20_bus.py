"""CONTRACT section 8, the event bus seen from outside: a KYC outage poisons the real
registration-kyc handler, its message is dead-lettered after IOTFIN_MAX_RECEIVES, the
alarm dead-letters:registration-kyc is raised (event and mail to IOTFIN_OPS_EMAIL),
a redrive after the fix approves the registration and clears the alarm. Also the
operations routes (queues, dead letters and their pagination, redrive, alarms, the
event log and its filters), the bus series of /metrics, and a kill -9 in the middle
of a burst of registrations that must lose no event and leave no handler undone.

KYC is a fake HTTP server run by the test (127.0.0.1, a free port) whose answers
the test switches at will."""

import json
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import assert_problem, poll

STEP = 0.05
CAP = 15.0
QUEUE = "registration-kyc"
ALARM = f"dead-letters:{QUEUE}"
OPS = "ops@example.test"


# ---- the fake KYC partner -------------------------------------------------------------


class FakeKyc:
    """POST /verifications answers per `mode`: "fail" → 500, "approve" → 201
    {id, status: approved}. GET /verifications/{id} answers 200 approved. `delay`
    seconds are spent before each answer; POSTs also wait while `gate` is clear.
    Every request is counted."""

    def __init__(self):
        self.mode = "fail"
        self.delay = 0.0
        self.gate = threading.Event()  # POSTs wait while it is clear (at most 10 s)
        self.gate.set()
        self.lock = threading.Lock()
        self.requests = []  # (method, path, body)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode("utf-8", "replace")

            def _answer(self, status, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the caller died (kill -9): nobody to answer

            def do_POST(self):
                body = self._body()
                with fake.lock:
                    fake.requests.append(("POST", self.path, body))
                    mode, delay = fake.mode, fake.delay
                fake.gate.wait(10)
                with fake.lock:
                    delay = fake.delay
                if delay:
                    time.sleep(delay)
                if self.path.rstrip("/") != "/verifications":
                    return self._answer(404, {"error": "not found"})
                if mode == "fail":
                    return self._answer(500, {"error": "kyc is down"})
                return self._answer(201, {"id": "v-" + uuid.uuid4().hex, "status": "approved"})

            def do_GET(self):
                with fake.lock:
                    fake.requests.append(("GET", self.path, None))
                    delay = fake.delay
                if delay:
                    time.sleep(delay)
                if self.path.startswith("/verifications/"):
                    vid = self.path.rsplit("/", 1)[1]
                    return self._answer(200, {"id": vid, "status": "approved"})
                return self._answer(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posts(self):
        with self.lock:
            return [r for r in self.requests if r[0] == "POST"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kyc():
    fake = FakeKyc()
    yield fake
    fake.close()


def bus_env(kyc, **extra):
    env = {
        "IOTFIN_PARTNER_KYC_URL": kyc.url,
        "IOTFIN_RETRY_BASE_MS": "20",
        "IOTFIN_RETRY_MAX_MS": "100",
        "IOTFIN_MAX_RECEIVES": "3",
        "IOTFIN_AUTH_RATE": "10000",
        "IOTFIN_OPS_EMAIL": OPS,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- helpers ---------------------------------------------------------------------------




def register(srv, email=None):
    """Anonymous session, then a local registration. Returns (registration, token)."""
    r = srv.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    anon = r.json()["access_token"]
    email = email or f"u-{uuid.uuid4().hex[:12]}@example.test"
    r = srv.post(
        "/v1/registrations",
        json={"type": "local", "email": email, "password": "correct horse battery", "name": "Ann"},
        headers={"Authorization": f"Bearer {anon}"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["registration"]["status"] == "pending", body
    return body["registration"], body["access_token"]


def reg_status(srv, reg, token):
    r = srv.get(f"/v1/registrations/{reg['id']}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["status"]


def admin_get(srv, path, status=200):
    r = srv.get(path, headers=srv.admin_headers())
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


def queue_stats(srv, name=QUEUE):
    items = admin_get(srv, "/v1/admin/queues")["items"]
    for q in items:
        assert set(q) >= {"name", "ready", "in_flight", "delayed", "dead", "oldest_age_ms"}, q
    found = [q for q in items if q["name"] == name]
    assert len(found) == 1, items
    return found[0]


def alarm(srv, name=ALARM):
    items = admin_get(srv, "/v1/admin/alarms")["items"]
    found = [a for a in items if a["name"] == name]
    return found[0] if found else None


def events(srv, **params):
    """Every event matching params, following next_cursor."""
    out, cursor = [], None
    for _ in range(100):
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        body = admin_get(srv, "/v1/admin/events?" + "&".join(f"{k}={v}" for k, v in q.items()))
        out += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return out
    pytest.fail("event log pagination does not end")


def ops_mails(srv):
    mail_dir = srv.data_dir / "mail"
    if not mail_dir.is_dir():
        return []
    out = []
    for p in sorted(mail_dir.glob("*.eml")):
        text = p.read_text(errors="replace")
        headers = text.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
        if any(
            line.lower().startswith("to:") and OPS in line for line in headers.splitlines()
        ):
            out.append(text)
    return out


def metric_value(text, name, labels):
    """The value of the series name{labels...} (every label given must match)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        lab, _, val = line[len(name) + 1 :].partition("} ")
        if all(f'{k}="{v}"' in lab for k, v in labels.items()):
            return float(val.split()[0])
    return None


def check_cloudevent(ev, type_):
    assert set(ev) >= {"specversion", "id", "source", "type", "time", "subject", "data"}, ev
    assert ev["specversion"] == "1.0", ev
    assert ev["type"] == type_, ev
    assert ev["subject"], ev


# ---- the KYC outage, end to end --------------------------------------------------------


def test_kyc_outage_dead_letters_raises_alarm_and_redrive_recovers(start_iotfin, kyc):
    srv = start_iotfin(env=bus_env(kyc))
    reg, token = register(srv)

    # Step 1: three receives, three 500s, one dead letter.
    q = poll(lambda: (lambda s: s if s["dead"] == 1 else None)(queue_stats(srv)))
    assert q, queue_stats(srv)
    assert q["ready"] == 0 and q["in_flight"] == 0 and q["delayed"] == 0, q
    assert len(kyc.posts()) == 3, kyc.requests
    time.sleep(0.3)  # no receive after the last one
    assert len(kyc.posts()) == 3, kyc.requests
    assert reg_status(srv, reg, token) == "pending"

    # Step 2: the dead letter, with its event, count and error.
    body = admin_get(srv, f"/v1/admin/queues/{QUEUE}/dead-letters")
    assert body.get("next_cursor") is None, body
    assert len(body["items"]) == 1, body
    dl = body["items"][0]
    assert set(dl) >= {"id", "event", "receive_count", "last_error", "dead_at"}, dl
    check_cloudevent(dl["event"], "user.registration.requested")
    assert dl["event"]["data"]["registration_id"] == reg["id"], dl
    assert dl["event"]["subject"] == f"users/{reg['user_id']}", dl
    assert dl["receive_count"] == 3, dl
    assert "500" in dl["last_error"], dl
    assert dl["dead_at"], dl

    # Step 3: the alarm is up.
    a = poll(lambda: alarm(srv))
    assert a, admin_get(srv, "/v1/admin/alarms")
    assert set(a) >= {"name", "state", "queue", "count", "raised_at"}, a
    assert a["state"] == "alarm" and a["queue"] == QUEUE and a["count"] == 1, a
    assert a["raised_at"], a

    # Step 4: ops got one mail about it.
    mails = poll(lambda: ops_mails(srv))
    assert mails, sorted(p.name for p in (srv.data_dir / "mail").glob("*")) if (
        srv.data_dir / "mail"
    ).is_dir() else "no mail dir"
    assert len(mails) == 1, mails
    assert ALARM in mails[0] or QUEUE in mails[0], mails[0]

    # Step 5: the events.
    raised = events(srv, type="alarm.raised")
    assert len(raised) == 1, raised
    check_cloudevent(raised[0], "alarm.raised")
    assert raised[0]["subject"] == f"alarms/{ALARM}", raised
    assert raised[0]["data"]["name"] == ALARM and raised[0]["data"]["queue"] == QUEUE, raised
    dead = events(srv, type="queue.message.dead_lettered")
    assert len(dead) == 1, dead
    assert dead[0]["subject"] == f"queues/{QUEUE}", dead
    assert dead[0]["data"]["queue"] == QUEUE, dead
    assert dead[0]["data"]["event_id"] == dl["event"]["id"], (dead, dl)
    assert "500" in dead[0]["data"]["last_error"], dead

    # Step 6: /metrics shows the handler outcomes and the queue.
    r = srv.get("/metrics")
    assert r.status_code == 200, r.text
    m = r.text
    assert metric_value(m, "iotfin_bus_handler_outcomes_total", {"queue": QUEUE, "outcome": "failed"}) == 3, m
    assert metric_value(m, "iotfin_queue_messages", {"queue": QUEUE}) is not None, m
    dlm = metric_value(m, "iotfin_queue_dead_letters", {"queue": QUEUE})
    assert dlm == 1, m

    # Step 7: KYC is fixed; redrive.
    kyc.mode = "approve"
    r = srv.post(f"/v1/admin/queues/{QUEUE}/redrive", json={}, headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    assert r.json() == {"redriven": 1}, r.text

    # Step 8: approved, the DLQ is empty, the alarm is ok again with its event.
    assert poll(lambda: reg_status(srv, reg, token) == "approved"), reg_status(srv, reg, token)
    assert len(kyc.posts()) == 4, kyc.requests
    q = poll(lambda: (lambda s: s if s["dead"] == 0 and s["ready"] == 0 and s["in_flight"] == 0 else None)(queue_stats(srv)))
    assert q, queue_stats(srv)
    a = poll(lambda: (lambda x: x if x and x["state"] == "ok" else None)(alarm(srv)))
    assert a, alarm(srv)
    assert a["count"] == 0, a
    cleared = poll(lambda: events(srv, type="alarm.cleared"))
    assert len(cleared) == 1, cleared
    assert cleared[0]["subject"] == f"alarms/{ALARM}", cleared
    assert admin_get(srv, f"/v1/admin/queues/{QUEUE}/dead-letters")["items"] == []
    approved = poll(lambda: events(srv, type="user.registration.approved"))
    assert [e["data"]["registration_id"] for e in approved] == [reg["id"]], approved
    # Still one mail to ops: one per causing event, whatever the retries.
    time.sleep(0.2)
    assert len(ops_mails(srv)) == 1
    r = srv.get("/metrics")
    assert metric_value(r.text, "iotfin_bus_handler_outcomes_total", {"queue": QUEUE, "outcome": "done"}) == 1, r.text


def test_redrive_of_unknown_queue_is_404(iotfin):
    r = iotfin.post("/v1/admin/queues/no-such-queue/redrive", json={}, headers=iotfin.admin_headers())
    assert_problem(r, 404, "not_found")
    r = iotfin.get("/v1/admin/queues/no-such-queue/dead-letters", headers=iotfin.admin_headers())
    assert_problem(r, 404, "not_found")


def test_bus_routes_need_the_admin_token(iotfin):
    anon = iotfin.anonymous_token()
    for path in ("/v1/admin/queues", "/v1/admin/alarms", "/v1/admin/events",
                 f"/v1/admin/queues/{QUEUE}/dead-letters"):
        assert iotfin.get(path).status_code == 401, path
        assert iotfin.get(path, headers={"Authorization": f"Bearer {anon}"}).status_code in (401, 403), path
    r = iotfin.post(f"/v1/admin/queues/{QUEUE}/redrive", json={})
    assert r.status_code == 401, r.text


def test_queues_lists_every_queue_with_depths(iotfin):
    items = admin_get(iotfin, "/v1/admin/queues")["items"]
    names = [q["name"] for q in items]
    assert QUEUE in names, names
    for q in items:
        for k in ("ready", "in_flight", "delayed", "dead", "oldest_age_ms"):
            assert isinstance(q[k], int) and q[k] >= 0, q


def test_dead_letters_pagination_and_redrive_by_id(start_iotfin, kyc):
    srv = start_iotfin(env=bus_env(kyc))
    regs = [register(srv) for _ in range(3)]
    assert poll(lambda: queue_stats(srv)["dead"] == 3), queue_stats(srv)

    # limit=1 pages through all three, each once, then next_cursor null.
    seen, cursor = [], None
    for _ in range(5):
        path = f"/v1/admin/queues/{QUEUE}/dead-letters?limit=1"
        if cursor:
            path += f"&cursor={cursor}"
        body = admin_get(srv, path)
        assert len(body["items"]) <= 1, body
        seen += [d["id"] for d in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor, body
    assert len(seen) == 3 and len(set(seen)) == 3, seen
    assert cursor is None
    body = admin_get(srv, f"/v1/admin/queues/{QUEUE}/dead-letters?limit=2")
    assert len(body["items"]) == 2 and body["next_cursor"], body
    body = admin_get(srv, f"/v1/admin/queues/{QUEUE}/dead-letters?limit=2&cursor={body['next_cursor']}")
    assert len(body["items"]) == 1 and body["next_cursor"] is None, body
    r = srv.get(f"/v1/admin/queues/{QUEUE}/dead-letters?limit=0", headers=srv.admin_headers())
    assert_problem(r, 400, "validation_failed")

    # Redrive one by id while KYC still fails: a fresh count, dead again after 3.
    posts = len(kyc.posts())
    r = srv.post(f"/v1/admin/queues/{QUEUE}/redrive", json={"ids": [seen[0]]}, headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    assert r.json() == {"redriven": 1}, r.text
    assert poll(lambda: len(kyc.posts()) >= posts + 3), kyc.requests
    assert poll(lambda: queue_stats(srv)["dead"] == 3), queue_stats(srv)
    items = admin_get(srv, f"/v1/admin/queues/{QUEUE}/dead-letters")["items"]
    assert [d["receive_count"] for d in items] == [3, 3, 3], items
    assert len(kyc.posts()) == posts + 3, kyc.requests
    a = alarm(srv)
    assert a["state"] == "alarm" and a["count"] == 3, a
    assert len(events(srv, type="alarm.raised")) == 1

    # Fix KYC and redrive everything.
    kyc.mode = "approve"
    r = srv.post(f"/v1/admin/queues/{QUEUE}/redrive", json={}, headers=srv.admin_headers())
    assert r.json() == {"redriven": 3}, r.text
    for reg, token in regs:
        assert poll(lambda: reg_status(srv, reg, token) == "approved"), reg
    assert poll(lambda: (alarm(srv) or {}).get("state") == "ok"), alarm(srv)
    # Nothing left: a second redrive redrives nothing.
    r = srv.post(f"/v1/admin/queues/{QUEUE}/redrive", json={}, headers=srv.admin_headers())
    assert r.json() == {"redriven": 0}, r.text


def test_admin_events_filters_and_pagination(start_iotfin, kyc):
    kyc.mode = "approve"
    srv = start_iotfin(env=bus_env(kyc))
    reg, token = register(srv)
    assert poll(lambda: reg_status(srv, reg, token) == "approved")
    subject = f"users/{reg['user_id']}"

    # ?subject=: this user's events only, oldest first.
    mine = poll(lambda: (lambda e: e if len(e) >= 2 else None)(events(srv, subject=subject)))
    assert mine, events(srv, subject=subject)
    assert all(e["subject"] == subject for e in mine), mine
    types = [e["type"] for e in mine]
    assert types[:2] == ["user.registration.requested", "user.registration.approved"], types
    for e in mine:
        check_cloudevent(e, e["type"])

    # ?type=
    req = events(srv, type="user.registration.requested")
    assert [e["data"]["registration_id"] for e in req] == [reg["id"]], req
    assert events(srv, type="no.such.type") == []
    both = events(srv, type="user.registration.approved", subject=subject)
    assert len(both) == 1 and both[0]["type"] == "user.registration.approved", both
    assert events(srv, type="user.registration.approved", subject="users/nobody") == []

    # ?after=<event id>: only what came later. The bus may still be recording events
    # of this registration (its mail) between two reads, so a later read may end with
    # events the snapshot does not have yet, but only after everything it had.
    everything = events(srv)
    ids = [e["id"] for e in everything]
    assert len(set(ids)) == len(ids), ids
    first = mine[0]["id"]
    later = [e["id"] for e in events(srv, after=first)]
    expected = ids[ids.index(first) + 1 :]
    assert later[: len(expected)] == expected, (later, ids)
    assert not set(later[len(expected) :]) & set(ids), (later, ids)
    newest = [e["id"] for e in events(srv, after=ids[-1])]
    assert not set(newest) & set(ids), (newest, ids)
    after_sub = events(srv, after=first, subject=subject)
    assert [e["type"] for e in after_sub][:1] == ["user.registration.approved"], after_sub

    # Pagination with a small limit gives the same log, in the same order (and, as
    # above, perhaps events recorded since).
    paged = [e["id"] for e in events(srv, limit=2)]
    assert paged[: len(ids)] == ids and not set(paged[len(ids) :]) & set(ids), (paged, ids)

    # limit above 200 is treated as 200: make more than 200 events first.
    devices = [{"serial": f"BUS-{i:05d}"} for i in range(230)]
    r = srv.import_devices(devices)
    assert r.status_code == 200, r.text
    body = admin_get(srv, "/v1/admin/events?limit=500")
    assert len(body["items"]) == 200, len(body["items"])
    assert body["next_cursor"], body.keys()
    body = admin_get(srv, "/v1/admin/events?limit=200")
    assert len(body["items"]) == 200
    body = admin_get(srv, "/v1/admin/events")
    assert len(body["items"]) == 50  # the default

    # A bad limit is 400.
    for bad in ("0", "-1", "abc", "1.5", ""):
        r = srv.get(f"/v1/admin/events?limit={bad}", headers=srv.admin_headers())
        if bad == "":
            assert r.status_code in (200, 400), r.text
            continue
        assert_problem(r, 400, "validation_failed")
    # An after that names no event is refused, not an empty page.
    r = srv.get(f"/v1/admin/events?after={uuid.uuid4()}", headers=srv.admin_headers())
    assert r.status_code in (400, 404), r.text


def test_metrics_has_bus_series(start_iotfin, kyc):
    kyc.mode = "approve"
    srv = start_iotfin(env=bus_env(kyc))
    reg, token = register(srv)
    assert poll(lambda: reg_status(srv, reg, token) == "approved")
    # The outcome is counted when the handler returns, a moment after its effect
    # (the approval) committed: poll rather than read once.
    assert poll(lambda: "\niotfin_bus_handler_outcomes_total{" in srv.get("/metrics").text)
    r = srv.get("/metrics")
    assert r.status_code == 200, r.text
    lines = r.text.splitlines()
    assert any(l.startswith("iotfin_queue_messages{") for l in lines), r.text
    v = poll(lambda: metric_value(srv.get("/metrics").text, "iotfin_bus_handler_outcomes_total",
                                   {"queue": QUEUE, "outcome": "done"}))
    assert v == 1, srv.get("/metrics").text
    for state in ("ready", "in_flight", "delayed"):
        assert metric_value(r.text, "iotfin_queue_messages", {"queue": QUEUE, "state": state}) is not None, r.text


# ---- kill -9 in the middle of a burst ---------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_burst_loses_no_event_and_no_handler(start_iotfin, kyc):
    """~30 registrations: the first 10 go through KYC (50 ms a call), then KYC hangs
    so that work piles up (handlers blocked in the call, messages ready behind them)
    while 20 more registrations arrive; iotfin is killed with -9 in the middle of
    that second wave, some of its requests still open. A restart on the same data dir
    must finish everything: no event lost, every handler completed, nothing dead."""
    kyc.mode = "approve"
    kyc.delay = 0.05
    env = bus_env(kyc)
    first = start_iotfin(env=env)
    data_dir = first.data_dir

    created, lock = [], threading.Lock()
    stop = threading.Event()

    def one(_):
        if stop.is_set():
            return
        try:
            reg, token = register(first)
        except (requests.RequestException, AssertionError):
            return  # the server died under this request: its outcome is unknown
        with lock:
            created.append((reg, token))

    pool = ThreadPoolExecutor(max_workers=6)
    try:
        # Wave 1: 10 registrations, KYC answering; wait until KYC has done some.
        for f in [pool.submit(one, i) for i in range(10)]:
            f.result(timeout=CAP)
        assert poll(lambda: len(kyc.posts()) >= 5), kyc.requests
        # Wave 2: KYC hangs; 20 more; kill -9 once 12 of them are in.
        kyc.gate.clear()
        futures = [pool.submit(one, i) for i in range(20)]
        assert poll(lambda: len(created) >= 22, step=0.01), len(created)
        posts_at_kill = len(kyc.posts())
        first.stop(signal.SIGKILL)
        stop.set()
        for f in futures:
            f.result(timeout=30)
    finally:
        stop.set()
        kyc.gate.set()
        pool.shutdown()
    with lock:
        regs = list(created)
    assert len(regs) >= 22
    assert posts_at_kill < len(regs)  # work was left when it died

    # Same data dir, same partner: every registration ends approved.
    second = start_iotfin(env=env, data_dir=data_dir)

    def pending():
        return [reg["id"] for reg, token in regs if reg_status(second, reg, token) != "approved"]

    left = poll(lambda: not pending(), timeout=CAP, step=0.1)
    assert left, f"still pending after {CAP} s: {pending()}"

    # Every requested registration (also one whose 202 was lost in the kill) was
    # decided: no event lost, no handler left undone, nothing dead.
    requested = {e["data"]["registration_id"] for e in events(second, type="user.registration.requested")}
    assert {reg["id"] for reg, _ in regs} <= requested

    def undecided():
        approved = {e["data"]["registration_id"] for e in events(second, type="user.registration.approved")}
        return requested - approved

    assert poll(lambda: not undecided()), undecided()
    q = poll(lambda: (lambda s: s if s["ready"] == 0 and s["in_flight"] == 0 and s["delayed"] == 0 else None)(queue_stats(second)))
    assert q, queue_stats(second)
    assert q["dead"] == 0, admin_get(second, f"/v1/admin/queues/{QUEUE}/dead-letters")
    assert events(second, type="queue.message.dead_lettered") == []


# ---- a backlog whose handlers each fit well inside the visibility timeout -------------


@pytest.mark.slow
def test_backlog_within_visibility_timeout_calls_kyc_once_each(start_iotfin, kyc):
    """Each KYC call takes 200 ms, the visibility timeout is 2 s: however the bus
    batches its receives, no message may time out while it waits for its turn, so
    with nothing failing KYC sees exactly one verification per registration.

    To get a backlog every time: KYC hangs while 17 users register (the workers
    block on it), iotfin is killed, and the restart finds all 17 ready at once."""
    kyc.mode = "approve"
    kyc.gate.clear()
    env = bus_env(kyc, IOTFIN_VISIBILITY_TIMEOUT_MS=2000)
    first = start_iotfin(env=env)
    with ThreadPoolExecutor(max_workers=8) as pool:
        regs = list(pool.map(lambda _: register(first), range(17)))
    first.stop(signal.SIGKILL)
    with kyc.lock:
        kyc.requests.clear()
    kyc.delay = 0.2
    kyc.gate.set()

    srv = start_iotfin(env=env, data_dir=first.data_dir)

    def pending():
        return [reg["id"] for reg, token in regs if reg_status(srv, reg, token) != "approved"]

    assert poll(lambda: not pending(), step=0.1), pending()
    assert poll(lambda: (lambda s: s["in_flight"] == 0 and s["ready"] == 0)(queue_stats(srv)))
    time.sleep(0.3)
    refs = [body["reference"] for _, path, body in kyc.posts() if isinstance(body, dict)]
    dupes = {r: refs.count(r) for r in set(refs) if refs.count(r) > 1}
    assert len(refs) == 17 and not dupes, (
        f"{len(refs)} POST /verifications for 17 registrations, each call 200 ms with a "
        f"2 s visibility timeout; repeated: {dupes}"
    )
