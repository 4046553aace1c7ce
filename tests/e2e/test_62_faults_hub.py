"""Issue #10 on the device side: nothing acknowledged is lost, nothing goes out of
order, nothing freezes (CONTRACT sections 1, 5 and 8, v2).

- Delivered means received: a command is `delivered` only when the broker handed it to
  a listening device (PUBACK reason 0); "no matching subscribers" keeps it `queued`.
- Broker death clears what iotfin believes: devices turn offline with
  `device.disconnected`, commands wait, and go out once the devices are back.
- Deadlines are kept: a request older than 3 s is answered `timeout` and BANK never
  sees it, even when iotfin itself was stopped while it waited.
- Storage failing is visible and safe: 503 naming the disk, /readyz 503, device events
  held and stored once space is back, without a restart; an unwritable data dir stops
  the start with one line.

Each test starts its own server: they kill, stop or starve it."""

import errno
import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import assert_problem, sqlite_only, wait_until
from devices_helpers import (
    DeviceClient,
    admin_events,
    claim_active,
    device_events,
    get_command,
    get_credentials,
    get_device,
    make_users,
    mock_clear_requests,
    mock_requests,
    poll,
    send_command,
)

ENV = {"IOTFIN_AUTH_RATE": "10000", "IOTFIN_RETRY_BASE_MS": "50", "IOTFIN_RETRY_MAX_MS": "200"}


def connect_device(srv, creds, timeout=5.0):
    """Connects and subscribes; retries while the broker refuses (it may not have the
    signing keys yet right after a restart). Returns (client, seconds it took)."""
    t0 = time.monotonic()
    while True:
        d = DeviceClient(srv.mqtt_host, srv.mqtt_port, creds["client_id"], creds["password"],
                         auto_ack=None)
        try:
            rc = d.connect(timeout=2)
        except OSError:
            rc = None
        if rc == 0:
            return d, time.monotonic() - t0
        d.close()
        assert time.monotonic() - t0 < timeout, f"device {creds['client_id']} refused: {rc}"
        time.sleep(0.02)


def setup_devices(srv, n):
    user = make_users(srv, 1, tag="faults")[0]
    devs = [claim_active(srv, user) for _ in range(n)]
    creds = [get_credentials(srv, user, d["id"]) for d in devs]
    return user, devs, creds


def online(srv, user, dev_id):
    return get_device(srv, user, dev_id)["online"]


# ---- delivered means received ------------------------------------------------------------------


def test_a_command_nobody_receives_stays_queued_until_the_device_listens(start_iotfin):
    srv = start_iotfin(env=ENV)
    user, (dev,), (creds,) = setup_devices(srv, 1)
    d, _ = connect_device(srv, creds)
    try:
        assert poll(lambda: online(srv, user, dev["id"]), 5)
        # Step 1: the device stops listening without leaving: the broker has nobody to
        # give its commands to, though iotfin last heard it subscribe.
        rc, mid = d.client.unsubscribe(f"devices/{dev['id']}/#")
        assert rc == 0
        time.sleep(0.2)  # the UNSUBACK is not exposed by the helper; give it a moment
        # Step 2: a command now is answered "no matching subscribers" by the broker: it
        # stays queued, not delivered.
        r = send_command(srv, user, dev["id"], type="reboot")
        assert r.status_code == 202, r.text
        cid = r.json()["id"]
        # The broker's answer comes within milliseconds; give it ample time to be wrong.
        time.sleep(0.5)
        c = get_command(srv, user, dev["id"], cid)
        assert c["status"] == "queued" and c["delivered_at"] is None, c
        assert d.commands() == []
        # Step 3: the device subscribes again: now it receives the command, and only
        # then is it delivered.
        assert d.subscribe(f"devices/{dev['id']}/#")[0] < 0x80
        assert poll(lambda: d.commands(), 5), "the command never reached the device"
        assert poll(lambda: get_command(srv, user, dev["id"], cid)["status"] == "delivered", 5)
        assert [c["id"] for c in d.commands()] == [cid]
    finally:
        d.close()


# ---- broker death ------------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_death_turns_devices_offline_and_commands_wait_for_them(start_iotfin):
    srv = start_iotfin(env=ENV)
    user, devs, creds = setup_devices(srv, 3)
    clients = [connect_device(srv, c)[0] for c in creds]
    try:
        for dev in devs:
            assert poll(lambda: online(srv, user, dev["id"]), 5), dev
        before = {e["id"] for e in admin_events(srv, type="device.disconnected")}
        # Step 1: the managed broker is killed.
        (pid,) = srv.broker_pids()
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        # Step 2: within 2 s every device is offline, each with device.disconnected.
        for dev in devs:
            assert poll(lambda: not online(srv, user, dev["id"]), 2.0 - (time.monotonic() - t_kill)
                        + 0.05), f"{dev['id']} still online {time.monotonic() - t_kill:.1f} s later"
        print(f"all devices offline {time.monotonic() - t_kill:.3f} s after the broker died")
        fresh = [e for e in admin_events(srv, type="device.disconnected") if e["id"] not in before]
        assert {e["subject"] for e in fresh} == {f"devices/{d['id']}" for d in devs}, fresh
        for c in clients:
            c.close()
        # Step 3: commands sent while the devices are away stay queued, also once the
        # broker is back (iotfin must not believe the devices still listen).
        cids = {}
        for dev in devs:
            cids[dev["id"]] = []
            for i in range(2):
                r = send_command(srv, user, dev["id"], type=f"cmd-{i}")
                assert r.status_code == 202, r.text
                cids[dev["id"]].append(r.json()["id"])
        assert poll(lambda: srv.get("/readyz").status_code == 200, 10), "broker not back"
        t_back = time.monotonic()
        time.sleep(0.5)  # room for a wrong "delivered" to show
        for dev in devs:
            for cid in cids[dev["id"]]:
                c = get_command(srv, user, dev["id"], cid)
                assert c["status"] == "queued", c
        # Step 4: the devices come back (refused only until iotfin has given the new
        # broker its keys) and receive their commands, oldest first; only then are the
        # commands delivered.
        clients = []
        waits = []
        for cr in creds:
            c, took = connect_device(srv, cr)
            clients.append(c)
            waits.append(took)
        print(f"devices readmitted {max(waits):.3f} s after readyz was 200 again "
              f"({time.monotonic() - t_back:.2f} s for all three)")
        for dev, c in zip(devs, clients):
            assert poll(lambda: len(c.commands()) >= 2, 5), (dev["id"], c.commands())
            assert [x["id"] for x in c.commands()][:2] == cids[dev["id"]]
            for cid in cids[dev["id"]]:
                assert poll(
                    lambda: get_command(srv, user, dev["id"], cid)["status"] == "delivered", 5
                ), cid
        # Step 5: nothing is delivered that its device did not receive.
        for dev, c in zip(devs, clients):
            got = {x["id"] for x in c.commands()}
            for cid in cids[dev["id"]]:
                if get_command(srv, user, dev["id"], cid)["status"] == "delivered":
                    assert cid in got, cid
            assert online(srv, user, dev["id"])
    finally:
        for c in clients:
            c.close()


# ---- deadlines ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_requests_that_waited_past_3s_time_out_and_never_reach_bank(start_iotfin):
    srv = start_iotfin(env=ENV)
    user, (dev,), (creds,) = setup_devices(srv, 1)
    d, _ = connect_device(srv, creds)
    try:
        # Step 0: authorize works (and warms up the BANK path).
        resp, _ = d.request("authorize", {"amount": 1}, request_id="warm-" + uuid.uuid4().hex)
        assert resp and resp["status"] == "ok", resp
        mock_clear_requests(srv)
        # Step 1: iotfin is stopped; the broker (its own process) still takes the
        # device's requests and acknowledges them.
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            old = []
            for i in range(3):
                rid = f"old-{i}-{uuid.uuid4().hex[:8]}"
                d.publish(f"devices/{dev['id']}/requests/authorize",
                          {"request_id": rid, "data": {"amount": i}})
                old.append(rid)
            # Step 2: stopped long enough that the old requests are well past 3 s
            # old, counted from the broker's PUBACK of the last one (the broker stamps
            # the arrival; on a busy machine that can come a while after the SIGSTOP).
            time.sleep(3.6)
            recent = f"recent-{uuid.uuid4().hex[:8]}"
            d.publish(f"devices/{dev['id']}/requests/authorize",
                      {"request_id": recent, "data": {"amount": 9}})
            time.sleep(0.3)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        # Step 3: each old request is answered `timeout`...
        for rid in old:
            m = d.wait_message(f"devices/{dev['id']}/responses/{rid}", 5)
            assert m is not None, f"no answer to {rid}"
            body = m.json
            assert body["request_id"] == rid and body["status"] == "error", body
            assert body["error"]["code"] == "timeout", body
        # ... the recent one is answered too (ok when the broker stamps the arrival
        # time; timeout when iotfin can only tell that it was stopped meanwhile) ...
        m = d.wait_message(f"devices/{dev['id']}/responses/{recent}", 5)
        assert m is not None and m.json["status"] in ("ok", "error"), m
        print(f"a request 0.4 s old at SIGCONT was answered {m.json['status']}")
        if m.json["status"] == "error":
            assert m.json["error"]["code"] == "timeout", m.json
        # ... and BANK never saw an old one.
        calls = [c for c in mock_requests(srv, "bank") if c["path"].endswith("/authorizations")]
        seen = {c["body"]["request_id"] for c in calls}
        assert not (seen & set(old)), calls
        # Step 4: iotfin carries on: a fresh request is answered from BANK at once.
        resp, took = d.request("authorize", {"amount": 2}, request_id="after-" + uuid.uuid4().hex)
        assert resp and resp["status"] == "ok" and took < 3.0, (resp, took)
        # Step 5: the arrival time is the broker plugin's stamp (user property
        # "iotfin-received-ms"), added after anything the device sent: a device that
        # claims its request arrived 5 s ago cannot make iotfin time it out, nor
        # (the other way round) make a stale one look fresh.
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("iotfin-received-ms", str(int(time.time() * 1000) - 5000))
        rid = "stamped-" + uuid.uuid4().hex[:8]
        d.client.publish(f"devices/{dev['id']}/requests/authorize",
                         json.dumps({"request_id": rid, "data": {"amount": 3}}), qos=1,
                         properties=props)
        m = d.wait_message(f"devices/{dev['id']}/responses/{rid}", 5)
        assert m is not None and m.json["status"] == "ok", m
        calls = [c for c in mock_requests(srv, "bank") if c["path"].endswith("/authorizations")]
        assert rid in {c["body"]["request_id"] for c in calls}, calls
    finally:
        d.close()


# ---- storage -----------------------------------------------------------------------------------


def is_root():
    return os.geteuid() == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB tmpfs to fill up (root only). Requested before start_iotfin, so the
    server on it is stopped before it is unmounted."""
    if not is_root():
        pytest.skip("mounting a small tmpfs to fill needs root (the CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path):
    """Writes zeros to path until the filesystem is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        # What is left is smaller than a chunk: take it byte by byte in pages.
        for size in (4096, 512, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError:
                pass


@pytest.mark.slow
@sqlite_only("fills the tmpfs that holds iotfin.db")
def test_full_disk_refuses_writes_holds_device_events_and_recovers(small_tmpfs, start_iotfin):
    srv = start_iotfin(env=ENV, data_dir=small_tmpfs / "data")
    user, (dev,), (creds,) = setup_devices(srv, 1)
    d, _ = connect_device(srv, creds)
    try:
        r = send_command(srv, user, dev["id"], type="before")
        assert r.status_code == 202, r.text
        # Step 1: the disk fills up.
        filler = small_tmpfs / "filler"
        fill(filler)
        # Step 2: a write over HTTP is 503 `unavailable`, naming storage as the cause.
        r = send_command(srv, user, dev["id"], type="during")
        assert_problem(r, 503, "unavailable")
        assert "storage" in r.json()["detail"] and "disk full" in r.json()["detail"], r.json()
        # Step 3: /readyz says so too.
        got = wait_until(lambda: [srv.get("/readyz")] if srv.get("/readyz").status_code == 503
                         else None, 3)
        assert got, "readyz stayed 200 with the disk full"
        assert "storage" in got[0].json()["detail"], got[0].json()
        # Step 4: the device keeps publishing events. The broker acknowledges one only
        # once its spool has it on disk (small records may still fit the spool's last
        # page); when even that fails it drops the device unacknowledged. Every event
        # acknowledged is held by iotfin, none stored yet.
        ids = [f"ev-{i:03d}" for i in range(40)]
        acked = []
        for eid in ids:
            if not d.is_connected:
                break
            try:
                info = d.publish_event({"id": eid, "type": "meter.reading", "data": {"n": eid}})
                if info.is_published():
                    acked.append(eid)
            except RuntimeError:  # paho: "not currently connected"
                break
        time.sleep(0.5)
        stored = [e["id"] for e in device_events(srv, user, dev["id"], limit=200)["items"]]
        assert not set(stored) & set(acked), stored
        # Step 5: space comes back; without a restart readyz turns 200 and every
        # acknowledged event is stored, in the order the device sent them.
        filler.unlink()
        t0 = time.monotonic()
        assert poll(lambda: srv.get("/readyz").status_code == 200, 5), "readyz stayed 503"
        print(f"readyz 200 again {time.monotonic() - t0:.3f} s after the filler was removed")

        def all_stored():
            got = [e["id"] for e in device_events(srv, user, dev["id"], limit=200)["items"]]
            return (got,) if set(acked) <= set(got) else None

        found = poll(all_stored, 10)
        assert found, "not every acknowledged event was stored"
        assert [e for e in found[0] if e in acked] == acked, found
        if len(acked) < len(ids):
            # What was not acknowledged was refused: the broker dropped the device.
            assert not d.is_connected or d.disconnected.is_set()
        # Step 6: writes work again.
        r = send_command(srv, user, dev["id"], type="after")
        assert r.status_code == 202, r.text
        # Step 7: the log says it twice (failing, recovered), not once per message.
        lines = [l for l in srv.stderr_json() if l.get("module") == "store"]
        failing = [l for l in lines if "storage failing" in l.get("msg", "")]
        recovered = [l for l in lines if "storage recovered" in l.get("msg", "")]
        assert 1 <= len(failing) <= 3 and len(recovered) >= 1, lines
        hub_errors = [l for l in srv.stderr_json()
                      if l.get("module") == "hub" and l.get("level") == "error"]
        assert hub_errors == [], hub_errors
    finally:
        d.close()


def test_an_unwritable_data_dir_stops_the_start_with_one_line(tmp_path, run_iotfin):
    data = tmp_path / "ro-data"
    data.mkdir()
    if is_root():
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
    else:
        data.chmod(0o500)
    try:
        rc, out, err, secs = run_iotfin("serve", env={"IOTFIN_DATA_DIR": str(data)})
    finally:
        if is_root():
            subprocess.run(["umount", "-l", str(data)], capture_output=True)
        else:
            data.chmod(0o700)
    assert rc != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert "IOTFIN_DATA_DIR" in lines[0], lines
    assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines
