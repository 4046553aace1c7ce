"""Reusable fake partners for the end-to-end tests (CONTRACT section 6).

FakeServer      a small threaded HTTP server on 127.0.0.1:0 with programmable
                answers per (method, path prefix) and a log of every request.
FakeKyc         the KYC partner: POST /verifications -> 201 {id, status} with the
                status chosen per email (or a default); GET /verifications/{id} ->
                the status set later.
FakeIdentity    the IDENTITY partner: POST /sessions -> 200 {subject, email, name}
                for a known username/password, 401 otherwise; 500 or down on demand.
FakeBank        the BANK partner's POST /notifications: answers 200 and records each
                delivery, or on command hangs (accepts, never answers), fails with
                503, or refuses connections (down()); heal() makes it answer again.
ForwardProxy    a plain forwarding HTTP proxy (absolute-URI requests) that counts
                and logs what goes through it.
sign_webhook    the `Iotfin-Signature` header value for a webhook body.
"""

import hashlib
import hmac
import http.client
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def sign_webhook(secret, body_bytes, t=None):
    """`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`."""
    if isinstance(body_bytes, str):
        body_bytes = body_bytes.encode()
    t = int(time.time()) if t is None else int(t)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body_bytes, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class Response:
    """A canned answer. body: dict/list (sent as JSON), bytes or str. drop=True closes
    the connection without answering (a partner that is 'down' mid-call)."""

    def __init__(self, status=200, body=None, headers=None, delay_ms=0, drop=False):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.delay_ms = delay_ms
        self.drop = drop


class Request:
    """One logged request."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.received_at = time.time()

    @property
    def json(self):
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def __repr__(self):
        return f"<{self.method} {self.path} {self.body[:200]!r}>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeServer:
    """Programmable HTTP server. Routes are (METHOD, path prefix) -> Response or a
    callable(request) returning a Response; the longest matching prefix wins. No
    match: 404 {"error": "no fake route"}. `down()` closes the listening socket (the
    port then refuses connections); `up()` listens on the same port again."""

    def __init__(self, name="fake"):
        self.name = name
        self.routes = {}
        self.log = []
        self._lock = threading.Lock()
        self.port = 0
        self._httpd = None
        self._thread = None
        self.up()

    # -- life -----------------------------------------------------------------

    def up(self):
        if self._httpd is not None:
            return self
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                fake._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        self._httpd = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def down(self):
        if self._httpd is None:
            return self
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        self._httpd = None
        return self

    stop = down

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    # -- programming ----------------------------------------------------------

    def set(self, method, prefix, response):
        """Programs (method, prefix); response is a Response or callable(request)."""
        with self._lock:
            self.routes[(method.upper(), prefix)] = response

    def clear(self, method, prefix):
        with self._lock:
            self.routes.pop((method.upper(), prefix), None)

    def requests(self, method=None, prefix=""):
        with self._lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method.upper()) and r.path.startswith(prefix)
            ]

    def clear_log(self):
        with self._lock:
            self.log.clear()

    def _route(self, method, path):
        with self._lock:
            best = None
            for (m, prefix), resp in self.routes.items():
                if m == method and path.startswith(prefix):
                    if best is None or len(prefix) > len(best[0]):
                        best = (prefix, resp)
            return best[1] if best else None

    # -- serving --------------------------------------------------------------

    def _handle(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        req = Request(h.command, h.path, {k: v for k, v in h.headers.items()}, body)
        with self._lock:
            self.log.append(req)
        route = self._route(h.command, urlsplit(h.path).path)
        try:
            resp = route(req) if callable(route) else route
        except Exception as e:  # a bug in a test's callable: answer 599 to make it visible
            resp = Response(599, {"error": f"fake handler raised {e!r}"})
        if resp is None:
            resp = Response(404, {"error": "no fake route", "path": h.path})
        if resp.delay_ms:
            time.sleep(resp.delay_ms / 1000)
        if resp.drop:
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            h.close_connection = True
            return
        payload = resp.body
        headers = dict(resp.headers)
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(payload, str):
            payload = payload.encode()
        elif payload is None:
            payload = b""
        h.send_response(resp.status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)


class FakeKyc(FakeServer):
    """KYC partner. The first answer to POST /verifications is chosen per email with
    plan(email, status) (default: self.default_status, "pending"); later GETs answer
    the verification's current status, changed with set_status(vid_or_email, status).
    verifications: {vid: {"id", "status", "reference", "email", "name"}}."""

    def __init__(self):
        self.plans = {}
        self.verifications = {}
        self.default_status = "pending"
        super().__init__("kyc")
        self.set("POST", "/verifications", self._create)
        self.set("GET", "/verifications/", self._get)

    def plan(self, email, status, then=None):
        """POST for this email answers `status`; if `then` is given, the verification
        turns to `then` after the first GET (i.e. approval comes by polling)."""
        with self._lock:
            self.plans[email.lower()] = (status, then)

    def _create(self, req):
        b = req.json or {}
        email = (b.get("email") or "").lower()
        with self._lock:
            status, then = self.plans.get(email, (self.default_status, None))
            vid = "kyc-" + uuid.uuid4().hex
            v = {
                "id": vid,
                "status": status,
                "then": then,
                "reference": b.get("reference"),
                "email": email,
                "name": b.get("name"),
                "gets": 0,
            }
            self.verifications[vid] = v
        return Response(201, {"id": vid, "status": status})

    def _get(self, req):
        vid = urlsplit(req.path).path[len("/verifications/"):]
        with self._lock:
            v = self.verifications.get(vid)
            if v is None:
                return Response(404, {"error": "no such verification"})
            status = v["status"]
            v["gets"] += 1
            if v["then"]:
                v["status"], v["then"] = v["then"], None
        return Response(200, {"id": vid, "status": status})

    def find(self, email=None, reference=None):
        with self._lock:
            for v in self.verifications.values():
                if (email and v["email"] == email.lower()) or (
                    reference and v["reference"] == reference
                ):
                    return dict(v)
        return None

    def set_status(self, key, status):
        """key: a verification id, an email or a reference (user id)."""
        with self._lock:
            for v in self.verifications.values():
                if key in (v["id"], v["email"], v["reference"]):
                    v["status"] = status
                    v["then"] = None
                    return True
        return False


class FakeIdentity(FakeServer):
    """IDENTITY partner. users: {username: {"password", "subject", "email", "name"}}.
    mode: "ok" (normal), "500" (answers 500), "drop" (closes the connection);
    down()/up() make the port refuse connections altogether."""

    def __init__(self):
        self.users = {}
        self.mode = "ok"
        super().__init__("identity")
        self.set("POST", "/sessions", self._sessions)

    def add_user(self, username, password, email=None, name=None, subject=None):
        with self._lock:
            self.users[username] = {
                "password": password,
                "subject": subject or "idp-" + uuid.uuid4().hex[:12],
                "email": email,
                "name": name or username,
            }
        return self.users[username]

    def _sessions(self, req):
        if self.mode == "500":
            return Response(500, {"error": "identity is broken"})
        if self.mode == "drop":
            return Response(drop=True)
        b = req.json or {}
        with self._lock:
            u = self.users.get(b.get("username"))
        if not u or u["password"] != b.get("password"):
            return Response(401, {"error": "invalid credentials"})
        out = {"subject": u["subject"], "name": u["name"]}
        if u["email"] is not None:
            out["email"] = u["email"]
        return Response(200, out)


class FakeBank(FakeServer):
    """BANK notifications. mode "ok" answers 200 and appends the CloudEvent to
    `delivered` (only answered calls count as deliveries); "hang" accepts the call
    and never answers (the handler waits until heal(), then drops the connection);
    "503" answers 503. down()/up() make the port refuse connections. `log` (from
    FakeServer) keeps every call, answered or not."""

    def __init__(self):
        self.mode = "ok"
        self.delivered = []
        self.healed_at = None
        self._healed = threading.Event()
        self._healed.set()
        super().__init__("bank")
        self.set("POST", "/notifications", self._notify)

    def hang(self):
        with self._lock:
            self._healed = threading.Event()
            self.mode = "hang"

    def fail(self, status=503):
        with self._lock:
            self.mode = str(status)

    def heal(self):
        """Answers 200 again from now on (and up() if it was down); returns the
        time.monotonic() of the heal."""
        self.up()
        with self._lock:
            self.mode = "ok"
            self._healed.set()
            self.healed_at = time.monotonic()
            return self.healed_at

    def stop(self):
        self._healed.set()
        self.down()

    def deliveries(self):
        """[(subject, data.event_id or event id)] answered 200, in arrival order."""
        with self._lock:
            return [
                (b.get("subject"), (b.get("data") or {}).get("event_id") or b.get("id"))
                for b in self.delivered
            ]

    def attempts(self):
        """[(subject, data.event_id)] of every notification call received."""
        out = []
        for r in self.requests("POST", "/notifications"):
            b = r.json if isinstance(r.json, dict) else {}
            out.append((b.get("subject"), (b.get("data") or {}).get("event_id") or b.get("id")))
        return out

    def _notify(self, req):
        with self._lock:
            mode, healed = self.mode, self._healed
        if mode == "hang":
            healed.wait(60)
            return Response(drop=True)
        if mode != "ok":
            return Response(int(mode), {"error": "bank unavailable"})
        body = req.json
        with self._lock:
            self.delivered.append(body if isinstance(body, dict) else {})
        return Response(200, {"accepted": True})


class ForwardProxy:
    """A minimal forwarding HTTP proxy: takes absolute-URI requests
    (`POST http://host:port/path HTTP/1.1`), forwards them, relays the answer.
    `count` and `log` ([(method, absolute url)]) show what went through it."""

    HOP = {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }

    def __init__(self):
        self.log = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def _any(self):
                proxy._forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

            def do_CONNECT(self):
                self.send_error(501, "CONNECT not supported by this test proxy")

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def count(self):
        with self._lock:
            return len(self.log)

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _forward(self, h):
        target = urlsplit(h.path)
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else None
        with self._lock:
            self.log.append((h.command, h.path))
        if target.scheme != "http" or not target.hostname:
            h.send_error(400, "absolute http:// URI required")
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in self.HOP}
        path = target.path or "/"
        if target.query:
            path += "?" + target.query
        try:
            conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
            conn.request(h.command, path, body=body, headers=headers)
            up = conn.getresponse()
            data = up.read()
            status, reason, up_headers = up.status, up.reason, up.getheaders()
            conn.close()
        except OSError as e:
            h.send_error(502, f"upstream: {e}")
            return
        h.send_response(status, reason)
        for k, v in up_headers:
            if k.lower() not in self.HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
