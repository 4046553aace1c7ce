"""CONTRACT sections 4 and 5, the device side end to end: claiming through the SUPPLIER
mock (activation, refusal, retry, idempotency), listing and ownership, MQTT credentials
and the broker's authentication and topic confinement, commands (offline queue, order,
acks, expiry, validation), device events, requests (ping, authorize through BANK),
presence, retirement, the Server-Sent Events stream, and ordered delivery to BANK.

Most tests share one server (module scope) with the shipped mocks; each test that
overrides a mock answer clears the overrides afterwards. The BANK delivery tests start
their own server so that their queue counts are their own."""

import email
import email.policy
import email.utils
import json
import re
import time
import uuid

import pytest

from conftest import Iotfin, assert_problem, mqtt_connack
from devices_helpers import (
    DeviceClient,
    SseReader,
    admin_events,
    bearer,
    claim,
    claim_active,
    device_connect,
    device_events,
    get_command,
    get_credentials,
    get_device,
    import_serials,
    make_users,
    metric_sum,
    mock_clear,
    mock_clear_requests,
    mock_override,
    mock_requests,
    poll,
    queue_stats,
    send_command,
    unique_serial,
    wait_command,
    wait_status,
)

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENV = {
    "IOTFIN_AUTH_RATE": "10000",
    "IOTFIN_RETRY_BASE_MS": "50",
    "IOTFIN_RETRY_MAX_MS": "200",
}
DEVICE_KEYS = {
    "id", "serial", "model", "status", "external_id", "online", "last_seen_at", "created_at",
    "activated_at",
}
COMMAND_KEYS = {
    "id", "type", "payload", "status", "result", "created_at", "delivered_at", "completed_at",
    "expires_at",
}
# MQTT 5 CONNACK reason codes that mean "refused" for bad credentials or authorisation.
REFUSED = {0x80, 0x85, 0x86, 0x87, 0x8A, 0x8C}


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    inst = Iotfin(tmp_path_factory.mktemp("devices"), env=ENV)
    inst.start()
    yield inst
    problems = inst.teardown()
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture(scope="module")
def users(srv):
    """Three approved users on the shared server: alice, bob, carol."""
    return make_users(srv, 3, tag="dev40")


@pytest.fixture
def alice(users):
    return users[0]


@pytest.fixture
def bob(users):
    return users[1]


@pytest.fixture
def carol(users):
    return users[2]


@pytest.fixture(autouse=True)
def clean_mock(request):
    """Clears the mock overrides of the shared server after each test that used it."""
    yield
    if "srv" in request.fixturenames:
        mock_clear(request.getfixturevalue("srv"))


@pytest.fixture
def devices():
    """Device clients opened by a test; closed at its end."""
    opened = []
    yield opened
    for d in opened:
        d.close()


def connect(srv, creds, devices, **kw):
    d = device_connect(srv, creds, **kw)
    devices.append(d)
    return d


def check_device(body, serial=None):
    assert set(body) == DEVICE_KEYS, body
    if serial:
        assert body["serial"] == serial, body
    assert TS_RE.match(body["created_at"]), body
    assert isinstance(body["online"], bool), body
    return body


def check_command(body):
    assert set(body) == COMMAND_KEYS, body
    assert TS_RE.match(body["created_at"]) and TS_RE.match(body["expires_at"]), body
    return body


def ts_epoch(ts):
    """Seconds since the epoch of an RFC 3339 UTC timestamp with milliseconds."""
    import datetime

    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def events_of(srv, type, device_id):
    return admin_events(srv, type=type, subject=f"devices/{device_id}")


def eml_for(srv, addr, needle):
    """Parsed .eml mails to addr whose subject or body mentions needle."""
    d = srv.data_dir / "mail"
    out = []
    for p in sorted(d.glob("*.eml")) if d.is_dir() else []:
        msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        tos = [a.lower() for _, a in email.utils.getaddresses([str(msg.get("To", ""))])]
        if addr.lower() not in tos:
            continue
        part = msg.get_body(preferencelist=("plain", "html")) or msg
        if needle in str(msg.get("Subject", "")) or needle in part.get_content():
            out.append(msg)
    return out


# ---- claiming -------------------------------------------------------------------------------


def test_claim_activates_with_external_id_event_and_mail(srv, alice):
    serial = unique_serial("ACT")
    # Step 1: admin imports the serial.
    assert import_serials(srv, [serial]) == {"imported": 1, "duplicates": 0, "invalid": []}
    # Step 2: the user claims it: 202 with status provisioning.
    r = claim(srv, alice, serial)
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    dev = check_device(r.json(), serial)
    assert dev["status"] == "provisioning", dev
    assert dev["model"] == "meter-1" and dev["online"] is False, dev
    assert dev["activated_at"] is None and dev["external_id"] is None, dev
    # Step 3: SUPPLIER links it: active, with its external id and activation time.
    d = wait_status(srv, alice, dev["id"], "active")
    check_device(d, serial)
    assert d["status"] == "active", d
    assert isinstance(d["external_id"], str) and d["external_id"], d
    assert TS_RE.match(d["activated_at"] or ""), d
    assert d["id"] == dev["id"] and d["created_at"] == dev["created_at"], (dev, d)
    # The SUPPLIER was asked with the serial and the owner's id.
    calls = [c for c in mock_requests(srv, "supplier") if (c.get("body") or {}).get("serial") == serial]
    assert len(calls) == 1, calls
    assert calls[0]["method"] == "POST" and calls[0]["path"].endswith("/registrations"), calls[0]
    assert calls[0]["body"]["owner_reference"] == alice.id, calls[0]
    # Step 4: the event log has device.claimed and device.activated.
    assert len(events_of(srv, "device.claimed", dev["id"])) == 1
    act = events_of(srv, "device.activated", dev["id"])
    assert len(act) == 1, act
    assert act[0]["subject"] == f"devices/{dev['id']}", act[0]
    assert act[0]["data"]["device_id"] == dev["id"], act[0]
    assert act[0]["data"]["external_id"] == d["external_id"], act[0]
    # Step 5: the owner gets one mail about this device.
    mails = poll(lambda: eml_for(srv, alice.email, serial))
    assert len(mails) == 1, f"no single activation mail to {alice.email} mentioning {serial}: {mails}"
    # The device is in the owner's list.
    r = srv.get("/v1/devices", headers=alice.headers, params={"limit": 200})
    assert r.status_code == 200, r.text
    assert dev["id"] in [x["id"] for x in r.json()["items"]], r.json()


def test_claim_of_an_unknown_serial_is_404_unknown_serial(srv, alice):
    # Step 1: a well-formed serial that was never imported.
    r = claim(srv, alice, unique_serial("NOPE"))
    body = assert_problem(r, 404, "unknown_serial")
    assert "errors" not in body or body["errors"] == [], body
    # Step 2: a malformed serial is a validation failure, not an unknown one.
    r = claim(srv, alice, "a b")
    body = assert_problem(r, 400, "validation_failed")
    assert any(e["field"] == "serial" for e in body.get("errors", [])), body


def test_second_claim_is_409_already_claimed(srv, alice, bob):
    serial = unique_serial("TWICE")
    import_serials(srv, [serial])
    # Step 1: alice claims.
    r = claim(srv, alice, serial)
    assert r.status_code == 202, r.text
    first = r.json()
    # Step 2: bob claims the same serial: 409 already_claimed.
    assert_problem(claim(srv, bob, serial), 409, "already_claimed")
    # Step 3: alice claims it again (no Idempotency-Key): 409 as well.
    assert_problem(claim(srv, alice, serial), 409, "already_claimed")
    # Step 4: it stays alice's; bob does not see it.
    d = wait_status(srv, alice, first["id"], "active")
    assert d["status"] == "active", d
    assert_problem(srv.get(f"/v1/devices/{first['id']}", headers=bob.headers), 404, "not_found")
    assert len(events_of(srv, "device.claimed", first["id"])) == 1


def test_claim_with_idempotency_key_replays_the_first_answer(srv, alice, bob):
    serial, other = unique_serial("IDEM"), unique_serial("IDEM")
    import_serials(srv, [serial, other])
    key = str(uuid.uuid4())
    # Step 1: first claim with a key: 202, not marked as a replay.
    r1 = claim(srv, alice, serial, headers={"Idempotency-Key": key})
    assert r1.status_code == 202, r1.text
    assert r1.headers.get("Idempotent-Replayed") is None, r1.headers
    # Step 2: same key, same body: the first answer again, marked as replayed.
    r2 = claim(srv, alice, serial, headers={"Idempotency-Key": key})
    assert r2.status_code == 202, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json() == r1.json()
    # Step 3: same key, another body: 422 idempotency_key_reused.
    assert_problem(claim(srv, alice, other, headers={"Idempotency-Key": key}), 422, "idempotency_key_reused")
    # Step 4: another user with the same key and body is not served alice's answer.
    r4 = claim(srv, bob, serial, headers={"Idempotency-Key": key})
    assert r4.headers.get("Idempotent-Replayed") is None, r4.headers
    assert_problem(r4, 409, "already_claimed")
    # Only one claim happened.
    assert len(events_of(srv, "device.claimed", r1.json()["id"])) == 1
    r = srv.get("/v1/devices", headers=alice.headers, params={"limit": 200})
    assert [x["serial"] for x in r.json()["items"]].count(serial) == 1
    assert other not in [x["serial"] for x in r.json()["items"]]


def test_supplier_refusal_fails_the_device(srv, alice):
    serial = unique_serial("REFUSE")
    import_serials(srv, [serial])
    # Step 1: SUPPLIER answers 404 to registrations.
    mock_override(srv, partner="supplier", method="POST", path="/registrations", status=404,
                  body={"error": "unknown device"})
    # Step 2: claim: 202 provisioning, then failed.
    r = claim(srv, alice, serial)
    assert r.status_code == 202, r.text
    dev = r.json()
    assert dev["status"] == "provisioning", dev
    d = wait_status(srv, alice, dev["id"], "failed")
    assert d["status"] == "failed", d
    assert d["external_id"] is None and d["activated_at"] is None, d
    # Step 3: the event device.provisioning.failed, no device.activated.
    failed = events_of(srv, "device.provisioning.failed", dev["id"])
    assert len(failed) == 1, failed
    assert failed[0]["data"]["device_id"] == dev["id"], failed[0]
    # Step 4: a permanent refusal is not retried.
    time.sleep(0.5)
    calls = [c for c in mock_requests(srv, "supplier") if (c.get("body") or {}).get("serial") == serial]
    assert len(calls) == 1, calls
    assert events_of(srv, "device.activated", dev["id"]) == []
    assert get_device(srv, alice, dev["id"])["status"] == "failed"
    # Step 5: a failed device gets no credentials and no commands.
    assert_problem(srv.post(f"/v1/devices/{dev['id']}/credentials", headers=alice.headers),
                   409, "device_not_active")
    assert_problem(send_command(srv, alice, dev["id"]), 409, "device_not_active")


def test_supplier_transient_failure_is_retried_until_active(srv, alice):
    serial = unique_serial("RETRY")
    import_serials(srv, [serial])
    # Step 1: SUPPLIER answers 500 once.
    mock_override(srv, partner="supplier", method="POST", path="/registrations", status=500,
                  body={"error": "boom"}, times=1)
    # Step 2: claim; it becomes active after a retry.
    r = claim(srv, alice, serial)
    assert r.status_code == 202, r.text
    dev = r.json()
    d = wait_status(srv, alice, dev["id"], "active")
    assert d["status"] == "active", d
    assert d["external_id"], d
    calls = [c for c in mock_requests(srv, "supplier") if (c.get("body") or {}).get("serial") == serial]
    assert len(calls) == 2, calls
    assert events_of(srv, "device.provisioning.failed", dev["id"]) == []
    assert len(events_of(srv, "device.activated", dev["id"])) == 1


# ---- listing and ownership ------------------------------------------------------------------------


def test_device_list_is_paginated_and_own_only(srv, alice, bob):
    # Step 1: alice has at least three devices; bob one.
    for _ in range(3):
        claim_active(srv, alice)
    bobs = claim_active(srv, bob)
    r = srv.get("/v1/devices", headers=alice.headers, params={"limit": 200})
    assert r.status_code == 200, r.text
    full = r.json()
    assert set(full) == {"items", "next_cursor"} and full["next_cursor"] is None, full
    all_ids = [x["id"] for x in full["items"]]
    assert len(all_ids) >= 3 and bobs["id"] not in all_ids, full
    for x in full["items"]:
        check_device(x)
    # Step 2: limit=1 pages through the same list, one at a time.
    seen, cursor = [], None
    for _ in range(len(all_ids) + 2):
        params = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        r = srv.get("/v1/devices", headers=alice.headers, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) == 1, page
        seen.append(page["items"][0]["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor, page
    assert seen == all_ids, (seen, all_ids)
    # Step 3: bob's list has his device and none of alice's.
    r = srv.get("/v1/devices", headers=bob.headers)
    assert r.status_code == 200, r.text
    ids = [x["id"] for x in r.json()["items"]]
    assert bobs["id"] in ids and not set(ids) & set(all_ids), ids


def test_another_users_device_is_404_everywhere(srv, alice, bob):
    dev = claim_active(srv, alice)
    path = f"/v1/devices/{dev['id']}"
    r = send_command(srv, alice, dev["id"])
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    # Step 1: bob reads, retires, asks credentials, sends and reads commands, reads events.
    assert_problem(srv.get(path, headers=bob.headers), 404, "not_found")
    assert_problem(srv.delete(path, headers=bob.headers), 404, "not_found")
    assert_problem(srv.post(f"{path}/credentials", headers=bob.headers), 404, "not_found")
    assert_problem(send_command(srv, bob, dev["id"]), 404, "not_found")
    assert_problem(srv.get(f"{path}/commands/{cid}", headers=bob.headers), 404, "not_found")
    assert_problem(srv.get(f"{path}/events", headers=bob.headers), 404, "not_found")
    # Step 2: an unknown device id is the same 404 for its would-be owner.
    assert_problem(srv.get(f"/v1/devices/{uuid.uuid4()}", headers=alice.headers), 404, "not_found")
    # Step 3: nothing changed for alice.
    d = get_device(srv, alice, dev["id"])
    assert d["status"] == "active", d
    assert get_command(srv, alice, dev["id"], cid)["status"] == "queued"
    assert events_of(srv, "device.retired", dev["id"]) == []
    # Without a token: 401.
    r = srv.get(path)
    assert_problem(r, 401, "unauthenticated")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers


# ---- credentials --------------------------------------------------------------------------------


def test_credentials_for_an_active_device(srv, alice):
    dev = claim_active(srv, alice)
    # Step 1: 201 with the contract's fields.
    r = srv.post(f"/v1/devices/{dev['id']}/credentials", headers=alice.headers)
    assert r.status_code == 201, r.text
    c = r.json()
    assert set(c) == {"client_id", "username", "password", "mqtt_url", "topic_prefix", "expires_at"}, c
    assert c["client_id"] == dev["id"] and c["username"] == dev["id"], c
    assert c["topic_prefix"] == f"devices/{dev['id']}/", c
    assert c["mqtt_url"] == srv.mqtt_url, (c, srv.mqtt_url)
    assert TS_RE.match(c["expires_at"]), c
    # The password is a device-tier JWT for this device.
    import base64

    seg = c["password"].split(".")
    assert len(seg) == 3, c["password"]
    claims = json.loads(base64.urlsafe_b64decode(seg[1] + "=" * (-len(seg[1]) % 4)))
    assert claims["tier"] == "device" and claims["sub"] == dev["id"] and claims["iss"] == "iotfin", claims
    assert 86400 - 60 <= claims["exp"] - claims["iat"] <= 86400 + 60, claims
    assert abs(ts_epoch(c["expires_at"]) - claims["exp"]) <= 2, (c["expires_at"], claims)
    assert abs(ts_epoch(c["expires_at"]) - (time.time() + 86400)) <= 60, c
    # Step 2: the device connects with it.
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, c["client_id"], c["password"])
    try:
        assert d.connect(subscribe=False) == 0
    finally:
        d.close()
    # Step 3: a second set of credentials works too; both are distinct tokens.
    c2 = get_credentials(srv, alice, dev["id"])
    assert c2["password"] != c["password"]


def test_credentials_for_a_non_active_device_is_409(srv, alice):
    # Step 1: a device still provisioning (SUPPLIER slow).
    serial = unique_serial("SLOW")
    import_serials(srv, [serial])
    mock_override(srv, partner="supplier", method="POST", path="/registrations", status=201,
                  body={"device_id": str(uuid.uuid4())}, delay_ms=1500, times=1)
    r = claim(srv, alice, serial)
    assert r.status_code == 202, r.text
    dev = r.json()
    assert get_device(srv, alice, dev["id"])["status"] == "provisioning"
    assert_problem(srv.post(f"/v1/devices/{dev['id']}/credentials", headers=alice.headers),
                   409, "device_not_active")
    assert_problem(send_command(srv, alice, dev["id"]), 409, "device_not_active")
    # Step 2: once active, credentials are issued.
    assert wait_status(srv, alice, dev["id"], "active")["status"] == "active"
    get_credentials(srv, alice, dev["id"])
    # Step 3: retired: 409 again.
    r = srv.delete(f"/v1/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert_problem(srv.post(f"/v1/devices/{dev['id']}/credentials", headers=alice.headers),
                   409, "device_not_active")


# ---- MQTT authentication and confinement -------------------------------------------------------


def test_broker_admits_a_device_and_refuses_bad_clients(srv, alice, devices):
    a = claim_active(srv, alice)
    b = claim_active(srv, alice)
    ca, cb = get_credentials(srv, alice, a["id"]), get_credentials(srv, alice, b["id"])
    # Step 1: the device connects: CONNACK 0.
    connect(srv, ca, devices)

    def refused(**kw):
        d = DeviceClient(srv.mqtt_host, srv.mqtt_port, **kw)
        try:
            return d.connect(subscribe=False)
        finally:
            d.close()

    tok = ca["password"]
    head, payload, sig = tok.split(".")
    mid = len(sig) // 2
    bad_sig = f"{head}.{payload}.{sig[:mid]}{'A' if sig[mid] != 'A' else 'B'}{sig[mid + 1:]}"
    cases = {
        # Step 2: a wrong token (tampered signature, garbage).
        "tampered signature": dict(device_id=a["id"], password=bad_sig),
        "garbage token": dict(device_id=a["id"], password="not-a-token"),
        # Step 3: no credentials at all.
        "anonymous": dict(device_id=a["id"], password=None, anonymous=True),
        # Step 4: client id other than the username.
        "client id != username": dict(device_id=a["id"], password=tok, client_id=f"{a['id']}-x"),
        # Step 5: another device's token.
        "B's token as A": dict(device_id=a["id"], password=cb["password"]),
        "A's token as B": dict(device_id=b["id"], password=tok),
        # Step 6: a user token is not a device token.
        "user token": dict(device_id=a["id"], password=alice.token),
    }
    got = {name: refused(**kw) for name, kw in cases.items()}
    bad = {name: rc for name, rc in got.items() if rc not in REFUSED}
    assert not bad, f"accepted or no CONNACK (rc 0 = accepted): {bad}"
    # MQTT 3.1.1 as well: anonymous and a wrong password are refused (4 or 5).
    assert mqtt_connack(srv.mqtt_host, srv.mqtt_port) in (4, 5)
    assert mqtt_connack(srv.mqtt_host, srv.mqtt_port, a["id"], "wrong") in (4, 5)
    # The good device is still connected.
    assert devices[0].is_connected and not devices[0].disconnected.is_set()


def test_a_device_is_confined_to_its_own_topics(srv, alice, bob, devices):
    a = claim_active(srv, alice)
    b = claim_active(srv, bob)
    da = connect(srv, get_credentials(srv, alice, a["id"]), devices)
    db = connect(srv, get_credentials(srv, bob, b["id"]), devices)
    other = f"devices/{b['id']}"
    # Step 1: A publishes into B's topics (an event, a fake command, a request, an ack).
    da.publish(f"{other}/events", {"id": "forged-1", "type": "t", "data": {}})
    da.publish(f"{other}/commands", {"id": "fake", "type": "x", "payload": {}})
    da.publish(f"{other}/requests/ping", {"request_id": "r-forged", "data": {}})
    da.publish(f"{other}/responses/r1", {"request_id": "r1", "status": "ok"})
    # ... and into iotfin's own topics: presence of an offline device, a revocation of B.
    c = claim_active(srv, alice)
    da.publish(f"iotfin/presence/{c['id']}", {"online": True})
    da.publish("iotfin/control/revoke", {"devices": [b["id"]], "kick": [b["id"]]})
    # Step 2: A subscribes to B's topics and to wildcards above its prefix.
    subacks = {t: da.subscribe(t) for t in (f"{other}/#", "devices/+/commands", "#")}
    # Step 3: iotfin sends B a real command; B gets it, A must not.
    r = send_command(srv, bob, b["id"], type="only.for.b")
    assert r.status_code == 202, r.text
    assert db.wait_message(f"{other}/commands", 5) is not None, "B did not get its own command"
    time.sleep(0.5)
    # B received only its command, nothing A published.
    b_topics = [m.topic for m in db.received()]
    assert b_topics == [f"{other}/commands"], db.received()
    assert db.commands()[0]["type"] == "only.for.b", db.commands()
    # B's event list has no forged event; no response for the forged request.
    assert device_events(srv, bob, b["id"])["items"] == []
    # A's subscriptions were refused (SUBACK >= 0x80) or carried nothing of B's.
    leaked = [m for m in da.received() if not m.topic.startswith(f"devices/{a['id']}/")]
    assert leaked == [], (subacks, leaked)
    for t, rcs in subacks.items():
        assert rcs is not None, f"no SUBACK for {t}"
        assert rcs[0] >= 0x80 or not leaked, (t, rcs)
    assert len(events_of(srv, "device.event.received", b["id"])) == 0
    # The spoofed presence and revocation had no effect.
    assert get_device(srv, alice, c["id"])["online"] is False
    assert events_of(srv, "device.connected", c["id"]) == []
    assert db.is_connected and not db.disconnected.is_set(), "B was kicked by A's forged revocation"
    assert get_device(srv, bob, b["id"])["online"] is True


# ---- commands -----------------------------------------------------------------------------------


def test_offline_commands_queue_and_arrive_oldest_first(srv, alice, devices):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    # Step 1: three commands while the device is offline: 202 queued.
    sent = []
    for i, typ in enumerate(["set.temp", "reboot", "fw_update-2"]):
        r = send_command(srv, alice, dev["id"], type=typ, payload={"n": i, "v": [1, 2]})
        assert r.status_code == 202, r.text
        c = check_command(r.json())
        assert c["status"] == "queued" and c["type"] == typ and c["payload"] == {"n": i, "v": [1, 2]}, c
        assert c["result"] is None and c["delivered_at"] is None and c["completed_at"] is None, c
        assert abs(ts_epoch(c["expires_at"]) - ts_epoch(c["created_at"]) - 300) < 0.01, c
        sent.append(c)
    # They stay queued while nobody listens.
    time.sleep(0.5)
    for c in sent:
        assert get_command(srv, alice, dev["id"], c["id"])["status"] == "queued"
    # Step 2: the device connects and subscribes; it acks every command.
    d = connect(srv, creds, devices, auto_ack="succeeded")
    got = d.wait_commands(3, 5)
    assert [c["id"] for c in got] == [c["id"] for c in sent], got
    for msg, c in zip(got, sent):
        assert set(msg) == {"id", "type", "payload", "issued_at", "expires_at"}, msg
        assert msg["type"] == c["type"] and msg["payload"] == c["payload"], msg
        assert msg["expires_at"] == c["expires_at"] and TS_RE.match(msg["issued_at"]), msg
    # Step 3: each becomes succeeded with the device's result.
    for c in sent:
        final = wait_command(srv, alice, dev["id"], c["id"], "succeeded", 5)
        check_command(final)
        assert final["status"] == "succeeded", final
        assert final["result"] == {"echo": c["type"]}, final
        assert TS_RE.match(final["delivered_at"] or "") and TS_RE.match(final["completed_at"] or ""), final
    # Events: queued, delivered, completed for each.
    for typ in ("device.command.queued", "device.command.delivered", "device.command.completed"):
        ids = [e["data"]["command_id"] for e in events_of(srv, typ, dev["id"])]
        assert sorted(ids) == sorted(c["id"] for c in sent), (typ, ids)
    # No duplicate delivery.
    time.sleep(0.3)
    assert len(d.commands()) == 3, d.commands()


def test_commands_wait_until_the_device_subscribes(srv, alice, devices):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    # Step 1: connected but not subscribed to its commands.
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"])
    devices.append(d)
    assert d.connect(subscribe=False) == 0
    assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
    r = send_command(srv, alice, dev["id"], type="wait.for.sub")
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    time.sleep(0.5)
    c = get_command(srv, alice, dev["id"], cid)
    assert c["status"] == "queued" and c["delivered_at"] is None, c
    # Step 2: it subscribes: the command arrives and is delivered.
    assert d.subscribe(f"devices/{dev['id']}/commands")[0] < 0x80
    got = d.wait_commands(1, 3)
    assert [x["id"] for x in got] == [cid], got
    c = wait_command(srv, alice, dev["id"], cid, "delivered", 3)
    assert c["status"] == "delivered", c


def test_online_command_is_delivered_and_a_failed_ack_fails_it(srv, alice, devices):
    dev = claim_active(srv, alice)
    d = connect(srv, get_credentials(srv, alice, dev["id"]), devices)
    # Step 1: the device is online; a command reaches it and is delivered.
    r = send_command(srv, alice, dev["id"], type="open.valve", payload={"valve": 3}, ttl=60)
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    got = d.wait_commands(1, 3)
    assert got and got[0]["id"] == cid and got[0]["payload"] == {"valve": 3}, got
    c = wait_command(srv, alice, dev["id"], cid, "delivered", 3)
    assert c["status"] == "delivered" and TS_RE.match(c["delivered_at"] or ""), c
    assert c["completed_at"] is None, c
    # Step 2: the device acks failed with a result.
    d.ack(cid, "failed", {"reason": "stuck"})
    c = wait_command(srv, alice, dev["id"], cid, "failed", 3)
    assert c["status"] == "failed", c
    assert c["result"] == {"reason": "stuck"}, c
    assert TS_RE.match(c["completed_at"] or ""), c
    # Step 3: a late second ack changes nothing.
    d.ack(cid, "succeeded", {"late": True})
    time.sleep(0.3)
    c2 = get_command(srv, alice, dev["id"], cid)
    assert c2["status"] == "failed" and c2["result"] == {"reason": "stuck"}, c2
    completed = events_of(srv, "device.command.completed", dev["id"])
    assert len(completed) == 1 and completed[0]["data"]["status"] == "failed", completed


def test_unacknowledged_command_expires_at_its_deadline(srv, alice, devices):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    # Step 1: ttl 1 s for an offline device.
    t0 = time.monotonic()
    r = send_command(srv, alice, dev["id"], type="short.lived", ttl=1)
    assert r.status_code == 202, r.text
    c = r.json()
    assert c["status"] == "queued", c
    assert abs(ts_epoch(c["expires_at"]) - ts_epoch(c["created_at"]) - 1) < 0.01, c
    # Step 2: expired after about 1 s.
    final = wait_command(srv, alice, dev["id"], c["id"], "expired", 5)
    took = time.monotonic() - t0
    assert final["status"] == "expired", final
    assert took < 3.0, f"expired only after {took:.2f} s"
    assert final["delivered_at"] is None and final["result"] is None, final
    assert len(events_of(srv, "device.command.expired", dev["id"])) == 1
    # Step 3: the device connecting later does not get it.
    d = connect(srv, creds, devices)
    time.sleep(0.7)
    assert d.commands() == [], d.commands()
    # A late ack does not revive it.
    d.ack(c["id"], "succeeded")
    time.sleep(0.3)
    assert get_command(srv, alice, dev["id"], c["id"])["status"] == "expired"


BAD_COMMANDS = [
    ("type uppercase", {"type": "Reboot", "payload": {}}, "type"),
    ("type with space", {"type": "re boot", "payload": {}}, "type"),
    ("type empty", {"type": "", "payload": {}}, "type"),
    ("type too long", {"type": "a" * 65, "payload": {}}, "type"),
    ("type missing", {"payload": {}}, "type"),
    ("type not a string", {"type": 5, "payload": {}}, "type"),
    ("payload array", {"type": "x", "payload": [1]}, "payload"),
    ("payload string", {"type": "x", "payload": "on"}, "payload"),
    ("payload missing", {"type": "x"}, "payload"),
    ("payload over 8 KiB", {"type": "x", "payload": {"blob": "x" * 8300}}, "payload"),
    ("ttl 0", {"type": "x", "payload": {}, "ttl_seconds": 0}, "ttl_seconds"),
    ("ttl 86401", {"type": "x", "payload": {}, "ttl_seconds": 86401}, "ttl_seconds"),
    ("ttl string", {"type": "x", "payload": {}, "ttl_seconds": "10"}, "ttl_seconds"),
    ("ttl fractional", {"type": "x", "payload": {}, "ttl_seconds": 1.5}, "ttl_seconds"),
    ("unknown field", {"type": "x", "payload": {}, "priority": 1}, "priority"),
]


@pytest.fixture(scope="module")
def cmd_device(srv, users):
    return claim_active(srv, users[0])


@pytest.mark.parametrize("name,body,field", BAD_COMMANDS, ids=[c[0] for c in BAD_COMMANDS])
def test_command_body_validation(srv, alice, cmd_device, name, body, field):
    # One bad body: 400 validation_failed naming the field; nothing queued.
    r = srv.post(f"/v1/devices/{cmd_device['id']}/commands", json=body, headers=alice.headers)
    problem = assert_problem(r, 400, "validation_failed")
    fields = [e.get("field") for e in problem.get("errors", [])]
    assert field in fields, problem


def test_command_bounds_that_are_accepted(srv, alice, cmd_device):
    before = len(events_of(srv, "device.command.queued", cmd_device["id"]))
    # ttl at both ends, the longest type, a payload just under 8 KiB.
    for body in (
        {"type": "a" * 64, "payload": {}, "ttl_seconds": 1},
        {"type": "x.y_z-0", "payload": {"nested": {"a": [1, None, True]}}, "ttl_seconds": 86400},
        {"type": "big", "payload": {"blob": "x" * 8000}},
    ):
        r = srv.post(f"/v1/devices/{cmd_device['id']}/commands", json=body, headers=alice.headers)
        assert r.status_code == 202, (body.get("type"), r.text)
        c = check_command(r.json())
        assert c["type"] == body["type"] and c["payload"] == body["payload"], c
    # Invalid bodies before did not queue anything.
    assert len(events_of(srv, "device.command.queued", cmd_device["id"])) == before + 3
    # Not JSON: 400 invalid_json.
    r = srv.post(f"/v1/devices/{cmd_device['id']}/commands", data=b"{nope",
                 headers={**alice.headers, "Content-Type": "application/json"})
    assert_problem(r, 400, "invalid_json")


def test_command_to_a_non_active_device_is_409(srv, alice):
    dev = claim_active(srv, alice)
    # Step 1: retire it.
    r = srv.delete(f"/v1/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200, r.text
    # Step 2: a valid command: 409 device_not_active; nothing queued.
    assert_problem(send_command(srv, alice, dev["id"]), 409, "device_not_active")
    assert events_of(srv, "device.command.queued", dev["id"]) == []


def test_command_idempotency_key_replays(srv, alice, cmd_device):
    key = str(uuid.uuid4())
    r1 = send_command(srv, alice, cmd_device["id"], type="idem", payload={"a": 1}, headers={"Idempotency-Key": key})
    assert r1.status_code == 202, r1.text
    r2 = send_command(srv, alice, cmd_device["id"], type="idem", payload={"a": 1}, headers={"Idempotency-Key": key})
    assert r2.status_code == 202, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json()["id"] == r1.json()["id"], (r1.json(), r2.json())
    r3 = send_command(srv, alice, cmd_device["id"], type="idem", payload={"a": 2}, headers={"Idempotency-Key": key})
    assert_problem(r3, 422, "idempotency_key_reused")


# ---- device events ------------------------------------------------------------------------------


def test_device_events_are_stored_once_per_id_oldest_first(srv, alice, devices):
    dev = claim_active(srv, alice)
    d = connect(srv, get_credentials(srv, alice, dev["id"]), devices)
    # Step 1: four publications, one a repeat of the first id with other data.
    d.publish_event({"id": "ev-1", "type": "meter.reading", "time": "2026-01-02T03:04:05.678Z", "data": {"kwh": 1.5}})
    d.publish_event({"id": "ev-2", "type": "meter.reading", "data": {"kwh": 2}})
    d.publish_event({"id": "ev-1", "type": "meter.reading", "data": {"kwh": 99}})
    d.publish_event({"id": "ev-3", "type": "door.opened", "data": {}})
    # Step 2: GET events: three items, oldest first, the first copy of ev-1 kept.
    assert poll(lambda: len(device_events(srv, alice, dev["id"])["items"]) >= 3, 5)
    time.sleep(0.3)
    body = device_events(srv, alice, dev["id"])
    assert body["next_cursor"] is None, body
    items = body["items"]
    assert [e["id"] for e in items] == ["ev-1", "ev-2", "ev-3"], items
    for e in items:
        assert set(e) == {"id", "type", "time", "data", "received_at"}, e
        assert TS_RE.match(e["received_at"]) and TS_RE.match(e["time"]), e
    assert items[0]["type"] == "meter.reading" and items[0]["data"] == {"kwh": 1.5}, items[0]
    assert items[0]["time"] == "2026-01-02T03:04:05.678Z", items[0]
    assert items[1]["data"] == {"kwh": 2} and items[2]["type"] == "door.opened", items
    # Paginated: limit=2 then the cursor.
    p1 = device_events(srv, alice, dev["id"], limit=2)
    assert [e["id"] for e in p1["items"]] == ["ev-1", "ev-2"] and p1["next_cursor"], p1
    p2 = device_events(srv, alice, dev["id"], limit=2, cursor=p1["next_cursor"])
    assert [e["id"] for e in p2["items"]] == ["ev-3"] and p2["next_cursor"] is None, p2
    # Step 3: device.event.received once per id in the event log.
    logged = events_of(srv, "device.event.received", dev["id"])
    assert [e["data"]["event_id"] for e in logged] == ["ev-1", "ev-2", "ev-3"], logged
    assert logged[0]["data"]["data"] == {"kwh": 1.5}, logged[0]
    # last_seen_at is set.
    assert TS_RE.match(get_device(srv, alice, dev["id"])["last_seen_at"] or "")


def test_malformed_device_messages_are_dropped_and_counted(srv, alice, devices):
    dev = claim_active(srv, alice)
    d = connect(srv, get_credentials(srv, alice, dev["id"]), devices)
    before = metric_sum(srv, "iotfin_mqtt_messages_rejected_total")
    # Step 1: not JSON, missing data, data not an object, over 16 KiB.
    d.publish_event(b"this is {not json")
    d.publish_event({"id": "m-1", "type": "t"})
    d.publish_event({"id": "m-2", "type": "t", "data": "string"})
    d.publish_event({"id": "m-3", "type": "t", "data": {"blob": "x" * (17 * 1024)}})
    # A request without request_id, an ack that is not JSON.
    d.publish(f"devices/{dev['id']}/requests/ping", {"data": {}})
    d.publish(f"devices/{dev['id']}/commands/nope/ack", b"\xff\xfe")
    # Step 2: counted in /metrics.
    assert poll(lambda: metric_sum(srv, "iotfin_mqtt_messages_rejected_total") >= before + 6, 5), (
        before, metric_sum(srv, "iotfin_mqtt_messages_rejected_total"))
    # Step 3: the connection is still up and a good event still works.
    assert d.is_connected and not d.disconnected.is_set(), d.disconnect_rc
    d.publish_event({"id": "good-1", "type": "t", "data": {"ok": True}})
    items = poll(lambda: device_events(srv, alice, dev["id"])["items"], 5)
    assert [e["id"] for e in items] == ["good-1"], items
    assert get_device(srv, alice, dev["id"])["online"] is True
    r, _ = d.request("ping")
    assert r and r["status"] == "ok", r


# ---- requests -----------------------------------------------------------------------------------


@pytest.fixture
def req_device(srv, alice, devices):
    dev = claim_active(srv, alice)
    return dev, connect(srv, get_credentials(srv, alice, dev["id"]), devices)


def test_request_ping_answers_with_the_time(srv, req_device):
    dev, d = req_device
    resp, took = d.request("ping", request_id="ping-1", timeout=5)
    assert resp is not None, "no response to ping"
    assert took < 3.0, took
    assert set(resp) == {"request_id", "status", "data"}, resp
    assert resp["request_id"] == "ping-1" and resp["status"] == "ok", resp
    assert TS_RE.match(resp["data"]["time"]), resp


def test_request_authorize_is_answered_from_bank(srv, req_device):
    dev, d = req_device
    mock_clear_requests(srv)
    # Step 1: the device asks authorize.
    resp, took = d.request("authorize", {"amount": 1250, "currency": "EUR"}, request_id="auth-1", timeout=5)
    assert resp is not None and took < 3.0, (resp, took)
    # Step 2: BANK's answer is in data.
    assert resp["request_id"] == "auth-1" and resp["status"] == "ok", resp
    assert resp["data"]["approved"] is True and resp["data"]["request_id"] == "auth-1", resp
    assert resp["data"]["authorization_id"], resp
    # Step 3: BANK was called with the external id, the request id and the data.
    calls = [c for c in mock_requests(srv, "bank") if c["path"].endswith("/authorizations")]
    assert len(calls) == 1, calls
    assert calls[0]["body"] == {"device_id": dev["external_id"], "request_id": "auth-1",
                                "data": {"amount": 1250, "currency": "EUR"}}, calls[0]


def test_request_authorize_with_bank_slow_is_upstream_unavailable(srv, req_device):
    dev, d = req_device
    # Step 1: BANK answers only after 4 s.
    mock_override(srv, partner="bank", method="POST", path="/authorizations", status=200,
                  body={"approved": True}, delay_ms=4000, times=1)
    # Step 2: the device still gets an answer within 3 s: an error.
    resp, took = d.request("authorize", {"amount": 1}, request_id="auth-slow", timeout=5)
    assert resp is not None, "no response within 5 s"
    assert took < 3.0, f"answered after {took:.2f} s"
    assert resp["request_id"] == "auth-slow" and resp["status"] == "error", resp
    assert resp["error"]["code"] == "upstream_unavailable" and resp["error"]["message"], resp


def test_request_authorize_with_bank_down_is_upstream_unavailable(srv, req_device):
    dev, d = req_device
    mock_override(srv, partner="bank", method="POST", path="/authorizations", status=503,
                  body={"error": "down"}, times=1)
    resp, took = d.request("authorize", {"amount": 1}, request_id="auth-down", timeout=5)
    assert resp is not None and took < 3.0, (resp, took)
    assert resp["status"] == "error" and resp["error"]["code"] == "upstream_unavailable", resp


def test_requests_are_answered_within_3s_even_when_bank_is_slow_for_many(srv, req_device):
    dev, d = req_device
    # Step 1: BANK answers only after 4 s, for every call.
    mock_override(srv, partner="bank", method="POST", path="/authorizations", status=200,
                  body={"approved": True}, delay_ms=4000)
    # Step 2: the device asks authorize eight times at once, then ping.
    t0 = time.monotonic()
    rids = [f"many-{i}" for i in range(8)]
    for rid in rids:
        d.publish(f"devices/{dev['id']}/requests/authorize", {"request_id": rid, "data": {"i": rid}})
    d.publish(f"devices/{dev['id']}/requests/ping", {"request_id": "many-ping", "data": {}})
    # Step 3: every one is answered within 3 s ("answered within 3 s, always").
    answers = {}
    for rid in rids + ["many-ping"]:
        m = d.wait_message(f"devices/{dev['id']}/responses/{rid}", 8)
        answers[rid] = (round(m.at - t0, 2), m.json) if m else (None, None)
    late = {rid: at for rid, (at, _) in answers.items() if at is None or at > 3.0}
    assert not late, f"answered after more than 3 s (seconds after publishing): {late}"
    for rid in rids:
        body = answers[rid][1]
        assert body["status"] == "error" and body["error"]["code"] == "upstream_unavailable", body
    assert answers["many-ping"][1]["status"] == "ok", answers["many-ping"]


def test_request_with_an_unknown_name(srv, req_device):
    dev, d = req_device
    resp, took = d.request("teleport", {"to": "mars"}, request_id="tp-1", timeout=5)
    assert resp is not None and took < 3.0, (resp, took)
    assert resp["request_id"] == "tp-1" and resp["status"] == "error", resp
    assert resp["error"]["code"] == "unknown_request" and resp["error"]["message"], resp


# ---- presence ---------------------------------------------------------------------------------


def test_presence_follows_connect_and_clean_disconnect(srv, alice):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    assert get_device(srv, alice, dev["id"])["online"] is False
    # Step 1: connect: online within 1 s.
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"])
    t0 = time.monotonic()
    assert d.connect(subscribe=False) == 0
    try:
        assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3), "never online"
        took = time.monotonic() - t0
        assert took <= 1.0, f"online after {took:.2f} s"
        assert TS_RE.match(get_device(srv, alice, dev["id"])["last_seen_at"] or "")
    finally:
        # Step 2: clean disconnect: offline soon.
        t1 = time.monotonic()
        d.close()
    assert poll(lambda: not get_device(srv, alice, dev["id"])["online"], 3), "still online"
    took = time.monotonic() - t1
    assert took <= 1.5, f"offline after {took:.2f} s"
    # Step 3: device.connected then device.disconnected.
    evs = admin_events(srv, subject=f"devices/{dev['id']}")
    kinds = [e["type"] for e in evs if e["type"] in ("device.connected", "device.disconnected")]
    assert kinds == ["device.connected", "device.disconnected"], kinds


@pytest.mark.slow
def test_presence_after_a_silent_connection_loss(srv, alice):
    """The device's network dies: no DISCONNECT, no FIN, no PINGREQ. CONTRACT 5:
    `online` is false within 1.5 x keepalive of the connection ending. The managed
    broker (Mosquitto 2.0.11, Debian 12) is what decides that a silent connection has
    ended, and its keepalive sweep closes such a socket 3.5-9 s after the last packet
    with keepalive 2 s (measured), not at 3 s. iotfin's part is to follow the broker's
    close at once: this test holds iotfin to 1 s after the broker closed the socket,
    and the broker to its own (coarse) sweep."""
    import select

    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    # Step 1: connect with keepalive 2 s.
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"], keepalive=2)
    assert d.connect(subscribe=False) == 0
    try:
        assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
        # Step 2: the client goes silent (socket open, nothing sent).
        d.freeze()
        last = d.last_packet_out
        sock = d.client.socket()
        seen = {}

        def offline():
            # Note when the broker closes the socket, to tell broker and iotfin apart.
            if "broker_closed" not in seen and select.select([sock], [], [], 0)[0]:
                try:
                    if sock.recv(4096) == b"":
                        seen["broker_closed"] = round(time.monotonic() - last, 2)
                except OSError:
                    seen["broker_closed"] = round(time.monotonic() - last, 2)
            return not get_device(srv, alice, dev["id"])["online"]

        # Step 3: the broker ends the silent connection, and iotfin follows at once.
        assert poll(offline, 14), f"still online 14 s after the last packet ({seen})"
        took = time.monotonic() - last
        # Wait until we saw the broker's close too, to compare the two moments.
        assert poll(lambda: offline() and "broker_closed" in seen, 3), seen
        assert took >= 1.5 * 2 - 0.2, f"offline after only {took:.2f} s: keepalive not honoured"
        assert took <= seen["broker_closed"] + 1.0, (
            f"online turned false {took:.2f} s after the last packet, but the broker closed "
            f"the socket after {seen['broker_closed']} s")
    finally:
        d.kill_socket()
    assert len(events_of(srv, "device.disconnected", dev["id"])) == 1


def test_presence_after_the_socket_is_killed(srv, alice):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"], keepalive=2)
    assert d.connect(subscribe=False) == 0
    assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
    # The socket closes without a DISCONNECT packet.
    t0 = time.monotonic()
    d.freeze()
    d.kill_socket()
    assert poll(lambda: not get_device(srv, alice, dev["id"])["online"], 8), "still online after 8 s"
    took = time.monotonic() - t0
    assert took <= 3.0, f"offline only {took:.2f} s after the socket closed"


# ---- retirement -------------------------------------------------------------------------------


def test_retire_closes_the_connection_and_refuses_the_token(srv, alice, devices):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    d = connect(srv, creds, devices)
    assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
    # Step 1: DELETE: 200 with status retired.
    t0 = time.monotonic()
    r = srv.delete(f"/v1/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200, r.text
    body = check_device(r.json())
    assert body["id"] == dev["id"] and body["status"] == "retired", body
    # Step 2: the MQTT connection is closed within 2 s.
    assert d.disconnected.wait(3), "connection still open 3 s after retirement"
    took = time.monotonic() - t0
    assert took <= 2.0, f"closed after {took:.2f} s"
    d.close()
    # Step 3: reconnecting with the same token is refused.
    again = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"])
    try:
        rc = again.connect(subscribe=False)
    finally:
        again.close()
    assert rc in REFUSED, f"CONNACK {rc} for a retired device's token"
    # The device reads as retired and offline; device.retired was recorded.
    g = get_device(srv, alice, dev["id"])
    assert g["status"] == "retired" and g["online"] is False, g
    assert len(events_of(srv, "device.retired", dev["id"])) == 1
    # A second DELETE is harmless.
    r = srv.delete(f"/v1/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "retired", r.text
    assert len(events_of(srv, "device.retired", dev["id"])) == 1


def test_retiring_a_connected_device_records_its_disconnection(srv, alice, devices):
    dev = claim_active(srv, alice)
    d = connect(srv, get_credentials(srv, alice, dev["id"]), devices)
    assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
    assert len(events_of(srv, "device.connected", dev["id"])) == 1
    # Step 1: retire it while it is connected; the broker drops the connection.
    r = srv.delete(f"/v1/devices/{dev['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "retired", r.text
    assert d.disconnected.wait(3)
    # Step 2: its connection ended, so device.disconnected follows device.connected.
    got = poll(lambda: events_of(srv, "device.disconnected", dev["id"]), 3)
    kinds = [e["type"] for e in admin_events(srv, subject=f"devices/{dev['id']}")]
    assert len(got) == 1, f"no device.disconnected after retiring a connected device: {kinds}"


def test_a_second_connection_takes_over_and_presence_stays_online(srv, alice, devices):
    dev = claim_active(srv, alice)
    creds = get_credentials(srv, alice, dev["id"])
    # Step 1: the device connects.
    first = connect(srv, creds, devices)
    assert poll(lambda: get_device(srv, alice, dev["id"])["online"], 3)
    # Step 2: the same device connects again (same client id): the broker drops the first.
    second = connect(srv, creds, devices)
    assert first.disconnected.wait(3), "the first connection was not taken over"
    time.sleep(0.5)
    assert get_device(srv, alice, dev["id"])["online"] is True
    assert len(events_of(srv, "device.connected", dev["id"])) == 1
    assert events_of(srv, "device.disconnected", dev["id"]) == []
    # Step 3: commands reach the new connection.
    r = send_command(srv, alice, dev["id"], type="after.takeover")
    assert r.status_code == 202, r.text
    got = second.wait_commands(1, 3)
    assert [c["id"] for c in got] == [r.json()["id"]], got
    # Step 4: the second closes: offline.
    second.close()
    assert poll(lambda: not get_device(srv, alice, dev["id"])["online"], 3)


# ---- Server-Sent Events ---------------------------------------------------------------------


def test_stream_carries_a_commands_lifecycle(srv, alice, devices):
    dev = claim_active(srv, alice)
    d = connect(srv, get_credentials(srv, alice, dev["id"]), devices)
    # Step 1: open the stream: headers at once.
    s = SseReader(srv, alice.token)
    try:
        assert s.resp.status_code == 200, s.resp.text
        assert s.resp.headers["Content-Type"].split(";")[0] == "text/event-stream", s.resp.headers
        assert s.headers_after < 1.0, s.headers_after
        # Step 2: a command: queued within 1 s.
        r = send_command(srv, alice, dev["id"], type="sse.test", payload={"k": 1})
        t_post = time.monotonic()
        assert r.status_code == 202, r.text
        cid = r.json()["id"]

        def frame(typ):
            return s.wait_frame(lambda f: f.get("event") == typ and isinstance(f["data"], dict)
                                and f["data"].get("data", {}).get("command_id") == cid, 3)

        q = frame("device.command.queued")
        assert q is not None, s.snapshot()
        assert q["at"] - t_post <= 1.0, q["at"] - t_post
        # Step 3: delivered within 1 s of the device getting it.
        m = d.wait_message(f"devices/{dev['id']}/commands", 3)
        assert m is not None
        dl = frame("device.command.delivered")
        assert dl is not None, s.snapshot()
        assert dl["at"] - m.at <= 1.0, dl["at"] - m.at
        # Step 4: the ack: completed within 1 s.
        t_ack = time.monotonic()
        d.ack(cid, "succeeded", {"done": 1})
        cp = frame("device.command.completed")
        assert cp is not None, s.snapshot()
        assert cp["at"] - t_ack <= 1.0, cp["at"] - t_ack
        # Each frame is id/event/data with a CloudEvent about the device.
        for f in (q, dl, cp):
            ce = f["data"]
            assert f["id"] == ce["id"] and f["event"] == ce["type"], f
            assert ce["specversion"] == "1.0" and ce["subject"] == f"devices/{dev['id']}", ce
            assert TS_RE.match(ce["time"]) and ce["source"], ce
        assert cp["data"]["data"]["status"] == "succeeded", cp
        frames = [f for f in s.snapshot() if f.get("event", "").startswith("device.command.")]
        order = [f["event"] for f in frames if f["data"]["data"].get("command_id") == cid]
        assert order == ["device.command.queued", "device.command.delivered", "device.command.completed"], order
    finally:
        s.close()


def test_stream_resumes_after_last_event_id(srv, carol):
    dev = claim_active(srv, carol)
    # Step 1: three commands to an offline device: three queued events.
    s = SseReader(srv, carol.token)
    try:
        cids = []
        for i in range(3):
            r = send_command(srv, carol, dev["id"], type=f"resume.{i}")
            assert r.status_code == 202, r.text
            cids.append(r.json()["id"])
        assert poll(lambda: len([f for f in s.snapshot() if f.get("event") == "device.command.queued"]) >= 3, 3)
        queued = [f for f in s.snapshot() if f.get("event") == "device.command.queued"]
        assert [f["data"]["data"]["command_id"] for f in queued] == cids, queued
    finally:
        s.close()
    # Step 2: reconnect with Last-Event-ID = the first: the second and third follow.
    s2 = SseReader(srv, carol.token, last_event_id=queued[0]["id"])
    try:
        assert s2.resp.status_code == 200, s2.resp.text
        assert poll(lambda: len([f for f in s2.snapshot() if f.get("event")]) >= 2, 3), s2.snapshot()
        time.sleep(0.3)
        got = [f for f in s2.snapshot() if f.get("event")]
        assert [f["id"] for f in got[:2]] == [queued[1]["id"], queued[2]["id"]], got
        assert queued[0]["id"] not in [f["id"] for f in got], got
    finally:
        s2.close()


def test_stream_shows_only_the_callers_devices(srv, alice, bob):
    dev = claim_active(srv, alice)
    # Step 1: bob and alice both listen.
    sb = SseReader(srv, bob.token)
    sa = SseReader(srv, alice.token)
    try:
        assert sb.resp.status_code == 200 and sa.resp.status_code == 200
        # Step 2: alice's device gets a command.
        r = send_command(srv, alice, dev["id"], type="private")
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
        # alice sees it; bob sees nothing about her device.
        assert sa.wait_frame(lambda f: f.get("event") == "device.command.queued"
                             and f["data"]["data"]["command_id"] == cid, 3) is not None, sa.snapshot()
        time.sleep(1.0)
        leaked = [f for f in sb.snapshot() if f.get("event") and f["data"].get("subject") == f"devices/{dev['id']}"]
        assert leaked == [], leaked
        r = srv.get("/v1/devices", headers=bob.headers, params={"limit": 200})
        bobs = {f"devices/{x['id']}" for x in r.json()["items"]}
        foreign = [f for f in sb.snapshot() if f.get("event") and f["data"].get("subject") not in bobs]
        assert foreign == [], foreign
    finally:
        sa.close()
        sb.close()


def test_stream_needs_a_user_token(srv, alice):
    # Without a token: 401 with WWW-Authenticate.
    r = srv.get("/v1/events/stream", headers={"Accept": "text/event-stream"})
    assert_problem(r, 401, "unauthenticated")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
    # A bad token: 401.
    r = srv.get("/v1/events/stream", headers={"Accept": "text/event-stream", **bearer("x.y.z")})
    assert_problem(r, 401, "unauthenticated")
    # An admin token is not a user token.
    r = srv.get("/v1/events/stream", headers={"Accept": "text/event-stream", **srv.admin_headers()})
    assert r.status_code in (401, 403), r.text


# ---- BANK forwarding ------------------------------------------------------------------------


def bank_notifications(srv, device_id):
    """(event ids in arrival order, the raw log items) of device.event.received
    notifications the BANK mock got for this device."""
    items = [c for c in mock_requests(srv, "bank") if c["path"].endswith("/notifications")]
    mine = [c for c in items if isinstance(c.get("body"), dict)
            and c["body"].get("subject") == f"devices/{device_id}"
            and c["body"].get("type") == "device.event.received"]
    return [c["body"]["data"]["event_id"] for c in mine], mine


def header(c, name):
    for k, v in (c.get("headers") or {}).items():
        if k.lower() == name.lower():
            return v
    return None


def bank_server(start_iotfin):
    srv = start_iotfin(env=ENV)
    user = make_users(srv, 1, tag="bank40")[0]
    dev = claim_active(srv, user)
    return srv, user, dev


@pytest.mark.slow
def test_bank_gets_every_event_in_order_after_an_outage(start_iotfin):
    srv, user, dev = bank_server(start_iotfin)
    d = device_connect(srv, get_credentials(srv, user, dev["id"]))
    try:
        # Step 1: BANK is down.
        mock_override(srv, partner="bank", method="POST", path="/notifications", status=503,
                      body={"error": "down"})
        mock_clear_requests(srv)
        # Step 2: the device publishes ten events.
        ids = [f"ord-{i:02d}" for i in range(10)]
        for i, eid in enumerate(ids):
            d.publish_event({"id": eid, "type": "meter.reading", "data": {"i": i}})
        assert poll(lambda: len(device_events(srv, user, dev["id"])["items"]) == 10, 5)
        # BANK is being tried (and refusing) meanwhile; the queue does not dead-letter.
        assert poll(lambda: len(bank_notifications(srv, dev["id"])[0]) >= 3, 5), mock_requests(srv, "bank")
        attempted, _ = bank_notifications(srv, dev["id"])
        assert set(attempted) == {ids[0]}, f"later events tried before the first got through: {attempted}"
        assert queue_stats(srv)["bank-forwarder"]["dead"] == 0
        # Step 3: BANK is back.
        mock_clear(srv)
        assert poll(lambda: set(ids) <= set(bank_notifications(srv, dev["id"])[0]), 10), bank_notifications(srv, dev["id"])[0]
        seq, calls = bank_notifications(srv, dev["id"])
        # In the device's order: the index never goes back.
        idx = [ids.index(x) for x in seq]
        assert idx == sorted(idx), seq
        # Structured CloudEvents.
        for c in calls:
            assert (header(c, "Content-Type") or "").split(";")[0] == "application/cloudevents+json", c
            b = c["body"]
            assert b["specversion"] == "1.0" and b["type"] == "device.event.received", b
            assert b["id"] and b["source"] and TS_RE.match(b["time"]), b
        # Step 4: nothing dead-lettered, the queue drains.
        assert poll(lambda: (lambda q: q["ready"] == 0 and q["in_flight"] == 0)(queue_stats(srv)["bank-forwarder"]), 5), queue_stats(srv)
        q = queue_stats(srv)["bank-forwarder"]
        assert q["dead"] == 0, q
        # Step 5: a completed command is forwarded too.
        r = send_command(srv, user, dev["id"], type="bank.visible")
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
        got = d.wait_commands(1, 3)
        assert got and got[0]["id"] == cid, got
        d.ack(cid, "succeeded", {"v": 1})

        def completed():
            return [c for c in mock_requests(srv, "bank") if c["path"].endswith("/notifications")
                    and isinstance(c.get("body"), dict) and c["body"].get("type") == "device.command.completed"
                    and c["body"].get("data", {}).get("command_id") == cid]

        cc = poll(completed, 5)
        assert cc, mock_requests(srv, "bank")[-3:]
        assert cc[0]["body"]["subject"] == f"devices/{dev['id']}", cc[0]
        assert cc[0]["body"]["data"]["status"] == "succeeded", cc[0]
    finally:
        d.close()


def test_bank_permanent_refusal_dead_letters_one_event(start_iotfin):
    srv, user, dev = bank_server(start_iotfin)
    d = device_connect(srv, get_credentials(srv, user, dev["id"]))
    try:
        mock_clear_requests(srv)
        # Step 1: BANK refuses the next notification with 400.
        mock_override(srv, partner="bank", method="POST", path="/notifications", status=400,
                      body={"error": "bad event"}, times=1)
        # Step 2: three events.
        ids = ["poison-0", "fine-1", "fine-2"]
        for i, eid in enumerate(ids):
            d.publish_event({"id": eid, "type": "meter.reading", "data": {"i": i}})
        # Step 3: the later two arrive; the first is dead-lettered, not retried.
        assert poll(lambda: {"fine-1", "fine-2"} <= set(bank_notifications(srv, dev["id"])[0]), 10), \
            bank_notifications(srv, dev["id"])[0]
        seq, _ = bank_notifications(srv, dev["id"])
        assert seq[0] == "poison-0" and seq.count("poison-0") == 1, seq
        assert seq.index("fine-1") < seq.index("fine-2"), seq
        assert poll(lambda: queue_stats(srv)["bank-forwarder"]["dead"] >= 1, 5), queue_stats(srv)
        r = srv.get("/v1/admin/queues/bank-forwarder/dead-letters", headers=srv.admin_headers())
        assert r.status_code == 200, r.text
        dead = r.json()["items"]
        assert len(dead) == 1, dead
        assert dead[0]["event"]["data"]["event_id"] == "poison-0", dead[0]
    finally:
        d.close()
