"""Retention (CONTRACT section 11): with IOTFIN_RETENTION a few seconds long, the
tables shrink back in the background, while what is still needed stays: events of
dead-lettered messages, live sessions, queued commands, idempotency keys inside their
24 h. Under steady load the database file stops growing once the window is full.

Row counts are read straight from the real SQLite file (read-only)."""

import sqlite3
import time

import pytest

from conftest import poll, sqlite_only
from devices_helpers import (
    claim_active,
    device_connect,
    get_credentials,
    make_user,
    mock_clear,
    mock_override,
    send_command,
    wait_command,
)

pytestmark = [pytest.mark.slow,
              sqlite_only("reads iotfin.db and measures its file size")]

WINDOW_S = 3


def count(srv, table, where="1=1"):
    db = sqlite3.connect(f"file:{srv.data_dir / 'iotfin.db'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0]
    finally:
        db.close()


def test_old_records_go_and_what_is_needed_stays(start_iotfin):
    srv = start_iotfin(env={"IOTFIN_RETENTION": f"{WINDOW_S}s", "IOTFIN_DEVICE_TOKEN_TTL_S": "4",
                            "IOTFIN_RETRY_BASE_MS": "100", "IOTFIN_MAX_RECEIVES": "1"})
    user = make_user(srv, "ret")
    online = claim_active(srv, user)
    offline = claim_active(srv, user)
    dev = device_connect(srv, get_credentials(srv, user, online["id"]), auto_ack="succeeded")
    # BANK refuses for good: every notification of these events ends as a dead letter.
    mock_override(srv, partner="bank", method="POST", path="/notifications", status=400,
                  body={"error": "poisoned"})
    for i in range(20):
        dev.publish_event({"id": f"r-{i}", "type": "meter.reading", "data": {"n": i}})
    for i in range(5):
        cid = send_command(srv, user, online["id"]).json()["id"]
        assert wait_command(srv, user, online["id"], cid, "succeeded")["status"] == "succeeded"
    assert poll(lambda: count(srv, "queue_messages", "state = 'dead'") >= 20, 15)
    mock_clear(srv)
    dev.close()
    queued = send_command(srv, user, offline["id"], ttl=3600).json()["id"]
    keyed = srv.post(f"/v1/devices/{offline['id']}/commands", json={"type": "t", "payload": {}},
                     headers={**user.headers, "Idempotency-Key": "ret-key-1"})
    assert keyed.status_code == 202
    before = {t: count(srv, t) for t in ("events", "device_events", "commands", "sessions")}
    assert before["device_events"] >= 20 and before["commands"] >= 7

    # Everything above is older than the window a few seconds from now.
    def shrunk():
        return count(srv, "device_events") == 0 and count(
            srv, "commands", "status IN ('succeeded', 'failed', 'expired')") == 0
    assert poll(shrunk, 20), {t: count(srv, t) for t in before}

    dead = count(srv, "queue_messages", "state = 'dead'")
    assert dead >= 20
    # Every event left is one a queue message still needs, and each one is there.
    assert count(srv, "events", "seq NOT IN (SELECT event_seq FROM queue_messages)") == 0 or \
        poll(lambda: count(srv, "events", "seq NOT IN (SELECT event_seq FROM queue_messages)") == 0, 10)
    assert count(srv, "queue_messages q", "NOT EXISTS (SELECT 1 FROM events e WHERE "
                 "e.seq = q.event_seq)") == 0
    r = srv.get("/v1/admin/queues/bank-forwarder/dead-letters", headers=srv.admin_headers())
    assert r.status_code == 200 and len(r.json()["items"]) >= 1
    assert all(item["event"]["data"] for item in r.json()["items"])
    # The queued command, its idempotency key, and the user's live session remain.
    r = srv.get(f"/v1/devices/{offline['id']}/commands/{queued}", headers=user.headers)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert count(srv, "idempotency") >= 1
    assert srv.get("/v1/me", headers=user.headers).status_code == 200
    # The device's 4 s session has ended, and it went too.
    assert poll(lambda: count(srv, "sessions", "device_id IS NOT NULL") == 0, 10)
    assert "iotfin_retention_deleted_total" in srv.get("/metrics").text


def test_under_steady_load_the_database_stops_growing(start_iotfin):
    srv = start_iotfin(env={"IOTFIN_RETENTION": "1s"})
    user = make_user(srv, "soak")
    device = claim_active(srv, user)
    dev = device_connect(srv, get_credentials(srv, user, device["id"]))
    db = srv.data_dir / "iotfin.db"
    sizes = []
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 9:
        # About 300 events a second, each with a payload worth keeping an eye on.
        for _ in range(30):
            dev.publish_event({"id": f"s-{n}", "type": "meter.reading", "data": {"pad": "x" * 400}},
                              qos=0)
            n += 1
        time.sleep(0.1)
        if int((time.monotonic() - t0) * 10) % 10 == 0:
            sizes.append(db.stat().st_size)
    dev.close()
    assert n > 2000
    third = len(sizes) // 3
    middle, last = max(sizes[third:2 * third]), max(sizes[2 * third:])
    # Once the window is full, freed pages are reused: the file holds still (a little
    # slack for a page or two of index growth).
    assert last <= middle * 1.10 + 65536, sizes
    assert count(srv, "device_events") < n / 2
