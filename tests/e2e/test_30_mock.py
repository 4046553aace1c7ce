"""CONTRACT section 7, the partner mock, seen from outside: the four answer sources
in order (runtime override, file, first 2xx OpenAPI example, 404), `_` folders and
`{param}` override paths, `times`, clearing, headers/status/delay, templating, the
request log, signed callbacks into iotfin, IOTFIN_MOCK=off, the shipped mock files
running journey step 2 offline (local and partner users) and the absence of rate
limits on the mock.

Most tests share one server whose IOTFIN_MOCK_DIR is a tmp dir the tests fill
(answer files are read on every call, so a test may add or remove files at will);
the shipped-files tests start their own server on the repo's mocks/."""

import json
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Iotfin, assert_problem, poll, bearer

SHIPPED_MOCKS = REPO_ROOT / "mocks"
STEP = 0.05
CAP = 15.0
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PASSWORD = "correct-horse-battery"


# ---- helpers ---------------------------------------------------------------------------






def unique(tag):
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path


def answer_file(mock_dir, partner, path, method, obj):
    """Writes <mock_dir>/<partner>/<path>/<METHOD>.json."""
    p = Path(mock_dir) / partner
    for seg in path.strip("/").split("/"):
        p = p / seg
    return write_json(p / f"{method.upper()}.json", obj)


def put_override(srv, **spec):
    r = srv.put("/mock/_control/responses", json=spec, headers=srv.admin_headers())
    assert r.status_code == 201, r.text
    return r


def clear_overrides(srv):
    r = srv.delete("/mock/_control/responses", headers=srv.admin_headers())
    assert r.status_code in (200, 204), r.text


def clear_log(srv):
    r = srv.delete("/mock/_control/requests", headers=srv.admin_headers())
    assert r.status_code in (200, 204), r.text


def mock_log(srv, partner=None):
    r = srv.get("/mock/_control/requests", params={"partner": partner} if partner else None,
                headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body.get("items"), list), body
    return body["items"]


def header(headers, name):
    """Case-insensitive look-up in a logged headers object."""
    for k, v in (headers or {}).items():
        if k.lower() == name.lower():
            return v
    return None


def events(srv, **q):
    """Every event of the log matching q (all pages)."""
    out, cursor = [], None
    for _ in range(200):
        params = dict(q, limit=200)
        if cursor:
            params["cursor"] = cursor
        r = srv.get("/v1/admin/events", params=params, headers=srv.admin_headers())
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return out
    pytest.fail("event log pagination does not end")


def anonymous(srv):
    r = srv.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    return r.json()["access_token"]


def register(srv, body):
    r = srv.post("/v1/registrations", json=body, headers=bearer(anonymous(srv)))
    assert r.status_code == 202, r.text
    out = r.json()
    return out["registration"], out["access_token"]


def registration_status(srv, reg, token):
    r = srv.get(f"/v1/registrations/{reg['id']}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def wait_approved(srv, reg, token, timeout=CAP):
    body = poll(
        lambda: (lambda b: b if b["status"] != "pending" else None)(registration_status(srv, reg, token)),
        timeout,
    )
    assert body, f"registration {reg['id']} still pending after {timeout} s"
    assert body["status"] == "approved", body
    return body


def parse_ts(s):
    from datetime import datetime

    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


# ---- fixtures --------------------------------------------------------------------------

# The OpenAPI documents of the tmp mock dir. `supplier` has the operations the answer
# source tests use; `identity` has none (no folder at all).
SUPPLIER_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "test supplier", "version": "1"},
    "paths": {
        "/order": {
            "post": {
                "responses": {
                    "400": {
                        "description": "bad",
                        "content": {"application/json": {"example": {"source": "openapi-400"}}},
                    },
                    "201": {
                        "description": "created",
                        "content": {"application/json": {"example": {"source": "openapi", "n": 1}}},
                    },
                    "202": {
                        "description": "accepted",
                        "content": {"application/json": {"example": {"source": "openapi-202"}}},
                    },
                }
            },
            "get": {
                "responses": {
                    "200": {
                        "description": "named examples",
                        "content": {
                            "application/json": {
                                "examples": {"first": {"value": {"source": "openapi-examples"}}}
                            }
                        },
                    }
                }
            },
        },
        "/order/{id}": {
            "get": {
                "responses": {
                    "200": {
                        "description": "one",
                        "content": {"application/json": {"example": {"source": "openapi-param"}}},
                    },
                    "404": {"description": "none"},
                }
            }
        },
        "/only-errors": {"get": {"responses": {"404": {"description": "never found"}}}},
    },
}


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mockdir")
    write_json(d / "supplier" / "openapi.json", SUPPLIER_OPENAPI)
    return d


@pytest.fixture(scope="module")
def srv(tmp_path_factory, mock_dir):
    inst = Iotfin(
        tmp_path_factory.mktemp("mock"),
        env={"IOTFIN_MOCK_DIR": str(mock_dir), "IOTFIN_AUTH_RATE": "10000", "IOTFIN_MOCK": "on"},
    )
    inst.start()
    yield inst
    problems = inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def clean(srv):
    """A shared server with no overrides and an empty request log."""
    clear_overrides(srv)
    clear_log(srv)
    yield srv
    clear_overrides(srv)


def shipped_env(**extra):
    env = {"IOTFIN_MOCK_DIR": str(SHIPPED_MOCKS), "IOTFIN_AUTH_RATE": "10000", "IOTFIN_MOCK": "on"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- answer sources ---------------------------------------------------------------------


def test_the_four_answer_sources_in_order(clean, mock_dir):
    srv = clean
    f = mock_dir / "supplier" / "order" / "POST.json"
    if f.exists():
        f.unlink()

    # Step 1: no override, no file: the first 2xx example of openapi.json.
    r = srv.post("/mock/supplier/order", json={"x": 1})
    assert r.status_code == 201, r.text
    assert r.json() == {"source": "openapi", "n": 1}, r.text

    # Step 2: a file beats the example.
    answer_file(mock_dir, "supplier", "/order", "POST", {"status": 202, "body": {"source": "file"}})
    r = srv.post("/mock/supplier/order", json={"x": 1})
    assert r.status_code == 202, r.text
    assert r.json() == {"source": "file"}, r.text

    # Step 3: an override beats the file.
    put_override(srv, partner="supplier", method="POST", path="/order", status=200,
                 body={"source": "override"})
    r = srv.post("/mock/supplier/order", json={"x": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"source": "override"}, r.text
    # An override for another method leaves this one alone.
    r = srv.get("/mock/supplier/order")
    assert r.status_code == 200 and r.json() == {"source": "openapi-examples"}, r.text

    # Step 4: DELETE clears the overrides: the file again.
    clear_overrides(srv)
    r = srv.post("/mock/supplier/order", json={"x": 1})
    assert r.status_code == 202 and r.json() == {"source": "file"}, r.text

    # Step 5: the file is gone: the example again (files are read on every call).
    f.unlink()
    r = srv.post("/mock/supplier/order", json={"x": 1})
    assert r.status_code == 201 and r.json() == {"source": "openapi", "n": 1}, r.text


def test_openapi_examples_match_templated_paths_and_named_examples(clean):
    srv = clean
    r = srv.get("/mock/supplier/order/o-42")
    assert r.status_code == 200, r.text
    assert r.json() == {"source": "openapi-param"}, r.text
    r = srv.get("/mock/supplier/order")
    assert r.status_code == 200, r.text
    assert r.json() == {"source": "openapi-examples"}, r.text


def test_no_answer_is_404_not_found(clean):
    srv = clean
    # An operation with no 2xx response, a path no source knows, a method no source
    # knows, a partner with no mock folder at all.
    for method, path in [
        ("GET", "/mock/supplier/only-errors"),
        ("GET", "/mock/supplier/nowhere/at/all"),
        ("DELETE", "/mock/supplier/order"),
        ("POST", "/mock/identity/sessions"),
        ("GET", "/mock/supplier/order/o-1/extra"),
    ]:
        r = srv.request(method, path, json={"a": 1} if method == "POST" else None)
        assert_problem(r, 404, "not_found")


def test_file_status_headers_and_body_are_applied(clean, mock_dir):
    srv = clean
    answer_file(
        mock_dir, "supplier", "/hdr", "POST",
        {"status": 207, "headers": {"X-Mock-Source": "file", "Retry-After": "7"},
         "body": {"ok": True, "list": [1, 2, {"three": 3}]}},
    )
    r = srv.post("/mock/supplier/hdr", json={})
    assert r.status_code == 207, r.text
    assert r.headers.get("X-Mock-Source") == "file", dict(r.headers)
    assert r.headers.get("Retry-After") == "7", dict(r.headers)
    assert r.json() == {"ok": True, "list": [1, 2, {"three": 3}]}, r.text

    # A file answering with a partner error status: status and body as written.
    answer_file(mock_dir, "supplier", "/refuse", "POST",
                {"status": 409, "body": {"error": "already registered"}})
    r = srv.post("/mock/supplier/refuse", json={})
    assert r.status_code == 409, r.text
    assert r.json() == {"error": "already registered"}, r.text


def test_override_status_and_headers_are_applied(clean):
    srv = clean
    put_override(srv, partner="bank", method="POST", path="/notifications", status=503,
                 headers={"X-Override": "yes"}, body={"error": "down for maintenance"})
    r = srv.post("/mock/bank/notifications", json={"specversion": "1.0"})
    assert r.status_code == 503, r.text
    assert r.headers.get("X-Override") == "yes", dict(r.headers)
    assert r.json() == {"error": "down for maintenance"}, r.text


def test_underscore_folder_matches_any_one_segment_exact_beats_it(clean, mock_dir):
    srv = clean
    answer_file(mock_dir, "supplier", "/items/_", "GET", {"status": 200, "body": {"source": "wildcard"}})
    answer_file(mock_dir, "supplier", "/items/special", "GET", {"status": 200, "body": {"source": "exact"}})
    answer_file(mock_dir, "supplier", "/items/_/parts", "GET",
                {"status": 200, "body": {"source": "wildcard-parts"}})

    for seg in ("abc", "12345", unique("x")):
        r = srv.get(f"/mock/supplier/items/{seg}")
        assert r.status_code == 200 and r.json() == {"source": "wildcard"}, (seg, r.text)
    r = srv.get("/mock/supplier/items/special")
    assert r.status_code == 200 and r.json() == {"source": "exact"}, r.text
    r = srv.get("/mock/supplier/items/abc/parts")
    assert r.status_code == 200 and r.json() == {"source": "wildcard-parts"}, r.text
    # `_` is exactly one segment: not zero, not two.
    assert_problem(srv.get("/mock/supplier/items"), 404, "not_found")
    assert_problem(srv.get("/mock/supplier/items/abc/def"), 404, "not_found")
    # A file for GET does not answer POST.
    assert_problem(srv.post("/mock/supplier/items/abc", json={}), 404, "not_found")


def test_override_path_with_param_segments(clean):
    srv = clean
    put_override(srv, partner="kyc", method="GET", path="/verifications/{id}/documents/{doc}",
                 status=200, body={"source": "override-param"})
    for vid, doc in [("v-1", "d-1"), (unique("v"), "passport")]:
        r = srv.get(f"/mock/kyc/verifications/{vid}/documents/{doc}")
        assert r.status_code == 200 and r.json() == {"source": "override-param"}, r.text
    # {param} is one segment; other shapes are not matched (and have no other source).
    assert_problem(srv.get("/mock/kyc/verifications/v-1/documents"), 404, "not_found")
    assert_problem(srv.get("/mock/kyc/verifications/v-1/documents/d-1/x"), 404, "not_found")
    assert_problem(srv.get("/mock/kyc/verifications/v-1/other/d-1"), 404, "not_found")


def test_override_times_answers_that_often_then_falls_back(clean, mock_dir):
    srv = clean
    answer_file(mock_dir, "supplier", "/limited", "POST", {"status": 200, "body": {"source": "file"}})
    put_override(srv, partner="supplier", method="POST", path="/limited", status=500,
                 body={"source": "override"}, times=2)
    got = [srv.post("/mock/supplier/limited", json={}) for _ in range(4)]
    assert [r.status_code for r in got] == [500, 500, 200, 200], [(r.status_code, r.text) for r in got]
    assert [r.json()["source"] for r in got] == ["override", "override", "file", "file"]


def test_delete_clears_every_override(clean, mock_dir):
    srv = clean
    answer_file(mock_dir, "supplier", "/cleared", "GET", {"status": 200, "body": {"source": "file"}})
    put_override(srv, partner="supplier", method="GET", path="/cleared", status=418, body={"a": 1})
    put_override(srv, partner="kyc", method="POST", path="/verifications", status=500)
    assert srv.get("/mock/supplier/cleared").status_code == 418
    assert srv.post("/mock/kyc/verifications", json={}).status_code == 500
    clear_overrides(srv)
    r = srv.get("/mock/supplier/cleared")
    assert r.status_code == 200 and r.json() == {"source": "file"}, r.text
    # KYC in this mock dir has no file and no openapi.json: nothing answers.
    assert_problem(srv.post("/mock/kyc/verifications", json={}), 404, "not_found")


def test_override_validation(clean):
    srv = clean
    bad = [
        {"partner": "supplier", "method": "GET", "path": "no-leading-slash", "status": 200},
        {"partner": "supplier", "method": "GET", "path": "/x"},  # no status
        {"partner": "supplier", "method": "GET", "path": "/x", "status": "200"},
        {"partner": "supplier", "path": "/x", "status": 200},  # no method
        {"partner": "supplier", "method": "GET", "path": "/x", "status": 200, "times": 0},
        {"partner": "supplier", "method": "GET", "path": "/x", "status": 200, "delay_ms": -1},
    ]
    for spec in bad:
        r = srv.put("/mock/_control/responses", json=spec, headers=srv.admin_headers())
        assert_problem(r, 400, "validation_failed")
    # None of them took effect.
    assert_problem(srv.get("/mock/supplier/x"), 404, "not_found")


@pytest.mark.parametrize("source", ["override", "file"])
def test_delay_ms_delays_the_answer(clean, mock_dir, source):
    srv = clean
    path = f"/slow-{source}"
    if source == "override":
        put_override(srv, partner="supplier", method="POST", path=path, status=200,
                     body={"slow": True}, delay_ms=300)
    else:
        answer_file(mock_dir, "supplier", path, "POST",
                    {"status": 200, "body": {"slow": True}, "delay_ms": 300})
    t0 = time.monotonic()
    r = srv.post(f"/mock/supplier{path}", json={})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.json() == {"slow": True}, r.text
    assert elapsed >= 0.3, f"answered after {elapsed:.3f} s, delay_ms was 300"
    assert elapsed < 5, elapsed


# ---- templating ------------------------------------------------------------------------

TEMPLATED_BODY = {
    "echo": "{{request.body.word}}",
    "greeting": "hello {{request.body.word}}, you are {{request.body.who}}!",
    "id": "{{uuid}}",
    "nested": {
        "list": ["{{request.body.word}}", {"deep": "{{request.body.who}}"}, 7, True, None],
        "again": {"id": "{{uuid}}"},
    },
    "plain": "no placeholders here",
    "number": 42,
}


@pytest.mark.parametrize("source", ["override", "file"])
def test_templating_fills_request_fields_and_fresh_uuids(clean, mock_dir, source):
    srv = clean
    path = f"/tpl-{source}"
    if source == "override":
        put_override(srv, partner="supplier", method="POST", path=path, status=201, body=TEMPLATED_BODY)
    else:
        answer_file(mock_dir, "supplier", path, "POST", {"status": 201, "body": TEMPLATED_BODY})

    ids = set()
    for word in ("alpha", "beta"):
        r = srv.post(f"/mock/supplier{path}", json={"word": word, "who": "Ada"})
        assert r.status_code == 201, r.text
        b = r.json()
        assert b["echo"] == word, b
        assert b["greeting"] == f"hello {word}, you are Ada!", b
        assert b["nested"]["list"] == [word, {"deep": "Ada"}, 7, True, None], b
        assert b["plain"] == "no placeholders here" and b["number"] == 42, b
        for u in (b["id"], b["nested"]["again"]["id"]):
            assert isinstance(u, str), b
            uuid.UUID(u)  # a UUID
            ids.add(u)
        assert "{{" not in json.dumps(b), b
    # {{uuid}} is fresh at every use, every call.
    assert len(ids) == 4, ids


# ---- the request log -------------------------------------------------------------------


def test_request_log_lists_every_call_and_delete_clears_it(clean, mock_dir):
    srv = clean
    answer_file(mock_dir, "supplier", "/logged", "POST", {"status": 200, "body": {"ok": True}})
    t0 = time.time()
    marker = unique("m")
    r1 = srv.post("/mock/supplier/logged", json={"marker": marker, "n": 1},
                  headers={"X-Test-Marker": marker})
    assert r1.status_code == 200
    r2 = srv.get("/mock/supplier/nothing-here", headers={"X-Test-Marker": marker})
    assert r2.status_code == 404  # unanswered calls are logged too
    r3 = srv.post("/mock/kyc/verifications", json={"reference": marker})
    assert r3.status_code == 404

    items = mock_log(srv, "supplier")
    assert len(items) == 2, items
    first, second = items  # in the order received
    for it in items:
        assert set(it) >= {"partner", "method", "path", "headers", "body", "received_at"}, it
        assert it["partner"] == "supplier", it
        assert TS_RE.match(it["received_at"]), it
        assert t0 - 2 <= parse_ts(it["received_at"]) <= time.time() + 2, (it, t0)
        assert isinstance(it["headers"], dict), it
        assert header(it["headers"], "X-Test-Marker") == marker, it
    assert first["method"] == "POST", first
    assert first["path"] in ("/logged", "/mock/supplier/logged"), first
    assert first["body"] == {"marker": marker, "n": 1}, first
    assert "json" in (header(first["headers"], "Content-Type") or ""), first
    assert second["method"] == "GET", second
    assert second["path"] in ("/nothing-here", "/mock/supplier/nothing-here"), second
    assert second["body"] in (None, "", {}), second

    kyc = mock_log(srv, "kyc")
    assert len(kyc) == 1 and kyc[0]["body"] == {"reference": marker}, kyc
    assert kyc[0]["method"] == "POST" and kyc[0]["partner"] == "kyc", kyc
    assert kyc[0]["path"] in ("/verifications", "/mock/kyc/verifications"), kyc
    everything = mock_log(srv)
    assert len(everything) == 3, everything

    clear_log(srv)
    assert mock_log(srv, "supplier") == []
    assert mock_log(srv) == []
    # The log goes on after a clear.
    srv.post("/mock/supplier/logged", json={"after": True})
    items = mock_log(srv, "supplier")
    assert len(items) == 1 and items[0]["body"] == {"after": True}, items


# ---- callbacks -------------------------------------------------------------------------


def webhook_events_with(srv, marker):
    return [e for e in events(srv, type="partner.webhook.received") if marker in json.dumps(e)]


@pytest.mark.parametrize("source", ["override", "file"])
def test_callback_posts_signed_filled_body_to_iotfin_after_delay(clean, mock_dir, source):
    srv = clean
    path = f"/pings-{source}"
    answer = {
        "status": 201,
        "body": {"id": "{{uuid}}", "status": "pending"},
        "callback": {
            "delay_ms": 400,
            "path": "/v1/partners/kyc/webhooks",
            "body": {
                "id": "{{uuid}}",
                "type": "test.ping",
                "data": {
                    "response_id": "{{response.body.id}}",
                    "word": "{{request.body.word}}",
                    "note": "word={{request.body.word}}",
                },
            },
        },
    }
    if source == "override":
        put_override(srv, partner="kyc", method="POST", path=path, **answer)
    else:
        answer_file(mock_dir, "kyc", path, "POST", answer)

    word = unique("word")
    t0 = time.time()
    r = srv.post(f"/mock/kyc{path}", json={"word": word})
    assert r.status_code == 201, r.text
    resp_id = r.json()["id"]
    uuid.UUID(resp_id)

    # Not before the delay: the mock took the request after t0, so while less than
    # 0.4 s have passed since t0 no callback may have come (a busy machine may take
    # longer than that to answer; then this check has nothing to say) ...
    time.sleep(0.15)
    early = webhook_events_with(srv, word)
    if time.time() - t0 < 0.4:
        assert early == [], "the callback came before its delay_ms"
    # ... but soon after it: iotfin accepted it (so the signature was right) and logged it.
    got = poll(lambda: webhook_events_with(srv, word), timeout=10)
    assert len(got) == 1, got
    ev = got[0]
    assert parse_ts(ev["time"]) >= t0 + 0.4 - 0.05, (ev["time"], t0)
    dump = json.dumps(ev["data"])
    assert resp_id in dump, ev  # {{response.body.id}}
    assert f"word={word}" in dump, ev  # {{request.body.word}} inside a string
    assert "{{" not in dump, ev
    assert "test.ping" in dump and "kyc" in dump, ev
    # The callback's own {{uuid}} was filled with a fresh one (not the response id).
    hook_id = ev["data"].get("webhook_id") or ev["data"].get("id")
    if hook_id is not None:
        uuid.UUID(hook_id)
        assert hook_id != resp_id, ev


def test_shipped_mocks_approve_a_registration_by_callback(start_iotfin):
    """Journey step 2 offline: KYC approves after about 2 s through the mock's signed
    webhook; the test sends no webhook itself."""
    srv = start_iotfin(env=shipped_env())
    email = f"{unique('cb')}@example.com"
    t0 = time.monotonic()
    reg, token = register(srv, {"type": "local", "email": email, "password": PASSWORD, "name": "Cal Back"})

    # KYC was called through the mock, with the contract's body.
    calls = poll(lambda: [c for c in mock_log(srv, "kyc") if c["method"] == "POST"], timeout=5)
    assert len(calls) == 1, calls
    assert calls[0]["path"] in ("/verifications", "/mock/kyc/verifications"), calls
    assert calls[0]["body"].get("reference") == reg["user_id"], calls
    assert calls[0]["body"].get("email") == email, calls
    assert calls[0]["body"].get("name") == "Cal Back", calls

    body = wait_approved(srv, reg, token)
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.0, f"approved after {elapsed:.2f} s: not by the ~2 s callback"
    assert parse_ts(body["decided_at"]) - parse_ts(body["created_at"]) >= 1.0, body

    hooks = [e for e in events(srv, type="partner.webhook.received") if reg["user_id"] in json.dumps(e)]
    assert len(hooks) == 1, hooks
    dump = json.dumps(hooks[0]["data"])
    assert "verification.completed" in dump and "approved" in dump, hooks
    assert "{{" not in dump, hooks
    assert hooks[0]["subject"], hooks

    # The registration session trades for a user session.
    r = srv.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(token))
    assert r.status_code == 201, r.text
    me = srv.get("/v1/me", headers=bearer(r.json()["access_token"]))
    assert me.status_code == 200 and me.json()["email"] == email, me.text


def test_shipped_mocks_run_step_2_for_a_partner_user(start_iotfin):
    srv = start_iotfin(env=shipped_env())
    username = unique("pat")

    # Step 1: register as a partner user: IDENTITY (shipped file) vouches for anyone.
    reg, token = register(srv, {"type": "partner", "username": username, "password": "whatever-pw-1"})
    idp = mock_log(srv, "identity")
    assert [c["body"] for c in idp] == [{"username": username, "password": "[redacted]"}], idp

    # Step 2: KYC approves by callback.
    wait_approved(srv, reg, token)

    # Step 3: trade for a user session; /v1/me shows what IDENTITY answered.
    r = srv.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(token))
    assert r.status_code == 201, r.text
    sess = r.json()
    assert sess["tier"] == "user" and sess["refresh_token"], sess
    me = srv.get("/v1/me", headers=bearer(sess["access_token"]))
    assert me.status_code == 200, me.text
    me = me.json()
    assert me["type"] == "partner", me
    assert me["id"] == reg["user_id"], me
    assert me["email"] == f"{username}@partner.example".lower(), me
    assert me["name"] == username, me
    assert me["status"] == "approved", me

    # Step 4: signing in again goes through IDENTITY again.
    r = srv.post("/v1/sessions", json={"type": "partner", "username": username, "password": "whatever-pw-1"})
    assert r.status_code == 201, r.text
    assert r.json()["tier"] == "user", r.text
    assert len(mock_log(srv, "identity")) == 2


def test_shipped_mocks_answer_every_partner_call(start_iotfin):
    """The shipped files answer each call of CONTRACT section 6 in its shape."""
    srv = start_iotfin(env=shipped_env())
    r = srv.post("/mock/kyc/verifications", json={"reference": "u-1", "email": "a@b.example", "name": "A"})
    assert r.status_code in (201, 202), r.text
    v = r.json()
    assert v["status"] in ("pending", "approved", "rejected") and v["id"], v
    r = srv.get(f"/mock/kyc/verifications/{v['id']}")
    assert r.status_code == 200 and r.json()["status"] in ("pending", "approved", "rejected"), r.text
    r = srv.post("/mock/identity/sessions", json={"username": "zed", "password": "pw-pw-pw-pw"})
    assert r.status_code == 200, r.text
    assert {"subject", "email", "name"} <= set(r.json()), r.text
    r1 = srv.post("/mock/supplier/registrations", json={"serial": "SN-0001", "owner_reference": "u-1"})
    r2 = srv.post("/mock/supplier/registrations", json={"serial": "SN-0002", "owner_reference": "u-1"})
    assert r1.status_code == 201 and r2.status_code == 201, (r1.text, r2.text)
    assert r1.json()["device_id"] != r2.json()["device_id"], "supplier ids must be unique"
    r = srv.post("/mock/bank/notifications", json={"specversion": "1.0", "id": "e1", "type": "t", "source": "s"},
                 headers={"Content-Type": "application/cloudevents+json"})
    assert 200 <= r.status_code < 300, r.text
    rid = unique("req")
    r = srv.post("/mock/bank/authorizations", json={"device_id": "d", "request_id": rid, "data": {"amount": 5}})
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), dict) and r.json().get("request_id") == rid, r.text


# ---- mock off ---------------------------------------------------------------------------


def test_mock_off_answers_404(start_iotfin):
    srv = start_iotfin(env=shipped_env(IOTFIN_MOCK="off"))
    calls = [
        ("POST", "/mock/kyc/verifications", {"json": {"reference": "u"}}),
        ("GET", "/mock/kyc/verifications/v-1", {}),
        ("POST", "/mock/identity/sessions", {"json": {"username": "a", "password": "b"}}),
        ("GET", "/mock/_control/requests", {}),
        ("DELETE", "/mock/_control/requests", {}),
        ("DELETE", "/mock/_control/responses", {}),
        ("PUT", "/mock/_control/responses",
         {"json": {"partner": "kyc", "method": "POST", "path": "/verifications", "status": 500}}),
    ]
    for method, path, kw in calls:
        r = srv.request(method, path, **kw)
        assert_problem(r, 404, "not_found")


def test_mock_off_control_api_is_404_whatever_the_body(start_iotfin):
    """With the mock off the control routes do not exist: a bad body must not get
    a 400 from a route that is not there (CONTRACT 7 "mock on only", 2 unknown route)."""
    srv = start_iotfin(env=shipped_env(IOTFIN_MOCK="off"))
    got = []
    for kw in (
        {"data": b"not json", "headers": {"Content-Type": "application/json"}},
        {"json": {}},
        {"data": b"x", "headers": {"Content-Type": "text/plain"}},
    ):
        r = srv.put("/mock/_control/responses", **kw)
        got.append((kw, r.status_code, r.json().get("code") if r.content else None))
    wrong = [g for g in got if g[1:] != (404, "not_found")]
    assert wrong == [], wrong


# ---- no rate limit ----------------------------------------------------------------------


def test_no_rate_limit_on_the_mock(start_iotfin):
    srv = start_iotfin(env=shipped_env(IOTFIN_AUTH_RATE=5))
    # The auth limit is on: the session routes answer 429 soon.
    codes = [srv.post("/v1/sessions/anonymous").status_code for _ in range(10)]
    assert 429 in codes, codes

    # The mock and its control API are not limited.
    bad = []
    for i in range(300):
        r = srv.post("/mock/bank/authorizations", json={"device_id": "d", "request_id": f"r{i}", "data": {}})
        if r.status_code != 200:
            bad.append((i, r.status_code, r.text[:200]))
    assert bad == [], bad[:5]
    for i in range(50):
        r = srv.get("/mock/_control/requests", params={"partner": "supplier"},
                    headers=srv.admin_headers())
        assert r.status_code == 200, (i, r.status_code, r.text[:200])
    items = mock_log(srv, "bank")
    assert len(items) == 300, len(items)
    # And the auth limit still holds for the session routes.
    r = srv.post("/v1/sessions/anonymous")
    assert r.status_code == 429, r.text
