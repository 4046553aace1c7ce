"""CONTRACT sections 2, 3 and 6: registration, KYC (by polling and by signed
webhook), escalation to a user session, login, refresh, logout, tiers, partner
(IDENTITY) users, the IDENTITY proxy, rate limits, Idempotency-Key and the approval
mail. The partners are fakes from fakes.py; iotfin is the real binary."""

import json
import re
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import TEST_PG, Iotfin, assert_problem, bearer, pg_url, psql, verify_token
from fakes import FakeIdentity, FakeKyc, ForwardProxy, sign_webhook

KYC_SECRET = "test-secret-kyc"
WAIT_S = 10.0
TICK_S = 0.075
PASSWORD = "correct-horse-1"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# -- fixtures -------------------------------------------------------------------


def partner_env(kyc, identity, **extra):
    env = {
        "IOTFIN_PARTNER_KYC_URL": kyc.url,
        "IOTFIN_PARTNER_IDENTITY_URL": identity.url,
        "IOTFIN_PARTNER_KYC_SECRET": KYC_SECRET,
        "IOTFIN_KYC_POLL_MS": "200",
        "IOTFIN_AUTH_RATE": "10000",
        "IOTFIN_PARTNER_IDENTITY_TIMEOUT_MS": "2000",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def kyc():
    k = FakeKyc()
    yield k
    k.down()


@pytest.fixture(scope="module")
def identity():
    i = FakeIdentity()
    yield i
    i.down()


@pytest.fixture(autouse=True)
def identity_healthy(identity):
    """Whatever a test did to IDENTITY, the next one finds it up and answering."""
    identity.mode = "ok"
    identity.up()
    yield
    identity.mode = "ok"
    identity.up()


@pytest.fixture(scope="module")
def server(tmp_path_factory, kyc, identity):
    inst = Iotfin(tmp_path_factory.mktemp("identity"), env=partner_env(kyc, identity))
    inst.start()
    yield inst
    problems = inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


# -- helpers --------------------------------------------------------------------




def unique(tag):
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def poll(fn, what, timeout=WAIT_S):
    """Calls fn every TICK_S until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(TICK_S)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def anonymous(server):
    r = server.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["tier"] == "anonymous" and body["token_type"] == "Bearer", body
    return body["access_token"]


def register(server, body, token=None, headers=None):
    """POST /v1/registrations with a fresh anonymous token unless one is given."""
    h = bearer(token or anonymous(server))
    h.update(headers or {})
    return server.post("/v1/registrations", json=body, headers=h)


def local_body(email, password=PASSWORD, name="Ada Lovelace"):
    return {"type": "local", "email": email, "password": password, "name": name}


def check_registration_answer(server, r):
    """202 {registration: {id, status pending, user_id, created_at}, access_token,
    expires_in, tier registration}; the token verifies as a registration token."""
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert {"registration", "access_token", "expires_in", "tier"} <= set(body), body
    reg = body["registration"]
    assert {"id", "status", "user_id", "created_at"} <= set(reg), reg
    assert reg["status"] == "pending", reg
    for k in ("id", "user_id"):
        assert isinstance(reg[k], str) and reg[k], reg
    assert reg["id"] != reg["user_id"], reg
    assert TS_RE.match(reg["created_at"]), reg
    assert body["tier"] == "registration", body
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0, body
    assert body.get("token_type", "Bearer") == "Bearer", body
    assert "refresh_token" not in body, body
    header, claims = verify_token(server, body["access_token"])
    assert header["alg"] in ("EdDSA", "ES256"), header
    assert claims["tier"] == "registration", claims
    assert claims["sid"], claims
    return body


def register_local(server, email, kyc=None, kyc_status=None, kyc_then=None, **kw):
    """Step: plan the KYC answer for this email, register; returns (answer, reg, token)."""
    if kyc is not None and kyc_status is not None:
        kyc.plan(email, kyc_status, then=kyc_then)
    body = check_registration_answer(server, register(server, local_body(email, **kw)))
    return body, body["registration"], body["access_token"]


def get_registration(server, token, reg_id):
    return server.get(f"/v1/registrations/{reg_id}", headers=bearer(token))


def wait_registration(server, token, reg_id, status):
    """Polls GET /v1/registrations/{id} until it shows status; returns the body."""

    def check():
        r = get_registration(server, token, reg_id)
        assert r.status_code == 200, r.text
        body = r.json()
        return body if body["status"] == status else None

    body = poll(check, f"registration {reg_id} to become {status}")
    assert set(body) == {"id", "status", "user_id", "created_at", "decided_at"}, body
    assert body["id"] == reg_id, body
    assert TS_RE.match(body["decided_at"] or ""), body
    assert body["decided_at"] >= body["created_at"], body
    return body


def check_user_session(server, r, user_id=None):
    """201 {access_token, refresh_token, token_type Bearer, expires_in, tier user};
    the access token verifies with PyJWT against the JWKS with the contract claims."""
    assert r.status_code == 201, r.text
    body = r.json()
    assert {"access_token", "refresh_token", "token_type", "expires_in", "tier"} <= set(body), body
    assert body["token_type"] == "Bearer", body
    assert body["tier"] == "user", body
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0, body
    assert isinstance(body["refresh_token"], str) and len(body["refresh_token"]) >= 16, body
    assert body["refresh_token"] != body["access_token"], body
    header, claims = verify_token(server, body["access_token"])
    assert header["alg"] in ("EdDSA", "ES256"), header
    assert claims["iss"] == "iotfin", claims
    assert claims["tier"] == "user", claims
    for name in ("sub", "sid", "jti"):
        assert isinstance(claims[name], str) and claims[name], (name, claims)
    assert isinstance(claims["iat"], int) and abs(claims["iat"] - time.time()) <= 5, claims
    assert claims["exp"] - claims["iat"] == body["expires_in"], (claims, body)
    if user_id is not None:
        assert claims["sub"] == user_id, (claims, user_id)
    return body


def approved_local_user(server, kyc, tag="user"):
    """Registers a local user whom KYC approves at once, waits for the decision and
    trades the registration for a user session. Returns (email, user_id, session)."""
    email = f"{unique(tag)}@example.com"
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="approved")
    wait_registration(server, tok, reg["id"], "approved")
    r = server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(tok))
    return email, reg["user_id"], check_user_session(server, r, reg["user_id"])


def login(server, body):
    return server.post("/v1/sessions", json=body)


def me(server, token):
    return server.get("/v1/me", headers=bearer(token))


def assert_refused(r, status=401, code="unauthenticated"):
    body = assert_problem(r, status, code)
    if status == 401:
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
    return body


def post_webhook(server, partner, body, secret=KYC_SECRET, t=None, signature=None, sign=True):
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if sign:
        headers["Iotfin-Signature"] = signature or sign_webhook(secret, raw, t)
    return server.post(f"/v1/partners/{partner}/webhooks", data=raw, headers=headers)


def webhook_events(server, webhook_id):
    r = server.get(
        "/v1/admin/events",
        params={"type": "partner.webhook.received", "limit": 200},
        headers=server.admin_headers(),
    )
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if (e.get("data") or {}).get("webhook_id") == webhook_id]


# -- the local journey ----------------------------------------------------------


def test_local_registration_approved_by_kyc_polling(server, kyc):
    email = f"{unique('Ada')}@Example.COM"
    # Step 1: anonymous session, then register; KYC answers pending, approves on its first GET.
    answer, reg, reg_tok = register_local(
        server, email, kyc=kyc, kyc_status="pending", kyc_then="approved"
    )
    _, reg_claims = verify_token(server, reg_tok)

    # Step 2: KYC was asked with the user id as reference, and then polled.
    v = poll(lambda: kyc.find(email=email), "the KYC verification to be requested")
    assert v["reference"] == reg["user_id"], v
    assert v["email"] == email.lower(), v
    created = [r.json for r in kyc.requests("POST", "/verifications")]
    mine = [b for b in created if b and b.get("reference") == reg["user_id"]]
    assert len(mine) == 1, created
    assert mine[0]["email"] == email.lower() and mine[0]["name"] == "Ada Lovelace", mine

    # Step 3: the registration becomes approved, with decided_at.
    decided = wait_registration(server, reg_tok, reg["id"], "approved")
    assert decided["user_id"] == reg["user_id"], decided
    polls = kyc.requests("GET", f"/verifications/{v['id']}")
    assert len(polls) >= 1, kyc.log

    # Step 4: trade the registration for a user session.
    r = server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(reg_tok))
    session = check_user_session(server, r, reg["user_id"])
    _, user_claims = verify_token(server, session["access_token"])
    assert user_claims["sid"] != reg_claims["sid"], (user_claims, reg_claims)

    # Step 5: the registration token is refused from now on, on every route.
    assert_refused(get_registration(server, reg_tok, reg["id"]))
    assert_refused(
        server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(reg_tok))
    )

    # Step 6: GET /v1/me with the user token.
    r = me(server, session["access_token"])
    assert r.status_code == 200, r.text
    who = r.json()
    assert who["id"] == reg["user_id"], who
    assert who["type"] == "local", who
    assert who["email"] == email.lower(), who
    assert who["name"] == "Ada Lovelace", who
    assert who["status"] == "approved", who
    assert TS_RE.match(who["created_at"]), who
    assert "password" not in json.dumps(who).lower(), who


def test_registration_created_at_is_the_same_in_every_answer(server, kyc):
    # One registration has one creation time: the 202 answer and GET agree.
    email = f"{unique('ts')}@example.com"
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="pending")
    r = get_registration(server, tok, reg["id"])
    assert r.status_code == 200, r.text
    assert r.json()["created_at"] == reg["created_at"], (r.json(), reg)


def test_approval_mails_the_user(server, kyc):
    # Step 1: a registration that KYC approves at once.
    email = f"{unique('mail')}@example.com"
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="approved", name="Mae Mail")
    wait_registration(server, tok, reg["id"], "approved")

    # Step 2: an .eml file addressed to the user appears under <data_dir>/mail/.
    maildir = server.data_dir / "mail"

    def find():
        if not maildir.is_dir():
            return None
        for p in maildir.glob("*.eml"):
            text = p.read_text(errors="replace")
            if re.search(rf"^To: .*{re.escape(email)}", text, re.M | re.I):
                return text
        return None

    text = poll(find, f"a mail to {email} in {maildir}")
    headers, _, body = text.replace("\r\n", "\n").partition("\n\n")
    assert re.search(r"^From: ", headers, re.M), headers
    assert re.search(r"^Subject: .+", headers, re.M), headers
    assert "Mae Mail" in text, text
    # Step 3: exactly one mail for this user (one per causing event).
    time.sleep(0.5)
    mails = [
        p for p in maildir.glob("*.eml") if re.search(rf"^To: .*{re.escape(email)}", p.read_text(), re.M | re.I)
    ]
    assert len(mails) == 1, mails


# -- KYC webhooks ---------------------------------------------------------------


def test_kyc_webhook_decides_registration(server, kyc):
    email = f"{unique('hook')}@example.com"
    # Step 1: register; KYC answers pending and stays pending.
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="pending")
    v = poll(lambda: kyc.find(email=email), "the KYC verification to be requested")
    poll(lambda: kyc.requests("GET", f"/verifications/{v['id']}"), "KYC to be polled")
    r = get_registration(server, tok, reg["id"])
    assert r.status_code == 200 and r.json()["status"] == "pending", r.text
    assert r.json()["decided_at"] is None, r.text

    # Step 2: KYC calls back, signed: 202, and the registration becomes approved.
    hook = {
        "id": unique("wh"),
        "type": "verification.completed",
        "data": {"verification_id": v["id"], "reference": reg["user_id"], "status": "approved"},
    }
    r = post_webhook(server, "kyc", hook)
    assert r.status_code == 202, r.text
    decided = wait_registration(server, tok, reg["id"], "approved")

    # Step 3: the same webhook id again: 200, nothing new.
    r = post_webhook(server, "kyc", hook)
    assert r.status_code == 200, r.text
    assert len(webhook_events(server, hook["id"])) == 1, webhook_events(server, hook["id"])
    again = get_registration(server, tok, reg["id"]).json()
    assert again == decided, (again, decided)
    # A new webhook id with the opposite verdict does not undo the decision.
    late = {"id": unique("wh-late"), "type": "verification.completed",
            "data": dict(hook["data"], status="rejected")}
    r = post_webhook(server, "kyc", late)
    assert r.status_code == 202, r.text
    poll(lambda: webhook_events(server, late["id"]), "the late webhook to be recorded")
    time.sleep(0.5)
    again = get_registration(server, tok, reg["id"]).json()
    assert again == decided, (again, decided)

    # Step 4: refused deliveries: wrong secret, stale t, no header (401); unknown partner (404).
    for name, kw in {
        "bad-signature": {"secret": "not-the-secret"},
        "stale-t": {"t": int(time.time()) - 400},
        "missing-header": {"sign": False},
        "garbled-header": {"signature": "t=abc,v1=xyz"},
    }.items():
        bad = dict(hook, id=unique(f"wh-{name}"))
        r = post_webhook(server, "kyc", bad, **kw)
        assert r.status_code == 401, (name, r.status_code, r.text)
        assert_problem(r, 401, "unauthenticated")
        assert webhook_events(server, bad["id"]) == [], name
    r = post_webhook(server, "nosuchpartner", dict(hook, id=unique("wh-unknown")))
    assert_problem(r, 404, "not_found")
    # Correctly signed but not JSON: 400 invalid_json; without an id: 400 validation_failed.
    raw = b"{not json"
    r = server.post(
        "/v1/partners/kyc/webhooks",
        data=raw,
        headers={"Content-Type": "application/json",
                 "Iotfin-Signature": sign_webhook(KYC_SECRET, raw)},
    )
    assert_problem(r, 400, "invalid_json")
    no_id = {k: v for k, v in hook.items() if k != "id"}
    body = assert_problem(post_webhook(server, "kyc", no_id), 400, "validation_failed")
    assert any(e["field"] == "id" for e in body.get("errors", [])), body

    # Step 5: a future t beyond 300 s is refused too; a fresh, correct one is accepted.
    r = post_webhook(server, "kyc", dict(hook, id=unique("wh-future")), t=int(time.time()) + 400)
    assert_problem(r, 401, "unauthenticated")
    r = post_webhook(server, "kyc", dict(hook, id=unique("wh-ok")), t=int(time.time()) - 250)
    assert r.status_code == 202, r.text


def test_kyc_webhook_by_reference_only_rejects(server, kyc):
    # A webhook naming only the reference (user id) decides the registration too.
    email = f"{unique('hookref')}@example.com"
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="pending")
    poll(lambda: kyc.find(email=email), "the KYC verification to be requested")
    hook = {
        "id": unique("wh"),
        "type": "verification.completed",
        "data": {"reference": reg["user_id"], "status": "rejected"},
    }
    r = post_webhook(server, "kyc", hook)
    assert r.status_code == 202, r.text
    wait_registration(server, tok, reg["id"], "rejected")


# -- decisions and their consequences -------------------------------------------


def test_rejected_registration_gets_no_session(server, kyc):
    email = f"{unique('rej')}@example.com"
    # Step 1: KYC rejects at once.
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="rejected")
    decided = wait_registration(server, tok, reg["id"], "rejected")
    assert decided["user_id"] == reg["user_id"], decided
    # Step 2: no user session from the registration: 403 forbidden.
    r = server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(tok))
    assert_problem(r, 403, "forbidden")
    # Step 3: no login either: 403 (right password, user not approved).
    assert_problem(login(server, {"email": email, "password": PASSWORD}), 403, "forbidden")
    # Step 4: wrong password stays 401, so 403 reveals nothing without the password.
    r = login(server, {"email": email, "password": "wrong-password-1"})
    assert_problem(r, 401, "invalid_credentials")


def test_pending_registration_session_is_409(server, kyc):
    email = f"{unique('pend')}@example.com"
    # Step 1: KYC stays pending.
    _, reg, tok = register_local(server, email, kyc=kyc, kyc_status="pending")
    poll(lambda: kyc.find(email=email), "the KYC verification to be requested")
    # Step 2: GET shows pending, decided_at null.
    r = get_registration(server, tok, reg["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "pending" and body["decided_at"] is None, body
    assert set(body) == {"id", "status", "user_id", "created_at", "decided_at"}, body
    # Step 3: escalation while pending: 409 registration_pending; the token still works.
    r = server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(tok))
    assert_problem(r, 409, "registration_pending")
    assert get_registration(server, tok, reg["id"]).status_code == 200
    # Step 4: login while pending: 403.
    assert_problem(login(server, {"email": email, "password": PASSWORD}), 403, "forbidden")


# -- partner (IDENTITY) users ---------------------------------------------------


def test_partner_user_registers_and_logs_in_through_identity(server, kyc, identity):
    username = unique("pat")
    email = f"{unique('Pat')}@Partner.example"
    identity.add_user(username, "idp-password", email=email, name="Pat Partner")
    kyc.plan(email, "approved")
    creds = {"type": "partner", "username": username, "password": "idp-password"}

    # Step 1: a wrong password at registration: 401 invalid_credentials, no user made.
    r = register(server, dict(creds, password="nope"))
    assert_problem(r, 401, "invalid_credentials")

    # Step 2: register; IDENTITY was asked with username and password.
    identity.clear_log()
    answer = check_registration_answer(server, register(server, creds))
    reg, tok = answer["registration"], answer["access_token"]
    asked = [q.json for q in identity.requests("POST", "/sessions")]
    assert {"username": username, "password": "idp-password"} in asked, asked

    # Step 3: KYC hears about the partner user (reference = user id) and approves.
    v = poll(lambda: kyc.find(reference=reg["user_id"]), "the KYC verification")
    assert v["email"] == email.lower(), v
    wait_registration(server, tok, reg["id"], "approved")

    # Step 4: trade for a user session; /v1/me says partner.
    r = server.post(f"/v1/registrations/{reg['id']}/session", headers=bearer(tok))
    session = check_user_session(server, r, reg["user_id"])
    r = me(server, session["access_token"])
    assert r.status_code == 200, r.text
    who = r.json()
    assert who["id"] == reg["user_id"] and who["type"] == "partner", who
    assert who["email"] == email.lower() and who["name"] == "Pat Partner", who
    assert who["status"] == "approved" and TS_RE.match(who["created_at"]), who

    # Step 5: login as a partner user: IDENTITY checks the password every time.
    identity.clear_log()
    check_user_session(server, login(server, creds), reg["user_id"])
    assert len(identity.requests("POST", "/sessions")) == 1, identity.log

    # Step 6: wrong password, unknown username: 401 invalid_credentials.
    assert_problem(login(server, dict(creds, password="wrong")), 401, "invalid_credentials")
    r = login(server, dict(creds, username=unique("ghost")))
    assert_problem(r, 401, "invalid_credentials")
    # Known to IDENTITY but never registered with iotfin: 401 too.
    stranger = unique("stranger")
    identity.add_user(stranger, "pw-stranger", email=f"{stranger}@partner.example")
    r = login(server, {"type": "partner", "username": stranger, "password": "pw-stranger"})
    assert_problem(r, 401, "invalid_credentials")
    # The same partner user registering again: 409.
    r = register(server, creds)
    code = r.json().get("code") if r.status_code == 409 else "email_taken"
    assert code in ("email_taken", "conflict"), r.text
    assert_problem(r, 409, code)

    # Step 7: IDENTITY answering 500: 502 upstream_unavailable.
    identity.mode = "500"
    assert_problem(login(server, creds), 502, "upstream_unavailable")
    # Step 8: IDENTITY closing the connection: 502.
    identity.mode = "drop"
    assert_problem(login(server, creds), 502, "upstream_unavailable")
    # Step 9: IDENTITY down (connection refused): 502, also for a new registration.
    identity.mode = "ok"
    identity.down()
    assert_problem(login(server, creds), 502, "upstream_unavailable")
    assert_problem(register(server, creds), 502, "upstream_unavailable")
    # Step 10: back up: login works again.
    identity.up()
    check_user_session(server, login(server, creds), reg["user_id"])


def test_identity_calls_go_through_the_configured_proxy(start_iotfin, kyc, identity):
    proxy = ForwardProxy()
    try:
        # Step 1: a server whose IDENTITY partner sits behind a proxy (KYC does not).
        inst = start_iotfin(
            env=partner_env(
                kyc,
                identity,
                IOTFIN_PARTNER_IDENTITY_PROXY=proxy.url,
                NO_PROXY=None,
                no_proxy=None,
            )
        )
        username = unique("vpn")
        email = f"{username}@vpn.example"
        identity.add_user(username, "vpn-password", email=email, name="Vic Vpn")
        kyc.plan(email, "approved")
        creds = {"type": "partner", "username": username, "password": "vpn-password"}

        # Step 2: registration and then login each ask IDENTITY through the proxy.
        answer = check_registration_answer(inst, register(inst, creds))
        reg, tok = answer["registration"], answer["access_token"]
        assert proxy.count == 1, proxy.log
        wait_registration(inst, tok, reg["id"], "approved")
        check_user_session(inst, login(inst, creds), reg["user_id"])
        assert proxy.count == 2, proxy.log
        assert proxy.log == [("POST", identity.url + "/sessions")] * 2, proxy.log

        # Step 3: wrong credentials come back through the proxy as 401.
        r = login(inst, dict(creds, password="wrong"))
        assert_problem(r, 401, "invalid_credentials")
        assert proxy.count == 3, proxy.log
    finally:
        proxy.stop()


# -- tiers and visibility -------------------------------------------------------


def test_tiers_and_other_users_registrations(server, kyc):
    # Step 1: two registrations (A pending, B pending) and one user session.
    _, reg_a, tok_a = register_local(
        server, f"{unique('tierA')}@example.com", kyc=kyc, kyc_status="pending"
    )
    _, reg_b, tok_b = register_local(
        server, f"{unique('tierB')}@example.com", kyc=kyc, kyc_status="pending"
    )
    _, _, session = approved_local_user(server, kyc, "tierU")
    user_tok = session["access_token"]
    anon_tok = anonymous(server)

    # Step 2: a registration token (or an anonymous one) on GET /v1/me: 403.
    assert_problem(me(server, tok_a), 403, "forbidden")
    assert_problem(me(server, anon_tok), 403, "forbidden")

    # Step 3: a user token on POST /v1/registrations: 403.
    r = register(server, local_body(f"{unique('x')}@example.com"), token=user_tok)
    assert_problem(r, 403, "forbidden")
    # ... and a registration token there too.
    r = register(server, local_body(f"{unique('x')}@example.com"), token=tok_a)
    assert_problem(r, 403, "forbidden")

    # Step 4: no token: 401 with WWW-Authenticate: Bearer, on each bearer route.
    assert_refused(server.get("/v1/me"))
    assert_refused(server.post("/v1/registrations", json=local_body("n@example.com")))
    assert_refused(server.get(f"/v1/registrations/{reg_a['id']}"))
    assert_refused(server.post(f"/v1/registrations/{reg_a['id']}/session"))
    assert_refused(server.delete("/v1/sessions/current"))
    # A token that is not a token: 401 too.
    assert_refused(me(server, "not-a-jwt"))

    # Step 5: another user's registration id: 404 not_found, on both routes.
    assert_problem(get_registration(server, tok_a, reg_b["id"]), 404, "not_found")
    r = server.post(f"/v1/registrations/{reg_b['id']}/session", headers=bearer(tok_a))
    assert_problem(r, 404, "not_found")
    # A made-up id looks the same.
    assert_problem(get_registration(server, tok_a, str(uuid.uuid4())), 404, "not_found")
    # Own registrations are still visible.
    assert get_registration(server, tok_a, reg_a["id"]).status_code == 200
    assert get_registration(server, tok_b, reg_b["id"]).status_code == 200


# -- registration input ---------------------------------------------------------


def test_registrations_at_once_one_email_wins_and_the_others_all_land(server, kyc):
    """Writes that arrive together share one commit (group commit; on PostgreSQL one
    pipelined transaction): a duplicate email failing inside it must undo only its own
    registration, and every other one must commit with its KYC event."""
    dup = f"{unique('same')}@example.com"
    others = [f"{unique('apart')}@example.com" for _ in range(12)]
    for e in [dup] + others:
        kyc.plan(e, "approved")
    tokens = [anonymous(server) for _ in range(24)]
    emails = [dup] * 12 + others
    with ThreadPoolExecutor(len(emails)) as ex:
        answers = list(ex.map(lambda a: register(server, local_body(a[0]), token=a[1]),
                              zip(emails, tokens)))
    won = [r for r in answers[:12] if r.status_code == 202]
    assert len(won) == 1, [r.status_code for r in answers[:12]]
    for r in answers[:12]:
        if r.status_code != 202:
            assert_problem(r, 409, "email_taken")
    assert [r.status_code for r in answers[12:]] == [202] * 12, [r.text for r in answers[12:]]
    # Each landed whole: its KYC verification was asked for (an event of the same
    # transaction) and its approval arrives.
    for r in won + answers[12:]:
        body = r.json()
        wait_registration(server, body["access_token"], body["registration"]["id"], "approved")
    assert sorted(v["email"] for v in kyc.verifications.values() if v["email"] in emails) == \
        sorted(set(emails))


def test_registration_validation(server, kyc):
    email = f"{unique('dup')}@example.com"
    # Step 1: a first registration.
    register_local(server, email, kyc=kyc, kyc_status="pending")

    # Step 2: the same email again, in other case: 409 email_taken.
    assert_problem(register(server, local_body(email.upper())), 409, "email_taken")
    assert_problem(register(server, local_body(email)), 409, "email_taken")

    # Step 3: a password under 10 characters: 400 validation_failed naming password.
    r = register(server, local_body(f"{unique('short')}@example.com", password="123456789"))
    body = assert_problem(r, 400, "validation_failed")
    assert any(e["field"] == "password" for e in body.get("errors", [])), body
    for e in body["errors"]:
        assert isinstance(e["message"], str) and e["message"], body
    # Exactly 10 characters is enough.
    r = register(server, local_body(f"{unique('ten')}@example.com", password="1234567890"))
    check_registration_answer(server, r)

    # Step 4: an unknown field: 400 validation_failed naming it.
    r = register(server, dict(local_body(f"{unique('unk')}@example.com"), nickname="ada"))
    body = assert_problem(r, 400, "validation_failed")
    assert any(e["field"] == "nickname" for e in body.get("errors", [])), body

    # Step 5: other bad input: a missing type, a bad email, a wrong type of value, not JSON.
    body = assert_problem(
        register(server, {"email": "a@example.com", "password": PASSWORD, "name": "A"}),
        400,
        "validation_failed",
    )
    assert any(e["field"] == "type" for e in body["errors"]), body
    body = assert_problem(
        register(server, local_body("not-an-email")), 400, "validation_failed"
    )
    assert any(e["field"] == "email" for e in body["errors"]), body
    body = assert_problem(
        register(server, dict(local_body(f"{unique('n')}@example.com"), name=42)),
        400,
        "validation_failed",
    )
    assert any(e["field"] == "name" for e in body["errors"]), body
    r = server.post(
        "/v1/registrations",
        data=b"{not json",
        headers={**bearer(anonymous(server)), "Content-Type": "application/json"},
    )
    assert_problem(r, 400, "invalid_json")


# -- login, refresh, logout -----------------------------------------------------


def test_login_with_wrong_credentials_is_401(server, kyc):
    email, user_id, _ = approved_local_user(server, kyc, "login")
    # Step 1: the right password logs in (email case does not matter).
    check_user_session(server, login(server, {"email": email, "password": PASSWORD}), user_id)
    check_user_session(
        server, login(server, {"email": email.upper(), "password": PASSWORD}), user_id
    )
    # Step 2: a wrong password: 401 invalid_credentials.
    r = login(server, {"email": email, "password": PASSWORD + "x"})
    assert_problem(r, 401, "invalid_credentials")
    # Step 3: an unknown email: the same 401.
    r = login(server, {"email": f"{unique('nobody')}@example.com", "password": PASSWORD})
    assert_problem(r, 401, "invalid_credentials")
    # Step 4: no password: 400 validation_failed.
    body = assert_problem(login(server, {"email": email}), 400, "validation_failed")
    assert any(e["field"] == "password" for e in body["errors"]), body


def stored_hash(inst, email):
    """A local user's stored password hash, read from the store itself."""
    sql = "SELECT password_hash FROM users WHERE email = ?"
    if TEST_PG:
        return psql(pg_url(inst.data_dir), sql.replace("?", f"'{email}'"))
    db = sqlite3.connect(f"file:{inst.data_dir / 'iotfin.db'}?mode=ro", uri=True)
    try:
        return db.execute(sql, (email,)).fetchone()[0]
    finally:
        db.close()


def test_the_password_hash_cost_is_a_setting_and_older_hashes_still_verify(
        tmp_path_factory, kyc, identity):
    workdir = tmp_path_factory.mktemp("hashcost")
    # Step 1: the default is Argon2id with 64 MiB and 2 passes.
    inst = Iotfin(workdir, env=partner_env(kyc, identity, IOTFIN_PASSWORD_HASH_MIB=None))
    inst.start()
    try:
        email, user_id, _ = approved_local_user(inst, kyc, "cost64")
        assert stored_hash(inst, email).startswith("$argon2id$v=19$m=65536,t=2,p=1$")
    finally:
        inst.teardown()
    # Step 2: restarted with 19 MiB, the older hash still verifies (its cost is written
    # in it), a wrong password is still refused, and new hashes take the new cost.
    inst = Iotfin(workdir, env=partner_env(kyc, identity, IOTFIN_PASSWORD_HASH_MIB="19"))
    inst.start()
    try:
        check_user_session(inst, login(inst, {"email": email, "password": PASSWORD}), user_id)
        assert_problem(login(inst, {"email": email, "password": PASSWORD + "x"}), 401,
                       "invalid_credentials")
        email2, _, _ = approved_local_user(inst, kyc, "cost19")
        assert stored_hash(inst, email2).startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    finally:
        inst.teardown()


def test_refresh_rotates_and_reuse_revokes_the_session(server, kyc):
    email, user_id, _ = approved_local_user(server, kyc, "refresh")
    # Step 1: login.
    first = check_user_session(server, login(server, {"email": email, "password": PASSWORD}))
    assert me(server, first["access_token"]).status_code == 200
    # Step 2: refresh: 201 with a new pair; the new access token works.
    r = server.post("/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]})
    second = check_user_session(server, r, user_id)
    assert second["refresh_token"] != first["refresh_token"], (first, second)
    assert second["access_token"] != first["access_token"], (first, second)
    assert me(server, second["access_token"]).status_code == 200
    # Step 3: the spent refresh token again: 401, and the whole session is revoked.
    r = server.post("/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(r, 401, "unauthenticated")
    assert_refused(me(server, second["access_token"]))
    assert_refused(me(server, first["access_token"]))
    r = server.post("/v1/sessions/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(r, 401, "unauthenticated")
    # Step 4: an unknown refresh token: 401; a missing one: 400.
    r = server.post("/v1/sessions/refresh", json={"refresh_token": "no-such-token"})
    assert_problem(r, 401, "unauthenticated")
    assert_problem(server.post("/v1/sessions/refresh", json={}), 400, "validation_failed")
    # Step 5: other sessions of the same user are untouched.
    check_user_session(server, login(server, {"email": email, "password": PASSWORD}), user_id)


def test_logout_revokes_at_once(server, kyc):
    email, user_id, escalated = approved_local_user(server, kyc, "logout")
    # Step 1: two sessions of the same user.
    s = check_user_session(server, login(server, {"email": email, "password": PASSWORD}), user_id)
    assert me(server, s["access_token"]).status_code == 200
    # Step 2: DELETE /v1/sessions/current: 204, no body.
    r = server.delete("/v1/sessions/current", headers=bearer(s["access_token"]))
    assert r.status_code == 204, r.text
    assert r.content == b"", r.content
    # Step 3: that access token is refused on the very next request, and its refresh token.
    assert_refused(me(server, s["access_token"]))
    assert_refused(server.delete("/v1/sessions/current", headers=bearer(s["access_token"])))
    r = server.post("/v1/sessions/refresh", json={"refresh_token": s["refresh_token"]})
    assert_problem(r, 401, "unauthenticated")
    # Step 4: the other session still works.
    assert me(server, escalated["access_token"]).status_code == 200


# -- rate limit ------------------------------------------------------------------


def test_auth_routes_are_rate_limited(start_iotfin, kyc, identity):
    inst = start_iotfin(env=partner_env(kyc, identity, IOTFIN_AUTH_RATE="5"))
    # Step 1: five anonymous sessions within the minute are fine.
    for i in range(5):
        r = inst.post("/v1/sessions/anonymous")
        assert r.status_code == 201, (i, r.text)
    # Step 2: the 6th and 7th: 429 rate_limited with Retry-After (whole seconds).
    for i in (6, 7):
        r = inst.post("/v1/sessions/anonymous")
        assert_problem(r, 429, "rate_limited")
        ra = r.headers.get("Retry-After")
        assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 60, (i, r.headers)
    # Step 3: the other auth routes share the limit.
    assert_problem(
        inst.post("/v1/sessions", json={"email": "a@example.com", "password": PASSWORD}),
        429,
        "rate_limited",
    )
    # Step 4: routes outside sessions and registration are not limited.
    assert inst.get("/healthz").status_code == 200


# -- Idempotency-Key ---------------------------------------------------------------


def test_idempotency_key_on_registration(server, kyc):
    email = f"{unique('idem')}@example.com"
    kyc.plan(email, "pending")
    token = anonymous(server)
    key = {"Idempotency-Key": unique("key")}
    body = local_body(email)
    # Step 1: first request: 202, not marked as a replay.
    r1 = register(server, body, token=token, headers=key)
    first = check_registration_answer(server, r1)
    assert r1.headers.get("Idempotent-Replayed") in (None, "false"), r1.headers
    # Step 2: same key, same body: the first answer again, marked as replayed.
    r2 = register(server, body, token=token, headers=key)
    assert r2.status_code == 202, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json() == first, (r2.json(), first)
    # Step 3: same key, another body: 422 idempotency_key_reused.
    other = local_body(f"{unique('idem2')}@example.com")
    r3 = register(server, other, token=token, headers=key)
    assert_problem(r3, 422, "idempotency_key_reused")
    # Step 4: only one user exists for this email: a fresh key gets 409 email_taken.
    r4 = register(server, body, headers={"Idempotency-Key": unique("key")})
    assert_problem(r4, 409, "email_taken")
    # Step 5: the registration that was made is the one answered, twice.
    r = get_registration(server, first["access_token"], first["registration"]["id"])
    assert r.status_code == 200 and r.json()["user_id"] == first["registration"]["user_id"], r.text
