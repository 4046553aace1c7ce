"""BANK delivery under partner faults (CONTRACT sections 6 and 8, v2): every event
reaches BANK, the first delivery of each is in the device's order whatever BANK
does (hang, 503, refused connections), and delivery resumes within 2 s of BANK
answering again, with the production retry settings (base 1 s, max 300 s).

One server and eight connected devices for the module; BANK is a FakeBank that the
tests make hang, fail and heal. Deliveries are what BANK answered 200; attempts are
every call it received.
"""

import time
import uuid

import pytest

from conftest import Iotfin
from devices_helpers import (
    claim_active,
    device_connect,
    get_credentials,
    make_users,
    poll,
    queue_stats,
)
from fakes import FakeBank


pytestmark = pytest.mark.slow  # fault tests: a partner hanging, failing, refusing

DEVICES = 8
EVENTS = 10  # per device and test
RESUME_S = 2.5  # contract: within 2 s of BANK answering; a little slack for the test


@pytest.fixture(scope="module")
def bank():
    b = FakeBank()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, bank):
    srv = Iotfin(
        tmp_path_factory.mktemp("faults-bus"),
        env={
            "IOTFIN_PARTNER_BANK_URL": bank.url,
            "IOTFIN_PARTNER_BANK_TIMEOUT_MS": "500",
            "IOTFIN_RETRY_BASE_MS": "1000",
            "IOTFIN_RETRY_MAX_MS": "300000",
            "IOTFIN_AUTH_RATE": "10000",
            # Batches that run long settle early (after a quarter of this): the
            # path on which a retried head used to overtake its own followers.
            "IOTFIN_VISIBILITY_TIMEOUT_MS": "2000",
        },
    )
    srv.start()
    devices = []
    try:
        user = make_users(srv, 1, tag="faults60")[0]
        for _ in range(DEVICES):
            d = claim_active(srv, user)
            devices.append(device_connect(srv, get_credentials(srv, user, d["id"])))
        yield srv, devices
    finally:
        for d in devices:
            d.close()
        problems = srv.teardown()
        if problems:
            pytest.fail("\n".join(problems))


def publish_round(devices, tag, i):
    """Event i of every device, ids `<tag>-<device n>-<i>`; returns {subject: id}."""
    out = {}
    for n, d in enumerate(devices):
        eid = f"{tag}-{n}-{i:03d}"
        d.publish_event({"id": eid, "type": "meter.reading", "data": {"i": i}})
        out[f"devices/{d.device_id}"] = eid
    return out


def firsts(pairs, subject):
    """Event ids of subject in the order of their first appearance."""
    seen, order = set(), []
    for s, eid in pairs:
        if s == subject and eid not in seen:
            seen.add(eid)
            order.append(eid)
    return order


def check_delivered_in_order(bank, expected):
    """Every expected id delivered; per device the first delivery (and the first
    attempt) of each event in publish order."""
    deliveries, attempts = bank.deliveries(), bank.attempts()
    for subject, ids in expected.items():
        got = firsts(deliveries, subject)
        got = [e for e in got if e in set(ids)]
        assert got == ids, f"{subject}: first deliveries {got}, published {ids}"
        tried = [e for e in firsts(attempts, subject) if e in set(ids)]
        assert tried == ids, f"{subject}: first attempts {tried}, published {ids}"


def all_delivered(bank, expected):
    have = set(bank.deliveries())
    return all((s, e) in have for s, ids in expected.items() for e in ids)


def wait_drained(srv):
    def drained():
        q = queue_stats(srv)["bank-forwarder"]
        return q["ready"] == 0 and q["in_flight"] == 0 and q["delayed"] == 0

    assert poll(drained, 5), queue_stats(srv)["bank-forwarder"]
    assert queue_stats(srv)["bank-forwarder"]["dead"] == 0


def test_bank_hangs_while_devices_publish_then_heals_in_order(fleet, bank):
    srv, devices = fleet
    tag = "hang-" + uuid.uuid4().hex[:6]
    expected = {f"devices/{d.device_id}": [] for d in devices}
    # Step 1: BANK accepts connections and never answers (iotfin gives up after 500 ms).
    bank.hang()
    t0 = time.monotonic()
    calls_before = len(bank.attempts())
    # Step 2: all devices publish, interleaved, while BANK hangs for ~4 s.
    for i in range(EVENTS):
        for s, eid in publish_round(devices, tag, i).items():
            expected[s].append(eid)
        time.sleep(0.15)
    while time.monotonic() - t0 < 4.0:
        time.sleep(0.05)
    # Nothing was answered; iotfin probed BANK instead of sending every event.
    assert not [x for x in bank.deliveries() if x[1].startswith(tag)]
    tried = len(bank.attempts()) - calls_before
    # Step 3: BANK answers again; every event arrives promptly, in order per device.
    healed = bank.heal()
    assert poll(lambda: all_delivered(bank, expected), 10), bank.deliveries()[-5:]
    took = time.monotonic() - healed
    print(f"hang: {tried} calls during the outage; all delivered {took:.2f} s after the heal")
    assert took <= RESUME_S, f"delivery resumed only {took:.2f} s after BANK answered"
    check_delivered_in_order(bank, expected)
    wait_drained(srv)
    # A few calls at first, then one probe at a time, not every event on its own.
    assert 1 <= tried <= 12, f"{tried} calls to a hanging BANK in 4 s"


def test_bank_fails_then_refuses_then_heals_within_2s_in_order(fleet, bank):
    srv, devices = fleet
    tag = "down-" + uuid.uuid4().hex[:6]
    expected = {f"devices/{d.device_id}": [] for d in devices}
    wait_drained(srv)
    # Step 1: BANK answers 503 for 4 s, with events from every device coming in.
    bank.fail(503)
    t0 = time.monotonic()
    for i in range(EVENTS // 2):
        for s, eid in publish_round(devices, tag, i).items():
            expected[s].append(eid)
        time.sleep(0.2)
    while time.monotonic() - t0 < 4.0:
        time.sleep(0.05)
    # Step 2: then refuses connections for 4 s more; more events meanwhile.
    bank.down()
    for i in range(EVENTS // 2, EVENTS):
        for s, eid in publish_round(devices, tag, i).items():
            expected[s].append(eid)
        time.sleep(0.2)
    while time.monotonic() - t0 < 8.0:
        time.sleep(0.05)
    assert not [x for x in bank.deliveries() if x[1].startswith(tag)]
    # The messages wait for BANK (none dead: transient failures never dead-letter).
    q = queue_stats(srv)["bank-forwarder"]
    assert q["dead"] == 0 and q["ready"] + q["delayed"] + q["in_flight"] == DEVICES * EVENTS, q
    # Step 3: BANK is back: all of it within 2 s (backoff alone would take up to 300 s).
    healed = bank.heal()
    assert poll(lambda: all_delivered(bank, expected), 10), bank.deliveries()[-5:]
    took = time.monotonic() - healed
    print(f"503/refused: all {DEVICES * EVENTS} delivered {took:.2f} s after the heal")
    assert took <= RESUME_S, f"delivery resumed only {took:.2f} s after BANK answered"
    check_delivered_in_order(bank, expected)
    wait_drained(srv)
