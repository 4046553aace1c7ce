"""Helpers for the device-side end-to-end tests (CONTRACT sections 4 and 5).

poll                 bounded polling (50 ms steps)
bearer               an Authorization header
make_users           approved users, fast: anonymous session -> POST /v1/registrations ->
                     wait approved -> POST /v1/registrations/{id}/session; several users
                     are registered first and waited for together (KYC takes ~2 s)
import_serials       POST /v1/admin/devices/import as admin
claim / get_device / wait_status / claim_active
get_credentials      POST /v1/devices/{id}/credentials (201 checked)
admin_events         GET /v1/admin/events, every page
mock_override / mock_clear / mock_requests / mock_clear_requests
queue_stats          GET /v1/admin/queues as {name: item}
metric_sum           a counter's sum over its series in /metrics
DeviceClient         a paho (1.6.1) MQTT v5 device: client_id = username = device id,
                     password = device token; subscribes devices/<id>/#; records every
                     message; can auto-ack commands; publishes events, requests, acks
SseReader            GET /v1/events/stream read line by line on a thread into frames
"""

import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import poll, bearer

STEP = 0.05
CAP = 10.0
PASSWORD = "correct-horse-battery-9"






def unique(tag):
    return f"{tag}-{uuid.uuid4().hex[:12]}"


def unique_serial(tag="SN"):
    return f"{tag}-{uuid.uuid4().hex[:16].upper()}"


# ---- users --------------------------------------------------------------------------------


class User:
    def __init__(self, id, email, token, refresh_token=None):
        self.id = id
        self.email = email
        self.token = token
        self.refresh_token = refresh_token

    @property
    def headers(self):
        return bearer(self.token)

    def __repr__(self):
        return f"User({self.id}, {self.email})"


def make_users(srv, n=1, tag="dev", timeout=CAP):
    """n approved local users with user sessions, registered in parallel."""
    pending = []
    for _ in range(n):
        r = srv.post("/v1/sessions/anonymous")
        assert r.status_code == 201, r.text
        anon = r.json()["access_token"]
        email = f"{unique(tag)}@example.com"
        r = srv.post(
            "/v1/registrations",
            json={"type": "local", "email": email, "password": PASSWORD, "name": "Dee Vice"},
            headers=bearer(anon),
        )
        assert r.status_code == 202, r.text
        body = r.json()
        reg = body["registration"]
        assert reg["status"] == "pending", body
        pending.append((reg, body["access_token"], email))
    users = []
    for reg, token, email in pending:

        def approved():
            r = srv.get(f"/v1/registrations/{reg['id']}", headers=bearer(token))
            assert r.status_code == 200, r.text
            return r.json()["status"] == "approved"

        assert poll(approved, timeout), f"registration {reg['id']} not approved in {timeout} s"
        r = srv.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(token))
        assert r.status_code == 201, r.text
        s = r.json()
        assert s["tier"] == "user", s
        users.append(User(reg["user_id"], email, s["access_token"], s.get("refresh_token")))
    return users


def make_user(srv, tag="dev"):
    return make_users(srv, 1, tag)[0]


# ---- devices ------------------------------------------------------------------------------


def import_serials(srv, serials, model="meter-1"):
    r = srv.post(
        "/v1/admin/devices/import",
        json={"devices": [{"serial": s, "model": model} for s in serials]},
        headers=srv.admin_headers(),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["invalid"] == [], body
    return body


def claim(srv, user, serial, headers=None):
    return srv.post("/v1/devices", json={"serial": serial}, headers={**user.headers, **(headers or {})})


def get_device(srv, user, device_id):
    r = srv.get(f"/v1/devices/{device_id}", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(srv, user, device_id, status, timeout=CAP):
    """Polls GET /v1/devices/{id} until its status is `status`; returns the last body."""
    last = {}

    def check():
        last["d"] = get_device(srv, user, device_id)
        return last["d"]["status"] == status

    poll(check, timeout)
    return last["d"]


def claim_active(srv, user, serial=None, timeout=CAP):
    """Imports a fresh serial (unless given), claims it and waits for `active`."""
    serial = serial or unique_serial()
    import_serials(srv, [serial])
    r = claim(srv, user, serial)
    assert r.status_code == 202, r.text
    dev = r.json()
    d = wait_status(srv, user, dev["id"], "active", timeout)
    assert d["status"] == "active", d
    return d


def get_credentials(srv, user, device_id):
    r = srv.post(f"/v1/devices/{device_id}/credentials", headers=user.headers)
    assert r.status_code == 201, r.text
    return r.json()


def send_command(srv, user, device_id, type="reboot", payload=None, ttl=None, headers=None):
    body = {"type": type, "payload": payload if payload is not None else {}}
    if ttl is not None:
        body["ttl_seconds"] = ttl
    return srv.post(
        f"/v1/devices/{device_id}/commands", json=body, headers={**user.headers, **(headers or {})}
    )


def get_command(srv, user, device_id, cid):
    r = srv.get(f"/v1/devices/{device_id}/commands/{cid}", headers=user.headers)
    assert r.status_code == 200, r.text
    return r.json()


def wait_command(srv, user, device_id, cid, status, timeout=CAP):
    last = {}

    def check():
        last["c"] = get_command(srv, user, device_id, cid)
        return last["c"]["status"] == status

    poll(check, timeout)
    return last["c"]


def device_events(srv, user, device_id, **params):
    r = srv.get(f"/v1/devices/{device_id}/events", headers=user.headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


# ---- admin and mock ------------------------------------------------------------------------


def admin_events(srv, **q):
    """Every event of the log matching q (type=, subject=), oldest first."""
    items, cursor = [], None
    for _ in range(200):
        params = dict(q, limit=200)
        if cursor:
            params["cursor"] = cursor
        r = srv.get("/v1/admin/events", params=params, headers=srv.admin_headers())
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            break
    return items


def queue_stats(srv):
    r = srv.get("/v1/admin/queues", headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    return {q["name"]: q for q in r.json()["items"]}


def mock_override(srv, **spec):
    r = srv.put("/mock/_control/responses", json=spec, headers=srv.admin_headers())
    assert r.status_code == 201, r.text


def mock_clear(srv):
    r = srv.delete("/mock/_control/responses", headers=srv.admin_headers())
    assert r.status_code in (200, 204), r.text


def mock_requests(srv, partner):
    r = srv.get("/mock/_control/requests", params={"partner": partner},
                headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    return r.json()["items"]


def mock_clear_requests(srv):
    r = srv.delete("/mock/_control/requests", headers=srv.admin_headers())
    assert r.status_code in (200, 204), r.text


def metric_sum(srv, name):
    """Sum of every series of `name` in /metrics (0 when absent)."""
    r = srv.get("/metrics")
    assert r.status_code == 200, r.text
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            total += float(value)
    return total


# ---- MQTT device ------------------------------------------------------------------------


def rc_value(rc):
    """An int from paho's ReasonCodes object or int."""
    return rc.value if hasattr(rc, "value") else int(rc)


class Message:
    def __init__(self, topic, payload):
        self.topic = topic
        self.payload = payload
        self.at = time.monotonic()

    @property
    def json(self):
        return json.loads(self.payload)

    def __repr__(self):
        return f"Message({self.topic!r}, {self.payload[:200]!r})"


class DeviceClient:
    """One MQTT v5 device connection. connect() returns the CONNACK reason code (0 =
    accepted); when accepted and subscribe is set, it subscribes `devices/<id>/#`
    (QoS 1, no-local) and waits for the SUBACK. auto_ack: None, "succeeded" or
    "failed" - every command received is acked with that status and
    result {"echo": <command type>}."""

    def __init__(
        self,
        host,
        port,
        device_id,
        password,
        client_id=None,
        username=None,
        keepalive=30,
        auto_ack=None,
        anonymous=False,
    ):
        self.host, self.port = host, port
        self.device_id = device_id
        self.keepalive = keepalive
        self.auto_ack = auto_ack
        self.messages = []
        self.lock = threading.Lock()
        self.connack = None
        self.disconnected = threading.Event()
        self.disconnect_rc = None
        self.suback = {}
        self.puback = {}
        self.client = mqtt.Client(
            client_id=client_id if client_id is not None else device_id, protocol=mqtt.MQTTv5
        )
        if not anonymous:
            self.client.username_pw_set(
                username if username is not None else device_id, password
            )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._looping = False

    # -- callbacks (network thread) --
    def _on_connect(self, client, userdata, flags, rc, properties=None):
        self.connack = rc_value(rc)
        self._connected.set()

    def _on_disconnect(self, client, userdata, rc, properties=None):
        self.disconnect_rc = rc_value(rc) if rc is not None else None
        self.disconnected.set()
        # No automatic reconnect: a device the broker dropped stays dropped (paho's
        # loop_forever would otherwise reconnect, and a reconnect with the same client
        # id would take the session over from another test client).
        self.client._thread_terminate = True

    def _on_subscribe(self, client, userdata, mid, rcs, properties=None):
        self.suback[mid] = [rc_value(x) for x in rcs]

    def _on_publish(self, client, userdata, mid):
        self.puback[mid] = True

    def _on_message(self, client, userdata, msg):
        m = Message(msg.topic, bytes(msg.payload))
        with self.lock:
            self.messages.append(m)
        if self.auto_ack and msg.topic == f"devices/{self.device_id}/commands":
            try:
                cmd = m.json
                self.ack(cmd["id"], self.auto_ack, {"echo": cmd.get("type")})
            except (ValueError, KeyError, TypeError):
                pass

    # -- connection --
    def connect(self, timeout=5, subscribe=True):
        """Returns the CONNACK reason code, or None when none came in time. A refused
        client is stopped (no reconnect loop)."""
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._looping = True
        self._connected.wait(timeout)
        if self.connack != 0:
            self.close()
            return self.connack
        if subscribe:
            rcs = self.subscribe(f"devices/{self.device_id}/#")
            assert rcs is not None and rcs[0] < 0x80, f"own subscription refused: {rcs}"
        return 0

    def subscribe(self, topic, qos=1, timeout=5):
        """Subscribes and returns the SUBACK reason codes (None if no SUBACK)."""
        opts = SubscribeOptions(qos=qos, noLocal=True)
        rc, mid = self.client.subscribe(topic, options=opts)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        poll(lambda: mid in self.suback, timeout)
        return self.suback.get(mid)

    def close(self):
        """Clean disconnect (DISCONNECT packet), then stops the loop."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        if self._looping:
            self.client.loop_stop()
            self._looping = False

    def freeze(self):
        """Stops the network loop without closing the socket: the device goes silent
        (no PINGREQ, no DISCONNECT), as when its network dies."""
        if self._looping:
            self.client._thread_terminate = True
            self.client.loop_stop()
            self._looping = False

    def kill_socket(self):
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def last_packet_out(self):
        """time.monotonic() of the last packet this client sent (paho's own record)."""
        return self.client._last_msg_out

    @property
    def is_connected(self):
        return self.client.is_connected()

    # -- publishing --
    def publish(self, topic, payload, qos=1, timeout=5):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos)
        if qos > 0 and info.rc == mqtt.MQTT_ERR_SUCCESS:
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        return info

    def publish_event(self, event, qos=1):
        return self.publish(f"devices/{self.device_id}/events", event, qos)

    def ack(self, cid, status="succeeded", result=None):
        body = {"status": status}
        if result is not None:
            body["result"] = result
        return self.publish(f"devices/{self.device_id}/commands/{cid}/ack", body, qos=1, timeout=0)

    def request(self, name, data=None, request_id=None, timeout=5):
        """Publishes a request and waits for its response; returns (response body or
        None, seconds it took)."""
        rid = request_id or uuid.uuid4().hex
        t0 = time.monotonic()
        self.publish(
            f"devices/{self.device_id}/requests/{name}",
            {"request_id": rid, "data": data if data is not None else {}},
        )
        m = self.wait_message(f"devices/{self.device_id}/responses/{rid}", timeout)
        return (m.json if m else None), time.monotonic() - t0

    # -- receiving --
    def received(self, topic=None):
        with self.lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def commands(self):
        return [m.json for m in self.received(f"devices/{self.device_id}/commands")]

    def wait_message(self, topic, timeout=5):
        got = poll(lambda: self.received(topic), timeout)
        return got[0] if got else None

    def wait_commands(self, n, timeout=5):
        poll(lambda: len(self.commands()) >= n, timeout)
        return self.commands()


def device_connect(srv, creds, **kw):
    """A DeviceClient for the credentials answer, connected and subscribed."""
    dev = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"], **kw)
    rc = dev.connect()
    if rc != 0:
        # The server's last lines (its broker's among them) say why, should this ever
        # happen where it should not.
        tail = "\n".join(srv.stderr_lines()[-20:]) if hasattr(srv, "stderr_lines") else ""
        raise AssertionError(f"device {creds['client_id']} refused: CONNACK {rc}\n{tail}")
    return dev


# ---- Server-Sent Events ------------------------------------------------------------------


class SseReader:
    """Opens GET /v1/events/stream and parses frames on a thread. frames: list of
    dicts {id, event, data (parsed JSON or raw), at}; comments: list of comment lines."""

    def __init__(self, srv, token, last_event_id=None):
        headers = {"Accept": "text/event-stream"}
        if token:
            headers.update(bearer(token))
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.t0 = time.monotonic()
        self.resp = requests.get(
            srv.url + "/v1/events/stream", headers=headers, stream=True, timeout=(5, 30)
        )
        self.headers_after = time.monotonic() - self.t0
        self.frames = []
        self.comments = []
        self.lock = threading.Lock()
        self.error = None
        self.thread = None
        if self.resp.status_code == 200:
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self):
        cur = {}
        data_lines = []
        buf = b""
        try:
            while True:
                chunk = self.resp.raw.read1(4096) if hasattr(self.resp.raw, "read1") else None
                if chunk is None:
                    chunk = self.resp.raw.read(1)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8").rstrip("\r")
                    if line == "":
                        if data_lines or cur:
                            data = "\n".join(data_lines)
                            try:
                                parsed = json.loads(data)
                            except ValueError:
                                parsed = data
                            frame = dict(cur, data=parsed, at=time.monotonic())
                            with self.lock:
                                self.frames.append(frame)
                        cur, data_lines = {}, []
                    elif line.startswith(":"):
                        with self.lock:
                            self.comments.append(line)
                    else:
                        field, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "data":
                            data_lines.append(value)
                        elif field in ("id", "event", "retry"):
                            cur[field] = value
        except Exception as e:  # closed by close(), or a broken stream
            self.error = e

    def snapshot(self):
        with self.lock:
            return list(self.frames)

    def wait_frame(self, pred, timeout=5):
        """The first frame satisfying pred, or None."""
        got = poll(lambda: [f for f in self.snapshot() if pred(f)], timeout, step=0.01)
        return got[0] if got else None

    def _socket(self):
        """The stream's socket (urllib3 1.26 / http.client internals), or None."""
        conn = getattr(self.resp.raw, "_connection", None)
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is None:
            try:
                sock = self.resp.raw._fp.fp.raw._sock
            except AttributeError:
                sock = None
        return sock

    def close(self):
        """Shuts the socket down first: a reader blocked in recv holds the buffered
        reader's lock, so a plain close() would wait for the read timeout."""
        import socket

        sock = self._socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.thread is not None:
            self.thread.join(2)
        try:
            self.resp.close()
        except Exception:
            pass
