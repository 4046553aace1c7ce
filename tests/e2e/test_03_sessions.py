"""CONTRACT section 3, sessions: anonymous sessions and the tokens iotfin issues,
checked the way a third party would check them, with PyJWT and the published JWKS."""

import base64
import json
import time

import jwt
import pytest

from conftest import assert_problem, jwks_keys, verify_token


@pytest.fixture(scope="module")
def server(shared_iotfin):
    return shared_iotfin


def open_anonymous(server):
    """Step: POST /v1/sessions/anonymous; checks the answer's shape, returns it."""
    t0 = int(time.time())
    r = server.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"access_token", "token_type", "expires_in", "tier"}, body
    assert body["token_type"] == "Bearer", body
    assert body["tier"] == "anonymous", body
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0, body
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2, body
    assert "refresh_token" not in body, body
    body["_t0"] = t0
    return body


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def b64url(obj):
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_anonymous_session_is_201_with_a_bearer_token(server):
    body = open_anonymous(server)
    assert body["expires_in"] == 900, body  # IOTFIN_ACCESS_TTL_S default


def test_jwks_publishes_public_keys_only(server):
    keys = jwks_keys(server)
    for kid, k in keys.items():
        assert kid and isinstance(kid, str), k
        assert k["kty"] in ("OKP", "EC"), k
        if k["kty"] == "OKP":
            assert k["crv"] == "Ed25519" and k.get("x"), k
        # No private material, ever.
        assert "d" not in k and "p" not in k and "q" not in k, k


def test_token_verifies_against_jwks_with_the_contract_claims(server):
    body = open_anonymous(server)
    token = body["access_token"]
    # Step 1: the header names a published key and a contract algorithm.
    header, claims = verify_token(server, token)
    assert header["alg"] in ("EdDSA", "ES256"), header
    # Step 2: the claims.
    assert claims["iss"] == "iotfin", claims
    assert claims["tier"] == "anonymous", claims
    for name in ("sub", "sid", "jti"):
        assert isinstance(claims[name], str) and claims[name], (name, claims)
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int), claims
    assert abs(claims["iat"] - body["_t0"]) <= 5, (claims, body["_t0"])
    assert claims["exp"] - claims["iat"] == body["expires_in"], (claims, body)


def test_each_session_gets_its_own_ids(server):
    a = verify_token(server, open_anonymous(server)["access_token"])[1]
    b = verify_token(server, open_anonymous(server)["access_token"])[1]
    assert a["sid"] != b["sid"], (a, b)
    assert a["jti"] != b["jti"], (a, b)


def test_tampered_tokens_do_not_verify(server):
    token = open_anonymous(server)["access_token"]
    head, payload, sig = token.split(".")
    keys = jwks_keys(server)
    key = jwt.PyJWK(keys[jwt.get_unverified_header(token)["kid"]]).key
    # Step 1: a claim changed under the original signature.
    claims = b64url_json(payload)
    claims["tier"] = "user"
    forged = f"{head}.{b64url(claims)}.{sig}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["EdDSA", "ES256"])
    # Step 2: one flipped signature character.
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{head}.{payload}.{flipped}", key, algorithms=["EdDSA", "ES256"])
    # Step 3: the untouched token still verifies, so the steps above prove something.
    assert jwt.decode(token, key, algorithms=["EdDSA", "ES256"])["tier"] == "anonymous"


def test_server_refuses_tampered_and_unsigned_tokens_as_unauthenticated(server):
    # A real anonymous token on the admin route is the wrong principal (403); the
    # same token altered, or re-issued with alg "none", is no token at all (401).
    token = open_anonymous(server)["access_token"]
    head, payload, sig = token.split(".")
    claims = b64url_json(payload)
    claims["exp"] += 3600
    cases = {
        "genuine": (token, 403, "forbidden"),
        "claims-changed": (f"{head}.{b64url(claims)}.{sig}", 401, "unauthenticated"),
        "alg-none": (f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload}.", 401, "unauthenticated"),
    }
    for name, (tok, status, code) in cases.items():
        r = server.post(
            "/v1/admin/devices/import",
            json={"devices": []},
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == status, (name, r.text)
        assert_problem(r, status, code)


def test_session_route_takes_no_token_and_ignores_a_body(server):
    # The route needs no token; a stray Authorization header must not break it.
    r = server.post("/v1/sessions/anonymous", headers={"Authorization": "Bearer junk"})
    assert r.status_code == 201, r.text
    assert r.json()["tier"] == "anonymous"


def test_access_ttl_setting_sets_expiry(start_iotfin):
    inst = start_iotfin(env={"IOTFIN_ACCESS_TTL_S": "60"})
    body = open_anonymous(inst)
    assert body["expires_in"] == 60, body
    _, claims = verify_token(inst, body["access_token"])
    assert claims["exp"] - claims["iat"] == 60, claims


def test_session_route_is_rate_limited_per_client(start_iotfin):
    # IOTFIN_AUTH_RATE requests per minute per client address on session routes;
    # the next one is 429 rate_limited with Retry-After.
    inst = start_iotfin(env={"IOTFIN_AUTH_RATE": "3"})
    for i in range(3):
        r = inst.post("/v1/sessions/anonymous")
        assert r.status_code == 201, (i, r.text)
    r = inst.post("/v1/sessions/anonymous")
    assert_problem(r, 429, "rate_limited")
    retry_after = r.headers.get("Retry-After", "")
    assert retry_after.isdigit() and 0 < int(retry_after) <= 60, r.headers
    # Other routes are not limited.
    assert inst.get("/healthz").status_code == 200
