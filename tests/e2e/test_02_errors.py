"""CONTRACT section 2, errors: every 4xx and 5xx is application/problem+json with
type, title, status, detail and code; each failure class gets its stable code.
The admin import route is the body-taking route these tests aim at."""

import json
import re

import pytest

from conftest import assert_problem

IMPORT = "/v1/admin/devices/import"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(shared_iotfin):
    return shared_iotfin


def post_import(server, data, content_type="application/json", token=True, **kw):
    """POST raw bytes to the import route with the admin token."""
    headers = server.admin_headers() if token else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(kw.pop("headers", {}))
    return server.post(IMPORT, data=data, headers=headers, **kw)


def exact_size_body(size):
    """A JSON object of exactly `size` bytes: {"devices":[],"pad":"xxx…"}."""
    head, tail = '{"devices":[],"pad":"', '"}'
    body = head + "x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body.encode()


# -- unknown routes and methods -------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [("GET", "/nope"), ("POST", "/v1/nothing/here"), ("GET", "/"), ("DELETE", "/v1/admin/nope")],
)
def test_unknown_route_is_404_problem(server, method, path):
    r = server.request(method, path)
    body = assert_problem(r, 404, "not_found")
    assert set(body) >= {"type", "title", "status", "detail", "code"}


def test_query_string_does_not_change_the_route(server):
    r = server.get("/healthz?probe=1&x=%20y")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("GET", "/v1/sessions/anonymous", {"POST"}),
        ("DELETE", "/healthz", {"GET"}),
        ("PUT", IMPORT, {"POST"}),
        ("POST", "/openapi.json", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(server, method, path, allowed):
    r = server.request(method, path, headers=server.admin_headers())
    assert_problem(r, 405, "method_not_allowed")
    allow = {m.strip().upper() for m in r.headers.get("Allow", "").split(",") if m.strip()}
    assert allowed <= allow, r.headers.get("Allow")
    assert method not in allow, r.headers.get("Allow")


# -- the body: size, media type, JSON, schema ------------------------------------------


def test_body_over_64_kib_is_413(server):
    # Step 1: one byte over the limit, announced by Content-Length.
    r = post_import(server, exact_size_body(MAX_BODY + 1))
    assert_problem(r, 413, "payload_too_large")
    # Step 2: the same, streamed chunked with no Content-Length.
    def chunks():
        data = exact_size_body(MAX_BODY + 4096)
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    r = post_import(server, chunks())
    assert_problem(r, 413, "payload_too_large")
    # Step 3: the server still answers normally afterwards.
    assert server.get("/healthz").status_code == 200


def test_body_of_exactly_64_kib_is_not_too_large(server):
    r = post_import(server, exact_size_body(MAX_BODY))
    body = assert_problem(r, 400, "validation_failed")
    assert {"field": "pad"} in [{"field": e["field"]} for e in body["errors"]], body


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded", None]
)
def test_wrong_content_type_is_415(server, content_type):
    r = post_import(server, b'{"devices": []}', content_type=content_type)
    assert_problem(r, 415, "unsupported_media_type")


def test_json_content_type_with_parameters_is_accepted(server):
    r = post_import(server, b'{"devices": []}', content_type="application/json; charset=utf-8")
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 0, "duplicates": 0, "invalid": []}


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"", b'{"devices": []} trailing', b'{"devices": [}', b"\xff\xfe{}",
     b"[" * 5000 + b"]" * 5000],
    ids=["garbage", "empty", "trailing", "unbalanced", "bad-utf8", "deep-nesting"],
)
def test_invalid_json_is_400_invalid_json(server, data):
    r = post_import(server, data)
    assert_problem(r, 400, "invalid_json")


def field_errors(body):
    """errors[] as {field: message}, after checking each item's shape."""
    assert isinstance(body.get("errors"), list) and body["errors"], body
    out = {}
    for e in body["errors"]:
        assert set(e) >= {"field", "message"}, e
        assert isinstance(e["field"], str) and isinstance(e["message"], str) and e["message"], e
        out[e["field"]] = e["message"]
    return out


@pytest.mark.parametrize(
    "payload,field",
    [
        ({}, "devices"),
        ({"devices": None}, "devices"),
        ({"devices": "ABCD-0001"}, "devices"),
        ({"devices": {"serial": "ABCD-0001"}}, "devices"),
        ({"devices": [], "extra": 1}, "extra"),
    ],
    ids=["missing", "null", "string-not-array", "object-not-array", "unknown-field"],
)
def test_validation_failure_names_the_field(server, payload, field):
    r = post_import(server, json.dumps(payload).encode())
    body = assert_problem(r, 400, "validation_failed")
    errors = field_errors(body)
    assert field in errors, body


def test_validation_reports_every_bad_field_at_once(server):
    r = post_import(server, json.dumps({"devices": 7, "a": 1, "b": 2}).encode())
    body = assert_problem(r, 400, "validation_failed")
    assert {"devices", "a", "b"} <= set(field_errors(body)), body


@pytest.mark.parametrize("payload", [[], "devices", 42, None], ids=["array", "string", "number", "null"])
def test_body_that_is_not_an_object_is_a_validation_failure(server, payload):
    r = post_import(server, json.dumps(payload).encode())
    body = assert_problem(r, 400, "validation_failed")
    field_errors(body)


# -- authentication -------------------------------------------------------------------


def test_admin_route_without_token_is_401_with_challenge(server):
    r = post_import(server, b'{"devices": []}', token=False)
    assert_problem(r, 401, "unauthenticated")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong-token-0123456789", "Bearer ", "Basic YWRtaW46YWRtaW4=", "wrong-token", "Bearer a.b.c"],
    ids=["wrong", "empty", "basic", "no-scheme", "fake-jwt"],
)
def test_admin_route_with_bad_token_is_401(server, authorization):
    r = post_import(server, b'{"devices": []}', token=False, headers={"Authorization": authorization})
    assert_problem(r, 401, "unauthenticated")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers


def test_admin_token_with_different_case_scheme_still_works(server):
    r = post_import(
        server, b'{"devices": []}', token=False,
        headers={"Authorization": "bearer " + server.admin_token},
    )
    assert r.status_code == 200, r.text


def test_admin_route_with_anonymous_token_is_403(server):
    token = server.anonymous_token()
    r = post_import(
        server, b'{"devices": []}', token=False, headers={"Authorization": f"Bearer {token}"}
    )
    assert_problem(r, 403, "forbidden")


# -- request ids ----------------------------------------------------------------------


def test_request_id_is_echoed_when_sent(server):
    for path, status in (("/healthz", 200), ("/nope", 404)):
        r = server.get(path, headers={"X-Request-Id": "e2e-req-0001"})
        assert r.status_code == status, r.text
        assert r.headers.get("X-Request-Id") == "e2e-req-0001", r.headers


def test_request_id_is_generated_when_missing(server):
    ids = set()
    for path in ("/healthz", "/nope", IMPORT):
        r = server.get(path)
        rid = r.headers.get("X-Request-Id", "")
        assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", rid), (path, r.headers)
        ids.add(rid)
    assert len(ids) == 3, ids


# -- no leaks ---------------------------------------------------------------------------

LEAK_PATTERNS = re.compile(
    r"SELECT |INSERT |UPDATE |DELETE FROM|sqlite|SQLITE|syntax error|constraint|Traceback|"
    r"segmentation|\.c:[0-9]+|0x[0-9a-f]{6,}|jansson|libmicrohttpd",
    re.IGNORECASE,
)

HOSTILE = [
    ("json", {"devices": [{"serial": "'; DROP TABLE devices; --"}]}),
    ("json", {"devices": [{"serial": "ABCD-0001' OR '1'='1"}]}),
    ("json", {"devices": [{"serial": "x" * 5000}]}),
    ("json", {"devices": [{"serial": 1e308}, {"serial": -(2**70)}, {"serial": True}]}),
    ("json", {"devices": [{"serial": "ABCD-\u0000-0001"}]}),
    ("json", {"devices": [{"serial": "\u00e9\u00e9\u00e9\u00e9"}, {"serial": "\ud83d\ude00" * 4}]}),
    ("json", {"devices": [[[[]]]]}),
    ("json", {"devices": [{"serial": "LEAK-0001", "model": {"$ne": 1}}]}),
    ("raw", b'{"devices": [{"serial": "A\\u0000BCD"}]}'),
    ("raw", b'{"devices": 1e99999}'),
    ("raw", b'{"devices": [], "devices": []}'),
    ("csv", b"serial,model\n'; DROP TABLE devices; --,x\n\"quoted\",\"m\"\n"),
    ("csv", b"serial,model\n" + b"A" * 70000),
    ("csv", b"\x00\x01\x02"),
]


def test_hostile_input_never_leaks_sql_or_internals(server):
    for kind, payload in HOSTILE:
        if kind == "json":
            r = post_import(server, json.dumps(payload).encode())
        elif kind == "raw":
            r = post_import(server, payload)
        else:
            r = post_import(server, payload, content_type="text/csv")
        # A client mistake is never a server error, and nothing internal shows.
        assert r.status_code < 500, (payload, r.status_code, r.text)
        assert not LEAK_PATTERNS.search(r.text), (payload, r.text)
        if r.status_code >= 400:
            assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    # The devices table is intact and the server still works.
    r = server.import_devices([{"serial": "AFTER-HOSTILE-1"}])
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 1, "duplicates": 0, "invalid": []}
    assert server.get("/readyz").status_code == 200
