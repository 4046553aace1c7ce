"""A PUBACK is a promise (CONTRACT section 5, v2): a QoS 1 event a device saw
acknowledged is stored, even when iotfin, its broker or both are killed with SIGKILL
while devices publish, and a device event that cannot be made durable is not
acknowledged. Also: the managed broker runs from any folder, not as root, and a
broker that cannot start says why in its own words.

Every publisher here records the event ids whose PUBACK it received (paho's
on_publish), and the checks compare those with what GET /v1/devices/{id}/events
shows afterwards: every acknowledged id present, in the order it was published."""

import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests

from conftest import BIN, Iotfin, broker_pids, poll, wait_until
from devices_helpers import claim_active, get_credentials, make_user
from fakes import FakeBank

pytestmark = pytest.mark.slow

DEVICES = 8


class Publisher:
    """One device publishing numbered QoS 1 events with at most 40 unacknowledged,
    until stopped or cut off. acked: event ids whose PUBACK came, in PUBACK order."""

    def __init__(self, host, port, creds, tag):
        self.id = creds["client_id"]
        self.tag = tag
        self.sent = {}  # mid -> event id; mids are not reused below 65,535 messages
        self.acked_mids = []
        self.stop = threading.Event()
        self.gone = threading.Event()
        self.c = mqtt.Client(client_id=self.id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(self.id, creds["password"])
        self.c.on_publish = lambda c, u, mid: self.acked_mids.append(mid)
        self.c.on_disconnect = lambda *a, **k: self.gone.set()
        ok = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p=None: ok.set()
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        assert ok.wait(5), f"device {self.id} did not connect"
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def acked(self):
        return [self.sent[m] for m in list(self.acked_mids) if m in self.sent]

    def publish(self, eid, pad=""):
        info = self.c.publish(
            f"devices/{self.id}/events",
            f'{{"id":"{eid}","type":"meter.reading","data":{{"pad":"{pad}"}}}}',
            1,
        )
        self.sent[info.mid] = eid
        return info

    def _run(self):
        n = 0
        while not self.stop.is_set() and not self.gone.is_set() and n < 60000:
            if self.publish(f"{self.tag}-{n:06d}").rc != mqtt.MQTT_ERR_SUCCESS:
                break
            n += 1
            # paho queues past its in-flight window; keep the queue short so the run
            # measures what the broker acknowledged, not what paho buffered.
            while n - len(self.acked_mids) > 40 and not (self.gone.is_set() or self.stop.is_set()):
                time.sleep(0.001)

    def close(self):
        self.stop.set()
        if self.thread.is_alive() or self.thread.ident:
            self.thread.join(5)
        self.c.disconnect()
        self.c.loop_stop()


def fleet(srv, n, tag):
    user = make_user(srv, tag)
    creds = [get_credentials(srv, user, claim_active(srv, user)["id"]) for _ in range(n)]
    return user, creds


def start_publishers(srv, creds, tag):
    pubs = [Publisher(srv.mqtt_host, srv.mqtt_port, c, f"{tag}{i}") for i, c in enumerate(creds)]
    for p in pubs:
        p.thread.start()
    return pubs


def stored_ids(srv, user, device_id):
    ids, cursor = [], None
    while True:
        params = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = srv.get(f"/v1/devices/{device_id}/events", headers=user.headers, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        ids += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids


def check_every_acked_event_stored_in_order(srv, user, pubs):
    total = 0
    for p in pubs:
        assert p.acked, f"device {p.id} had nothing acknowledged: the test measured nothing"
        want = set(p.acked)

        def all_there():
            return want <= set(stored_ids(srv, user, p.id))

        poll(all_there, 15)
        got = stored_ids(srv, user, p.id)
        missing = sorted(want - set(got))
        assert not missing, f"device {p.id}: {len(missing)} acknowledged events lost: {missing[:5]}"
        mine = [e for e in got if e.startswith(p.tag + "-")]
        assert mine == sorted(mine), f"device {p.id}: events stored out of order"
        assert len(mine) == len(set(mine)), f"device {p.id}: an event stored twice"
        total += len(want)
    return total


def kill_broker(srv):
    pids = srv.broker_pids()
    assert pids, "no managed broker found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def check_bank_got_everything_in_order(bank, pubs, stall=20, limit=120):
    """Every acknowledged event reached BANK; per device, first deliveries in publish
    order (at least once: repeats are allowed). A lost event shows as BANK receiving
    nothing new for `stall` seconds while something is missing; a backlog forwarded
    slowly on a busy machine only takes longer, up to `limit` seconds in all."""
    want = {p.id: set(p.acked) for p in pubs}
    tags = {p.id: p.tag + "-" for p in pubs}

    def first_deliveries():
        order = {p.id: [] for p in pubs}
        seen = set()
        for subject, eid in bank.deliveries():
            dev = subject.removeprefix("devices/")
            if dev in order and eid and eid.startswith(tags[dev]) and eid not in seen:
                seen.add(eid)
                order[dev].append(eid)
        return order

    start = last_change = time.monotonic()
    count = -1
    while True:
        order = first_deliveries()
        missing = {d: want[d] - set(o) for d, o in order.items()}
        if not any(missing.values()):
            break
        got = sum(len(o) for o in order.values())
        now = time.monotonic()
        if got != count:
            count, last_change = got, now
        if now - last_change > stall or now - start > limit:
            lacking = {d: len(m) for d, m in missing.items() if m}
            raise AssertionError(
                f"after {now - start:.0f} s, {stall} s of them with nothing new, BANK lacks "
                f"acknowledged events (device: how many): {lacking}")
        time.sleep(0.2)
    for dev, o in order.items():
        assert o == sorted(o), f"device {dev}: BANK got events out of order"


def test_kill_9_of_iotfin_loses_no_acknowledged_event(start_iotfin, tmp_path):
    bank = FakeBank()
    env = {"IOTFIN_PARTNER_BANK_URL": bank.url, "IOTFIN_RETRY_BASE_MS": "200"}
    try:
        srv = start_iotfin(env=env)
        user, creds = fleet(srv, DEVICES, "k9")
        # Apps post commands all along: every 202 must survive too.
        commands, stop = [], threading.Event()

        def post_commands():
            i = 0
            while not stop.is_set():
                dev = creds[i % len(creds)]["client_id"]
                try:
                    r = srv.post(f"/v1/devices/{dev}/commands", json={"type": "t", "payload": {}},
                                 headers=user.headers, timeout=2)
                except requests.Timeout:  # slow on a busy machine: its answer is lost, go on
                    continue
                except Exception:  # the server is gone: nothing more was promised
                    break
                if r.status_code == 202:
                    commands.append((dev, r.json()["id"]))
                i += 1

        poster = threading.Thread(target=post_commands)
        poster.start()
        # Commands first: beside eight devices flooding the writer a command waits its
        # turn, and devices left publishing until twenty were in would pile up
        # thousands of events each for BANK after the restart.
        assert poll(lambda: len(commands) > 20, 10)
        pubs = start_publishers(srv, creds, "a")
        assert poll(lambda: all(len(p.acked) > 50 for p in pubs), 15), "devices are not publishing"
        srv.kill()
        stop.set()
        poster.join(5)
        for p in pubs:
            assert p.gone.wait(5), "the broker outlived iotfin by more than 5 s"
            p.close()
        srv2 = start_iotfin(data_dir=srv.data_dir, env=env)
        total = check_every_acked_event_stored_in_order(srv2, user, pubs)
        assert total > DEVICES * 50
        for dev, cid in commands:
            r = srv2.get(f"/v1/devices/{dev}/commands/{cid}", headers=user.headers)
            assert r.status_code == 200, f"command {cid} answered 202 and then lost"
        check_bank_got_everything_in_order(bank, pubs)
        spool = srv.data_dir / "broker" / "spool"
        assert poll(lambda: len(list(spool.iterdir())) <= 1, 5), list(spool.iterdir())
    finally:
        bank.stop()


def test_kill_9_of_the_broker_loses_no_acknowledged_event(start_iotfin):
    srv = start_iotfin()
    user, creds = fleet(srv, DEVICES, "kb")
    pubs = start_publishers(srv, creds, "b")
    assert poll(lambda: all(len(p.acked) > 50 for p in pubs), 15), "devices are not publishing"
    old = kill_broker(srv)
    for p in pubs:
        assert p.gone.wait(5)
        p.close()
    # iotfin brings a new broker up on the same port, and stores the dead one's spool.
    assert poll(lambda: [p for p in srv.broker_pids() if p not in old], 10), "no new broker"
    check_every_acked_event_stored_in_order(srv, user, pubs)
    # The same devices carry on with the new broker.
    again = start_publishers(srv, creds[:2], "c")
    assert poll(lambda: all(len(p.acked) > 10 for p in again), 10)
    for p in again:
        p.close()
    check_every_acked_event_stored_in_order(srv, user, again)


def test_kill_9_of_both_loses_no_acknowledged_event(start_iotfin):
    srv = start_iotfin()
    user, creds = fleet(srv, DEVICES, "kk")
    pubs = start_publishers(srv, creds, "d")
    assert poll(lambda: all(len(p.acked) > 50 for p in pubs), 15), "devices are not publishing"
    brokers = srv.broker_pids()
    srv.kill()
    for pid in brokers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in pubs:
        assert p.gone.wait(5)
        p.close()
    srv2 = start_iotfin(data_dir=srv.data_dir)
    check_every_acked_event_stored_in_order(srv2, user, pubs)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs to fill up: a real full disk, not a simulated one."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)])
    if r.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def fill(path):
    """Writes a file until the disk is full; returns it."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_an_event_that_cannot_be_made_durable_is_not_acknowledged(start_iotfin, small_disk):
    srv = start_iotfin(data_dir=small_disk / "data")
    user, creds = fleet(srv, 1, "fd")
    pub = Publisher(srv.mqtt_host, srv.mqtt_port, creds[0], "e")
    pub.publish("e-first")
    assert poll(lambda: pub.acked == ["e-first"], 5)
    filler = fill(small_disk)
    # The spool's segment keeps a zeroed reserve, so acknowledged events go on being
    # durable for a while on a full disk; once the reserve is used up, the next one
    # cannot be written and is refused: the broker drops the device unacknowledged.
    acked_full, refused = [], None
    for i in range(1000):
        eid = f"e-full-{i:04d}"
        pub.publish(eid, pad="x" * 10240)
        # A short step: hundreds of events go one after another into the reserve.
        if not poll(lambda: eid in pub.acked or pub.gone.is_set(), 5, 0.002):
            pytest.fail(f"{eid}: neither acknowledged nor refused")
        if eid not in pub.acked:
            refused = eid
            break
        acked_full.append(eid)
    assert refused, "the broker acknowledged 10 MiB of events on a disk that is full"
    assert pub.gone.is_set()
    pub.close()
    assert "spool write failed" in srv.stderr_text()
    # Space comes back: every acknowledged event is stored, and the refused one, sent
    # again, is acknowledged and stored too.
    filler.unlink()
    again = Publisher(srv.mqtt_host, srv.mqtt_port, creds[0], "e")
    again.publish(refused, pad="x" * 10240)
    assert poll(lambda: again.acked == [refused], 10)
    again.close()
    want = set(acked_full) | {"e-first", refused}
    assert poll(lambda: want <= set(stored_ids(srv, user, pub.id)), 15), (
        len(acked_full), sorted(want - set(stored_ids(srv, user, pub.id)))[:5])


@pytest.mark.skipif(os.geteuid() != 0, reason="the broker drops privileges only when run as root")
def test_broker_runs_unprivileged_from_a_folder_only_root_may_enter(tmp_path, start_iotfin):
    # The binary, its plugin and the data dir all sit in a 0700 folder, as a clone in
    # /root does: the broker's user cannot reach any of them by path.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    build = Path(BIN).parent
    for name in ("iotfin", "mosquitto_iotfin_auth.so"):
        shutil.copy2(build / name, private / name)
    srv = Iotfin(tmp_path, data_dir=private / "data", env={"IOTFIN_BROKER_PLUGIN": None})
    srv.bin = str(private / "iotfin")
    try:
        srv.start()
        pids = srv.broker_pids()
        assert pids
        uid = int(Path(f"/proc/{pids[0]}/status").read_text().split("Uid:")[1].split()[1])
        assert uid != 0, "the managed broker runs as root"
        # The plugin is loaded and judges devices: a device with its token gets in and
        # its event is stored.
        user, creds = fleet(srv, 1, "pv")
        pub = start_publishers(srv, creds, "f")[0]
        assert poll(lambda: len(pub.acked) > 5, 10)
        pub.close()
        check_every_acked_event_stored_in_order(srv, user, [pub])
    finally:
        problems = srv.teardown()
    assert not problems, problems


def test_a_broker_that_cannot_start_says_why(tmp_path, run_iotfin):
    bad = tmp_path / "not-a-plugin.so"
    bad.write_text("this is not a shared object\n")
    rc, out, err, _ = run_iotfin("serve", env={"IOTFIN_BROKER_PLUGIN": str(bad)}, timeout=20)
    assert rc != 0
    assert "port in use?" not in err
    last = [l for l in err.splitlines() if "cannot start mosquitto" in l]
    assert last, err
    # mosquitto's own words, naming the plugin file we gave it.
    assert "not-a-plugin.so" in last[-1] and ("load" in last[-1].lower()), last[-1]
