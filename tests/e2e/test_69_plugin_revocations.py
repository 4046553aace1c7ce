"""The broker plugin's revocations have no ceiling (issue #12: its sets stopped taking
entries at 6,144, and after 6,300 claim-and-retire cycles a retired device reconnected
with its old token). Here 7,000 retired devices and revoked device sessions are put into
the database first, so a real device retired afterwards is the 7,001st of each: it must
be refused at once, and again by a broker that starts with that state."""

import sqlite3

import pytest

from conftest import poll, sqlite_only
from devices_helpers import DeviceClient, claim_active, get_credentials, make_user

pytestmark = [pytest.mark.slow, sqlite_only("fills iotfin.db directly")]

FAKES = 7000
REFUSED = {0x80, 0x85, 0x86, 0x87, 0x8A, 0x8C}


def connack(srv, creds):
    d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"])
    try:
        return d.connect(subscribe=False)
    finally:
        d.close()


def test_a_device_retired_after_thousands_of_others_stays_out(start_iotfin):
    first = start_iotfin()
    first.stop()
    db = sqlite3.connect(first.data_dir / "iotfin.db")
    db.executemany(
        "INSERT INTO devices (id, serial, model, status, online, created_at) VALUES "
        "(?, ?, 'm', 'retired', 0, '2026-01-01T00:00:00.000Z')",
        [(f"fake-device-{i:05d}", f"FAKE-{i:05d}") for i in range(FAKES)])
    db.executemany(
        "INSERT INTO sessions (id, tier, device_id, created_at, expires_at_ms, revoked_at) VALUES "
        "(?, 'device', ?, '2026-01-01T00:00:00.000Z', 4102444800000, '2026-01-01T00:00:00.000Z')",
        [(f"fake-session-{i:05d}", f"fake-device-{i:05d}") for i in range(FAKES)])
    db.commit()
    db.close()

    srv = start_iotfin(data_dir=first.data_dir)
    user = make_user(srv, "rv")
    device = claim_active(srv, user)
    creds = get_credentials(srv, user, device["id"])
    assert connack(srv, creds) == 0
    r = srv.delete(f"/v1/devices/{device['id']}", headers=user.headers)
    assert r.status_code == 200, r.text
    # The live path: the plugin is told of the retirement.
    assert poll(lambda: connack(srv, creds) in REFUSED, 5), "a retired device was let back in"
    # The start path: a new broker learns all 7,001 from the database.
    srv.stop()
    srv = start_iotfin(data_dir=first.data_dir)
    assert connack(srv, creds) in REFUSED
