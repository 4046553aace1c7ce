"""CONTRACT section 12, the console's defences without a browser: no cookie, a wrong
token and cross-site calls are refused; the cookie is HttpOnly, SameSite=Strict and
holds a session id, never the token; sign-out ends the session everywhere; the
token is in no log line; the console's files come fast and only from here."""

import re
import subprocess
import time

import pytest

from conftest import Iotfin, assert_problem

ENV = {"IOTFIN_AUTH_RATE": "10000", "IOTFIN_ACCESS_LOG": "all"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    inst = Iotfin(tmp_path_factory.mktemp("console-sec"), env=ENV)
    inst.start()
    yield inst
    problems = inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


def origin(srv):
    return {"Origin": srv.url}


def sign_in(srv, token=None):
    """POST /console/api/session from the console's own origin: (response, sid, csrf)."""
    r = srv.post("/console/api/session", json={"token": token or srv.admin_token},
                 headers=origin(srv), cookies={})
    sid = r.cookies.get("iotfin_console")
    srv.session.cookies.clear()  # each call below says which cookie it sends
    return r, sid, (r.json().get("csrf_token") if r.status_code == 201 else None)


def test_console_api_needs_the_session_cookie(srv):
    for path in ("/console/api/overview", "/console/api/queues", "/console/api/alarms",
                 "/console/api/events", "/console/api/stream", "/console/api/session",
                 "/console/api/devices/nope", "/console/api/queues/bank-forwarder/dead-letters",
                 "/console/api/partner-calls"):
        r = srv.get(path)
        assert_problem(r, 401, "unauthenticated")
        # The admin token as a bearer is not a console session either: the console's
        # routes are for the browser's cookie only.
        r = srv.get(path, headers=srv.admin_headers())
        assert_problem(r, 401, "unauthenticated")
        r = srv.get(path, cookies={"iotfin_console": "0" * 64})
        assert_problem(r, 401, "unauthenticated")


def test_wrong_token_is_401_and_sets_no_cookie(srv):
    r, sid, _ = sign_in(srv, token="not-" + srv.admin_token)
    assert_problem(r, 401, "unauthenticated")
    assert sid is None and "Set-Cookie" not in r.headers, r.headers


def test_the_cookie_is_httponly_strict_and_not_the_token(srv):
    r, sid, csrf = sign_in(srv)
    assert r.status_code == 201, r.text
    cookie = r.headers["Set-Cookie"]
    parts = [p.strip() for p in cookie.split(";")]
    assert "HttpOnly" in parts and "SameSite=Strict" in parts and "Path=/console" in parts, cookie
    assert "Secure" not in parts, cookie  # plain HTTP here; test_82 would cover HTTPS
    assert srv.admin_token not in cookie and srv.admin_token not in r.text
    assert len(sid) == 64 and len(csrf) == 64 and sid != csrf
    assert r.headers.get("Cache-Control") == "no-store", r.headers
    r = srv.get("/console/api/overview", cookies={"iotfin_console": sid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"queues", "alarms", "devices", "event_seq", "now_ms"} <= set(body), body


def test_cross_site_posts_are_403(srv):
    _, sid, csrf = sign_in(srv)
    ck = {"iotfin_console": sid}
    path = "/console/api/queues/bank-forwarder/redrive"
    good = {"Origin": srv.url, "X-CSRF-Token": csrf}
    # Another origin, even with the right CSRF token.
    r = srv.post(path, json={}, cookies=ck, headers={**good, "Origin": "https://evil.example"})
    assert_problem(r, 403, "forbidden")
    # No Origin at all.
    r = srv.post(path, json={}, cookies=ck, headers={"X-CSRF-Token": csrf})
    assert_problem(r, 403, "forbidden")
    # The right origin but a cross-site fetch by the browser's own account.
    r = srv.post(path, json={}, cookies=ck, headers={**good, "Sec-Fetch-Site": "cross-site"})
    assert_problem(r, 403, "forbidden")
    # No CSRF token, or another session's.
    r = srv.post(path, json={}, cookies=ck, headers={"Origin": srv.url})
    assert_problem(r, 403, "forbidden")
    _, _, other_csrf = sign_in(srv)
    r = srv.post(path, json={}, cookies=ck, headers={**good, "X-CSRF-Token": other_csrf})
    assert_problem(r, 403, "forbidden")
    # Sign-out is state-changing too.
    r = srv.delete("/console/api/session", cookies=ck, headers={"Origin": "https://evil.example",
                                                                "X-CSRF-Token": csrf})
    assert_problem(r, 403, "forbidden")
    # A sign-in posted from another site is refused before the token is looked at.
    r = srv.post("/console/api/session", json={"token": srv.admin_token},
                 headers={"Origin": "https://evil.example"})
    assert_problem(r, 403, "forbidden")
    assert "Set-Cookie" not in r.headers
    # With both proofs the same call works.
    r = srv.post(path, json={}, cookies=ck, headers=good)
    assert r.status_code == 200 and r.json() == {"redriven": 0}, r.text


def test_sign_out_ends_the_session_and_its_stream(srv):
    _, sid, csrf = sign_in(srv)
    ck = {"iotfin_console": sid}
    stream = srv.session.get(srv.url + "/console/api/stream", cookies=ck, stream=True, timeout=10)
    assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    lines = stream.iter_lines(decode_unicode=True)
    assert next(lines).startswith(":"), "no stream preamble"
    r = srv.delete("/console/api/session", cookies=ck, headers={"Origin": srv.url,
                                                                "X-CSRF-Token": csrf})
    assert r.status_code == 204, r.text
    assert "Max-Age=0" in r.headers["Set-Cookie"], r.headers
    assert_problem(srv.get("/console/api/overview", cookies=ck), 401, "unauthenticated")
    # The open stream ends with the session at its next event.
    srv.post("/v1/admin/devices/import", json={"devices": [{"serial": "SEC-81-0001"}]},
             headers=srv.admin_headers())
    deadline = time.monotonic() + 5
    ended = False
    try:
        for _ in lines:
            if time.monotonic() > deadline:
                break
        ended = True
    except Exception:  # the server closed it: that is the point
        ended = True
    assert ended and time.monotonic() <= deadline + 1
    stream.close()


def test_the_stream_resumes_after_last_event_id_and_filters(srv):
    _, sid, _ = sign_in(srv)
    ck = {"iotfin_console": sid}
    for s in ("SEC-81-A001", "SEC-81-A002"):
        srv.post("/v1/admin/devices/import", json={"devices": [{"serial": s}]},
                 headers=srv.admin_headers())
    r = srv.get("/console/api/events", params={"limit": 50}, cookies=ck)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) >= 2 and items[0]["id"] != items[1]["id"], items
    newest, before = items[0], items[1]  # newest first
    # Resuming after the one before the newest replays the newest, and only events.
    resp = srv.session.get(srv.url + "/console/api/stream", cookies=ck, stream=True, timeout=10,
                           headers={"Last-Event-ID": before["id"]})
    got = None
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("id: "):
            got = line[4:]
            break
    resp.close()
    assert got == newest["id"], (got, newest)
    # Type filters: exact, or a prefix ending in *.
    r = srv.get("/console/api/events", params={"type": "nothing.*"}, cookies=ck)
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    r = srv.get("/console/api/events", params={"type": newest["type"][:3] + "*"}, cookies=ck)
    assert newest["id"] in [e["id"] for e in r.json()["items"]], r.text


def test_console_files_are_fast_small_and_locked_to_this_origin(srv):
    t0 = time.monotonic()
    total = 0
    for path, ctype in (("/console/", "text/html"), ("/console/console.css", "text/css"),
                        ("/console/console.js", "text/javascript")):
        r = srv.get(path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), (path, r.headers)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        text = r.text.replace("http://www.w3.org/2000/svg", "")  # a name, not a request
        assert not re.search(r"(https?:|wss?:)?//[a-z0-9.-]+\.[a-z]", text), \
            f"{path} names another origin"
        # Nothing is put in storage a script or another visit could read back.
        assert not re.search(r"(localStorage|sessionStorage|indexedDB)\s*[.\[]|document\.cookie\s*=",
                             r.text), path
        total += len(r.content)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.3, f"the console's three files took {elapsed * 1000:.0f} ms"
    assert total < 64 * 1024, total
    r = srv.get("/console", allow_redirects=False)
    assert r.status_code == 308 and r.headers["Location"] == "/console/", r.headers
    assert_problem(srv.get("/console/no-such-file.js"), 404, "not_found")
    assert_problem(srv.post("/console/"), 405, "method_not_allowed")


def test_the_token_is_in_no_log_line(srv):
    sign_in(srv)
    sign_in(srv, token="wrong-" + srv.admin_token)
    assert srv.get("/healthz").status_code == 200
    time.sleep(0.1)
    log = srv.stderr_text()
    assert "/console/api/session" in log, "no access-log line for the sign-in"
    assert srv.admin_token not in log


def test_openapi_documents_the_console_api_with_its_cookie(srv):
    doc = srv.get("/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["consoleSession"]
    assert scheme == {**scheme, "type": "apiKey", "in": "cookie", "name": "iotfin_console"}
    op = doc["paths"]["/console/api/queues/{name}/redrive"]["post"]
    assert op["security"] == [{"consoleSession": []}], op
    assert not doc["paths"]["/console/api/session"]["post"].get("security")


def test_over_https_the_cookie_is_secure_and_the_origin_is_https(start_iotfin, tmp_path):
    # A throwaway self-signed certificate for 127.0.0.1.
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", "key.pem", "-out", "cert.pem"],
                   cwd=tmp_path, check=True, capture_output=True)
    tls = start_iotfin(env={**ENV, "IOTFIN_TLS_CERT": tmp_path / "cert.pem",
                            "IOTFIN_TLS_KEY": tmp_path / "key.pem"})
    assert tls.url.startswith("https://"), tls.url
    tls.session.trust_env = False
    tls.session.verify = str(tmp_path / "cert.pem")
    body = {"token": tls.admin_token}
    # The http:// spelling of the same host is another origin.
    r = tls.post("/console/api/session", json=body, headers={"Origin": tls.url.replace(
        "https://", "http://")})
    assert_problem(r, 403, "forbidden")
    r = tls.post("/console/api/session", json=body, headers={"Origin": tls.url})
    assert r.status_code == 201, r.text
    parts = [p.strip() for p in r.headers["Set-Cookie"].split(";")]
    assert "Secure" in parts and "HttpOnly" in parts and "SameSite=Strict" in parts, parts
