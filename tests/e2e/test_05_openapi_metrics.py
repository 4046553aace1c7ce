"""CONTRACT section 8 (operations) as far as sections 1-3 reach: /openapi.json
describes exactly the routes the server answers, and /metrics is Prometheus text
with every name under iotfin_ and HTTP requests counted by route and status."""

import re
import uuid

import pytest

from conftest import wait_until

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

# Every code of the CONTRACT section 2 table.
CONTRACT_CODES = {
    "invalid_json", "validation_failed", "unauthenticated", "invalid_credentials",
    "forbidden", "not_found", "unknown_serial", "method_not_allowed", "conflict",
    "already_claimed", "registration_pending", "device_not_active", "email_taken",
    "payload_too_large", "unsupported_media_type", "idempotency_key_reused",
    "rate_limited", "internal", "upstream_unavailable", "unavailable",
}


@pytest.fixture(scope="module")
def server(shared_iotfin):
    return shared_iotfin


@pytest.fixture(scope="module")
def openapi(shared_iotfin):
    r = shared_iotfin.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    return r.json()


def documented(openapi):
    """{path: set of upper-case methods} from the document."""
    out = {}
    for path, item in openapi["paths"].items():
        out[path] = {m.upper() for m in item if m.upper() in HTTP_METHODS}
    return out


def concrete(path):
    """A request path for a template: each {param} replaced by a made-up value."""
    return re.sub(r"\{[^}]+\}", "e2e-probe", path)


# -- /openapi.json ----------------------------------------------------------------------


def test_openapi_is_3_1(openapi):
    assert re.fullmatch(r"3\.1\.\d+", openapi["openapi"]), openapi["openapi"]
    assert openapi["info"]["title"] and openapi["info"]["version"], openapi["info"]
    assert openapi["paths"], openapi


def test_openapi_lists_the_contract_routes(openapi):
    routes = documented(openapi)
    for path, method in [
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/metrics", "GET"),
        ("/openapi.json", "GET"),
        ("/.well-known/jwks.json", "GET"),
        ("/v1/sessions/anonymous", "POST"),
        ("/v1/admin/devices/import", "POST"),
    ]:
        assert method in routes.get(path, set()), (path, method, sorted(routes))


def test_openapi_describes_the_import_body(openapi):
    op = openapi["paths"]["/v1/admin/devices/import"]["post"]
    content = op["requestBody"]["content"]
    schema = content["application/json"]["schema"]
    assert schema["type"] == "object", schema
    assert "devices" in schema["properties"], schema
    assert "devices" in schema.get("required", []), schema
    devices = schema["properties"]["devices"]
    assert devices["type"] == "array", devices
    item = devices["items"]
    assert "serial" in item["properties"], item
    assert "text/csv" in content, content
    # The admin route says it needs a token; the session route says it does not.
    assert op.get("security"), op
    assert "200" in op["responses"], op["responses"]
    anon = openapi["paths"]["/v1/sessions/anonymous"]["post"]
    assert "201" in anon["responses"], anon["responses"]
    assert not anon.get("security"), anon


def test_openapi_problem_schema_lists_every_error_code(openapi):
    problem = openapi["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail", "code"}, problem
    codes = set(problem["properties"]["code"]["enum"])
    assert CONTRACT_CODES <= codes, sorted(CONTRACT_CODES - codes)
    assert "errors" in problem["properties"], problem
    # Every operation points its error answers at that schema.
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            if method.upper() not in HTTP_METHODS:
                continue
            refs = str(op["responses"])
            assert "#/components/schemas/Problem" in refs, (path, method)


def test_openapi_matches_what_the_server_answers(server, openapi):
    # Every documented (path, method) is served (never 404 "no such route" or 405),
    # and every other method on a documented path is 405 with an Allow header that
    # lists exactly the documented methods: the document and the routes are one table.
    for path, methods in documented(openapi).items():
        url = concrete(path)
        for method in HTTP_METHODS:
            r = server.request(method, url, headers=server.admin_headers(), json={})
            if method in methods:
                assert r.status_code != 405, (method, path, r.text)
                if "{" not in path:
                    assert r.status_code != 404, (method, path, r.text)
            else:
                assert r.status_code == 405, (method, path, r.status_code, r.text)
                allow = {m.strip() for m in r.headers.get("Allow", "").split(",") if m.strip()}
                assert allow == methods, (path, allow, methods)


# -- /metrics ---------------------------------------------------------------------------

SAMPLE_RE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>[^ ]+)( [0-9]+)?"
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(server):
    """GET /metrics, parsed: (types {family: type}, samples [(name, labels, value)])."""
    r = server.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    types, samples = {}, []
    for line in r.text.split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = SAMPLE_RE.fullmatch(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(LABEL_RE.findall(m["labels"] or ""))
        samples.append((m["name"], labels, float(m["value"])))
    return types, samples


def value(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def test_metrics_are_prometheus_text_named_iotfin(server):
    server.get("/healthz")
    types, samples = scrape(server)
    assert samples, "no samples"
    for name, _, _ in samples:
        assert name.startswith("iotfin_"), name
    for family in types:
        assert family.startswith("iotfin_"), family


def test_http_requests_are_counted_by_route_and_status(server):
    # Step 1: a known number of requests of three kinds.
    probe = f"/no-such-route-{uuid.uuid4().hex}"
    base_types, base = scrape(server)
    before_ok = value(base, "iotfin_http_requests_total", route="/healthz", status="200") or 0
    for _ in range(3):
        assert server.get("/healthz").status_code == 200
    assert server.get(probe).status_code == 404
    assert server.get("/v1/sessions/anonymous").status_code == 405

    # Step 2: the counter moved by exactly three for /healthz 200.
    def scraped_after():
        t, s = scrape(server)
        v = value(s, "iotfin_http_requests_total", route="/healthz", status="200")
        return (t, s) if v is not None and v >= before_ok + 3 else None

    got = wait_until(scraped_after, 2, interval=0.05)
    assert got, "iotfin_http_requests_total{route=\"/healthz\",status=\"200\"} did not grow by 3"
    types, samples = got
    assert value(samples, "iotfin_http_requests_total", route="/healthz", status="200") == before_ok + 3
    assert types.get("iotfin_http_requests_total") == "counter", types
    # Step 3: errors are counted with their status too.
    assert value(samples, "iotfin_http_requests_total", status="404"), samples
    assert value(samples, "iotfin_http_requests_total", status="405"), samples
    # Step 4: an unknown path is not a label value (no unbounded label sets).
    assert not any(probe.strip("/") in str(l) for _, l, _ in samples)


def test_wrong_method_is_counted_under_its_route(server):
    # A 405 names a real path: it belongs to that route's series (label values are
    # route templates), so operators can see which route clients misuse.
    assert server.get("/v1/sessions/anonymous").status_code == 405

    def counted():
        _, s = scrape(server)
        return value(s, "iotfin_http_requests_total", route="/v1/sessions/anonymous", status="405")

    n = wait_until(counted, 2, interval=0.05)
    assert n and n >= 1, [
        (l, v) for name, l, v in scrape(server)[1]
        if name == "iotfin_http_requests_total" and l.get("status") == "405"
    ]


def test_http_latency_is_a_histogram(server):
    server.get("/healthz")
    types, samples = scrape(server)
    hist = [n for n, kind in types.items() if kind == "histogram" and n.startswith("iotfin_http_")]
    assert hist, types
    name = hist[0]
    buckets = [
        (l, v)
        for n, l, v in samples
        if n == f"{name}_bucket" and l.get("route") == "/healthz" and l.get("method", "GET") == "GET"
    ]
    assert buckets, f"no {name}_bucket for /healthz"
    inf = [v for l, v in buckets if l.get("le") == "+Inf"]
    assert len(inf) == 1, buckets
    count = value(samples, f"{name}_count", route="/healthz", method="GET")
    assert count == inf[0] and count >= 1, (count, inf)
    assert value(samples, f"{name}_sum", route="/healthz", method="GET") is not None
    # Buckets are cumulative.
    ordered = sorted(
        ((float(l["le"]), v) for l, v in buckets if l.get("le") not in (None, "+Inf")),
    )
    counts = [v for _, v in ordered] + inf
    assert counts == sorted(counts), ordered
