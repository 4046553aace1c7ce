"""`iotfin migrate-store` (issue #13, CONTRACT section 10): a data dir that ran on SQLite
moves to PostgreSQL. A server on SQLite makes real state through the API (users with
sessions and refresh tokens, devices imported and claimed, commands acknowledged and
queued, device events, a dead letter); it stops; migrate-store copies the store into a
fresh schema; a server on the same data dir with IOTFIN_DB on PostgreSQL then gives the
same answers (same cursors and event order), accepts the tokens issued before (the keys
stay in the data dir), and numbers new rows after the old ones.

Needs PostgreSQL: runs under `sh scripts/pg.sh run ...` (make e2e-pg), which sets
IOTFIN_TEST_PG. The argument checks run everywhere."""

import re
import subprocess
import uuid

import pytest

from conftest import BIN, TEST_PG, base_env, bearer, pg_url, poll
from devices_helpers import (
    PASSWORD,
    admin_events,
    claim_active,
    device_connect,
    device_events,
    get_command,
    get_credentials,
    make_user,
    mock_override,
    send_command,
    wait_command,
)

needs_pg = pytest.mark.skipif(not TEST_PG, reason="needs PostgreSQL (IOTFIN_TEST_PG, make e2e-pg)")

# Fast retries and few receives, so one refused KYC call dead-letters within a second.
ENV = {
    "IOTFIN_RETRY_BASE_MS": "20",
    "IOTFIN_RETRY_MAX_MS": "100",
    "IOTFIN_MAX_RECEIVES": "2",
    "IOTFIN_AUTH_RATE": "10000",
}
KYC_QUEUE = "registration-kyc"


def migrate(data_dir, *args, env=None, timeout=60):
    """Runs `iotfin migrate-store ARGS` for data_dir's environment (on SQLite)."""
    return subprocess.run([BIN, "migrate-store", *args],
                          env=base_env(data_dir, {"IOTFIN_DB": None, **(env or {})}),
                          capture_output=True, text=True, timeout=timeout)


def one_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, text
    return lines[0]


def pages(srv, path, headers, limit=4):
    """Every page of a list as [(cursor asked, item ids, next_cursor)]."""
    out, cursor = [], None
    for _ in range(500):
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = srv.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        out.append((cursor, [x["id"] for x in body["items"]], body["next_cursor"]))
        cursor = body["next_cursor"]
        if not cursor:
            return out
    pytest.fail(f"{path} did not end")


def dead_letters(srv):
    r = srv.get(f"/v1/admin/queues/{KYC_QUEUE}/dead-letters", headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    return r.json()["items"]


def snapshot(srv, user, device, cids):
    """What the migrated server must answer the same."""
    return {
        "me": srv.get("/v1/me", headers=user.headers).json(),
        "devices": srv.get("/v1/devices", headers=user.headers, params={"limit": 200}).json(),
        "commands": [get_command(srv, user, device["id"], c) for c in cids],
        "device_events": device_events(srv, user, device["id"], limit=200),
        "dead_letters": dead_letters(srv),
        "events": admin_events(srv),
    }


@needs_pg
def test_a_sqlite_data_dir_moves_to_postgres_and_serve_goes_on(start_iotfin, tmp_path):
    data = tmp_path / "data"
    sq_env = {**ENV, "IOTFIN_DB": None}

    # Step 1: state made through the API on SQLite.
    srv = start_iotfin(env=sq_env, data_dir=data)
    user = make_user(srv, "mig")
    device = claim_active(srv, user)
    creds = get_credentials(srv, user, device["id"])
    dev = device_connect(srv, creds, auto_ack="succeeded")
    r = send_command(srv, user, device["id"], payload={"n": 1})
    assert r.status_code == 202, r.text
    done_cid = r.json()["id"]
    assert wait_command(srv, user, device["id"], done_cid, "succeeded")["status"] == "succeeded"
    dev.publish_event({"id": "ev-1", "type": "meter.reading", "data": {"kwh": 12.5}})
    assert poll(lambda: device_events(srv, user, device["id"])["items"]), "device event not stored"
    dev.close()
    assert poll(lambda: srv.get(f"/v1/devices/{device['id']}",
                                headers=user.headers).json()["online"] is False)
    r = send_command(srv, user, device["id"], payload={"n": 2}, ttl=3600)
    assert r.status_code == 202, r.text
    queued_cid = r.json()["id"]
    assert get_command(srv, user, device["id"], queued_cid)["status"] == "queued"
    # A registration whose KYC call is refused: dead-lettered after two receives.
    mock_override(srv, partner="kyc", method="POST", path="/verifications", status=500,
                  body={"error": "down"})
    anon = srv.anonymous_token()
    r = srv.post("/v1/registrations", headers=bearer(anon),
                 json={"type": "local", "email": f"dl-{uuid.uuid4().hex[:8]}@example.com",
                       "password": PASSWORD, "name": "Dee Letter"})
    assert r.status_code == 202, r.text
    assert poll(lambda: dead_letters(srv)), "no dead letter"
    before = snapshot(srv, user, device, [done_cid, queued_cid])
    event_pages = pages(srv, "/v1/admin/events", srv.admin_headers())
    assert len(before["events"]) >= 8, before["events"]

    # Step 2: refused while serve has the database open, with one line.
    target = pg_url(tmp_path / "pg-target")
    r = migrate(data, "--to", target)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "in use" in one_line(r.stderr), r.stderr
    srv.stop()

    # Step 3: the migration: every table, counts checked, the password never shown.
    r = migrate(data, "--to", target)
    assert r.returncode == 0, (r.stdout, r.stderr)
    password = re.match(r"postgres(?:ql)?://[^:/@]+:([^@]+)@", TEST_PG)
    if password:
        assert password.group(1) not in r.stdout + r.stderr
    counts = dict(re.findall(r"^  (\w+)\s+(\d+)$", r.stdout, re.M))
    assert int(counts["events"]) == len(before["events"]), r.stdout
    for table in ("users", "sessions", "refresh_tokens", "devices", "commands", "device_events",
                  "queue_messages", "registrations"):
        assert int(counts[table]) > 0, (table, r.stdout)
    assert "counts match" in r.stdout and "keys" in r.stdout, r.stdout

    # Step 4: a second run into the now full target is refused, with one line.
    r = migrate(data, "--to", target)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "already holds data" in one_line(r.stderr), r.stderr

    # Step 5: serve on PostgreSQL, same data dir: the same answers, the same cursors.
    srv2 = start_iotfin(env={**ENV, "IOTFIN_DB": target}, data_dir=data)
    r = srv2.get("/readyz")
    assert r.status_code == 200, r.text
    after = snapshot(srv2, user, device, [done_cid, queued_cid])
    for key in ("me", "devices", "commands", "device_events", "dead_letters"):
        assert after[key] == before[key], key
    assert after["events"][: len(before["events"])] == before["events"]
    for cursor, ids, next_cursor in event_pages[:-1]:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = srv2.get("/v1/admin/events", params=params, headers=srv2.admin_headers()).json()
        assert [x["id"] for x in body["items"]] == ids and body["next_cursor"] == next_cursor

    # Step 6: tokens issued on SQLite still work: the user's access and refresh tokens,
    # and the device's password on the broker; the queued command reaches the device.
    r = srv2.post("/v1/sessions/refresh", json={"refresh_token": user.refresh_token})
    assert r.status_code == 201, r.text
    assert srv2.get("/v1/me", headers=bearer(r.json()["access_token"])).status_code == 200
    dev2 = device_connect(srv2, creds, auto_ack="succeeded")
    try:
        got = wait_command(srv2, user, device["id"], queued_cid, "succeeded")
        assert got["status"] == "succeeded", got
        # Step 7: new rows come after the old ones.
        dev2.publish_event({"id": "ev-2", "type": "meter.reading", "data": {"kwh": 13.0}})
        assert poll(lambda: len(device_events(srv2, user, device["id"])["items"]) == 2)
    finally:
        dev2.close()
    r = send_command(srv2, user, device["id"], payload={"n": 3})
    assert r.status_code == 202, r.text
    events = admin_events(srv2)
    old_ids = {e["id"] for e in before["events"]}
    assert events[: len(before["events"])] == before["events"]
    assert len(events) > len(before["events"]) and not old_ids & {
        e["id"] for e in events[len(before["events"]):]}
    # The mock's overrides live in memory: refuse KYC again for a second dead letter,
    # whose queue message id comes after the migrated one's.
    mock_override(srv2, partner="kyc", method="POST", path="/verifications", status=500,
                  body={"error": "down"})
    anon = srv2.anonymous_token()
    r = srv2.post("/v1/registrations", headers=bearer(anon),
                  json={"type": "local", "email": f"dl-{uuid.uuid4().hex[:8]}@example.com",
                        "password": PASSWORD, "name": "Dee Letter"})
    assert r.status_code == 202, r.text
    assert poll(lambda: len(dead_letters(srv2)) == 2), dead_letters(srv2)
    old_id = int(before["dead_letters"][0]["id"])
    new_ids = [int(d["id"]) for d in dead_letters(srv2) if int(d["id"]) != old_id]
    assert len(new_ids) == 1 and new_ids[0] > old_id, (old_id, new_ids)


def test_migrate_store_refuses_bad_arguments_with_one_line(tmp_path):
    data = tmp_path / "data"
    # No target, an unknown option: the usage, status 2.
    r = migrate(data)
    assert r.returncode == 2 and "Usage: iotfin migrate-store" in r.stderr, r.stderr
    r = migrate(data, "--to", "postgres://x/y", "--verbose")
    assert r.returncode == 2 and "--verbose" in r.stderr, r.stderr
    # A target that is not PostgreSQL.
    r = migrate(data, "--to", "mysql://db/iotfin")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "postgres://" in one_line(r.stderr) and r.stdout == ""
    # No SQLite database in the data dir: nothing is created, nothing is contacted.
    r = migrate(data, "--to", "postgres://nobody@127.0.0.1:1/none")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "no SQLite database" in one_line(r.stderr) and not data.exists()
    r = migrate(tmp_path / "elsewhere", "--data-dir", str(data), "--to=postgres://x@127.0.0.1:1/y")
    assert r.returncode == 1 and str(data) in one_line(r.stderr), r.stderr
    r = migrate(data, "--help")
    assert r.returncode == 0 and "keys" in r.stdout and "--data-dir" in r.stdout


def test_an_unreachable_target_is_refused(start_iotfin, tmp_path):
    data = tmp_path / "data"
    srv = start_iotfin(env={"IOTFIN_DB": None}, data_dir=data)
    srv.stop()
    r = migrate(data, "--to", "postgres://iotfin:secret-pw@127.0.0.1:1/iotfin",
                env={"IOTFIN_DB_WAIT_S": "0"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot open the target database" in r.stderr.splitlines()[-1], r.stderr
    assert "secret-pw" not in r.stdout + r.stderr
