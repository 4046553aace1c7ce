"""Following a PostgreSQL failover (CONTRACT section 10): iotfin on a primary and a
streaming standby named in one multi-host URL (`target_session_attrs=read-write`). The
primary is lost (`pg_ctl stop -m immediate`); meanwhile requests answer 503
`unavailable` and /readyz 503, never a 2xx; the standby is promoted and iotfin follows
it by itself within 5 s; every write answered 2xx before the loss is on the promoted
standby.

The pair replicates synchronously (synchronous_standby_names on the primary names the
standby's application_name), so the primary acknowledges a commit only once the standby
has it: without that, PostgreSQL itself may lose the last commits in a failover.

The pair is this test's own (it stops and promotes servers): two clusters in a temporary
folder, run by the `postgres` user when the tests run as root, loopback only, on free
ports, stopped and deleted afterwards even on failure. It runs when the suite runs on
PostgreSQL (`make e2e-pg`, IOTFIN_TEST_PG)."""

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import TEST_PG, assert_problem, poll

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TEST_PG, reason="runs on PostgreSQL (make e2e-pg)"),
    pytest.mark.skipif(not (PG_BIN / "initdb").is_file(),
                       reason=f"no PostgreSQL 15 server binaries in {PG_BIN}"),
]

STANDBY_NAME = "iotfin_standby"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PgPair:
    """A primary and a synchronous streaming standby of it, each on its own port."""

    def __init__(self):
        self.as_owner = []
        self.owner = None
        if os.geteuid() == 0:  # initdb refuses root, as in scripts/pg.sh
            self.owner = "postgres"
            self.as_owner = ["runuser", "-u", self.owner, "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="iotfin-pgfo."))
        os.chmod(self.dir, 0o755)
        if self.owner:
            shutil.chown(self.dir, self.owner)
        self.password = secrets.token_hex(12)
        self.primary = self.dir / "primary"
        self.standby = self.dir / "standby"
        self.p1 = self.p2 = None
        self.running = set()

    def run(self, *args, owner=True, env=None, timeout=30):
        cmd = (self.as_owner if owner else []) + [str(a) for a in args]
        full_env = {**os.environ, **(env or {})}
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                           timeout=timeout)
        if r.returncode != 0:
            logs = "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}"
                           for p in self.dir.glob("*.log"))
            pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                        f"{r.stdout.decode(errors='replace')}{logs}")
        return r.stdout.decode(errors="replace")

    def pg_ctl_start(self, data, port, extra=""):
        opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
                f" -c max_connections=100 -c shared_buffers=32MB {extra}")
        self.running.add(data)
        self.run(PG_BIN / "pg_ctl", "-D", data, "-l", self.dir / f"{data.name}.log", "-w",
                 "-t", "30", "-o", opts, "start")

    def psql(self, port, sql, db="postgres"):
        return self.run(PG_BIN / "psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", port,
                        "-U", "iotfin", "-d", db, "-c", sql, owner=False,
                        env={"PGPASSWORD": self.password})

    def start(self):
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.owner:
            shutil.chown(pwfile, self.owner)
        self.run(PG_BIN / "initdb", "-D", self.primary, "-U", "iotfin", f"--pwfile={pwfile}",
                 "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "--no-sync")
        # Password over TCP for sessions and for replication, loopback only.
        (self.primary / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n")
        with open(self.primary / "postgresql.conf", "a") as f:
            f.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n")
        self.p1, self.p2 = free_port(), free_port()
        self.pg_ctl_start(self.primary, self.p1)
        self.psql(self.p1, "CREATE DATABASE iotfin")
        # -R writes standby.signal and primary_conninfo from this connection string,
        # application_name included: the name synchronous_standby_names waits for.
        self.run(PG_BIN / "pg_basebackup", "-D", self.standby, "-R", "-X", "stream",
                 "-c", "fast", "--no-sync", "-d",
                 f"host=127.0.0.1 port={self.p1} user=iotfin application_name={STANDBY_NAME}",
                 env={"PGPASSWORD": self.password})
        conf = (self.standby / "postgresql.auto.conf").read_text()
        assert "primary_conninfo" in conf and STANDBY_NAME in conf, conf
        assert (self.standby / "standby.signal").exists()
        self.pg_ctl_start(self.standby, self.p2)
        # Synchronous from now on: a commit is acknowledged once the standby has flushed
        # it. Set on the primary after the base backup, so the promoted standby, which
        # has no standby of its own, does not wait for one.
        self.psql(self.p1, f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        self.psql(self.p1, "SELECT pg_reload_conf()")
        sync = lambda: self.psql(self.p1, "SELECT sync_state FROM pg_stat_replication "
                                 f"WHERE application_name = '{STANDBY_NAME}' "
                                 "AND state = 'streaming'").strip() == "sync"
        assert poll(sync, timeout=10), self.psql(self.p1, "SELECT * FROM pg_stat_replication")
        return self

    def url(self):
        return (f"postgres://iotfin:{self.password}@127.0.0.1:{self.p1},127.0.0.1:{self.p2}"
                "/iotfin?target_session_attrs=read-write&connect_timeout=2")

    def lose_primary(self):
        """The machine is lost: no shutdown checkpoint, no goodbye to clients."""
        self.run(PG_BIN / "pg_ctl", "-D", self.primary, "-m", "immediate", "-w", "stop")
        self.running.discard(self.primary)

    def promote(self):
        self.run(PG_BIN / "pg_ctl", "-D", self.standby, "-w", "-t", "30", "promote")

    def cleanup(self):
        for data in list(self.running):
            subprocess.run(self.as_owner + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                                            "immediate", "-w", "-t", "10", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        self.running.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg_pair():
    pair = PgPair()
    try:
        yield pair.start()
    finally:
        pair.cleanup()


class Writer:
    """A client importing one new device per request, as fast as answers come, keeping
    every answer with its send and answer times."""

    def __init__(self, srv, name):
        self.srv, self.name = srv, name
        self.answers = []  # (serial, status, code, sent, answered)
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.session = requests.Session()

    def _loop(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            serial = f"FO-{self.name}-{n:05d}"
            sent = time.monotonic()
            try:
                r = self.session.post(self.srv.url + "/v1/admin/devices/import",
                                      json={"devices": [{"serial": serial, "model": "m"}]},
                                      headers=self.srv.admin_headers(), timeout=10)
            except requests.RequestException as e:
                self.errors.append(repr(e))
                continue
            code = None
            if r.status_code != 200:
                try:
                    code = r.json().get("code")
                except ValueError:
                    code = r.text[:200]
                time.sleep(0.02)  # a refused client does not spin
            elif r.json().get("imported") != 1:
                self.errors.append(f"{serial}: {r.text}")
            self.answers.append((serial, r.status_code, code, sent, time.monotonic()))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)

    def acknowledged(self):
        return [a[0] for a in self.answers if a[1] == 200]


def test_a_promoted_standby_is_followed_within_5s_and_no_acknowledged_write_is_lost(
        pg_pair, start_iotfin, tmp_path):
    srv = start_iotfin(env={"IOTFIN_DB": pg_pair.url()}, data_dir=tmp_path / "data")
    assert srv.get("/readyz").status_code == 200
    r = srv.import_devices([{"serial": "FO-BEFORE-0001", "model": "m"}])
    assert r.status_code == 200, r.text

    with Writer(srv, "A") as wa, Writer(srv, "B") as wb:
        writers = (wa, wb)
        assert poll(lambda: all(len(w.acknowledged()) >= 20 for w in writers), timeout=10), \
            [w.answers[-3:] for w in writers]

        pg_pair.lose_primary()
        lost_at = time.monotonic()
        # Meanwhile: 503 `unavailable` as problem+json, readiness 503, no write taken.
        assert poll(lambda: srv.get("/readyz").status_code == 503, timeout=3), \
            srv.get("/readyz").text
        assert_problem(srv.get("/readyz"), 503, "unavailable")
        r = srv.import_devices([{"serial": "FO-DURING-0001", "model": "m"}])
        assert_problem(r, 503, "unavailable")
        r = srv.get("/v1/admin/queues", headers=srv.admin_headers())
        assert_problem(r, 503, "unavailable")
        # Long enough for the writers to be refused a few times and for iotfin to retry
        # its connection to both hosts (the standby, read-only, is not taken).
        assert poll(lambda: all(any(a[3] > lost_at + 0.3 for a in w.answers) for w in writers),
                    timeout=3)
        assert srv.get("/readyz").status_code == 503

        # From the moment promotion starts the standby may take writes (pg_ctl returns a
        # little later): the clock of "recovers within 5 s" starts here, strictly.
        promoted_at = time.monotonic()
        pg_pair.promote()
        assert poll(lambda: srv.get("/readyz").status_code == 200, timeout=5), \
            srv.get("/readyz").text
        assert poll(lambda: all(any(a[1] == 200 and a[3] > promoted_at for a in w.answers)
                                for w in writers), timeout=5), \
            [w.answers[-3:] for w in writers]
        # Reads too, on every HTTP thread (each has its own connection, left broken by
        # the loss): bursts of concurrent reads all answer 200.
        with ThreadPoolExecutor(12) as pool:
            def burst():
                return [r.status_code for r in pool.map(
                    lambda _: requests.get(srv.url + "/v1/admin/queues",
                                           headers=srv.admin_headers(), timeout=10),
                    range(12))]
            assert poll(lambda: set(burst()) == {200}, timeout=5), burst()
            recovered_s = time.monotonic() - promoted_at
            assert recovered_s < 5, recovered_s
            for _ in range(3):
                assert set(burst()) == {200}
        # A few more writes on the promoted standby.
        n = sum(len(w.acknowledged()) for w in writers)
        assert poll(lambda: sum(len(w.acknowledged()) for w in writers) >= n + 20, timeout=5)

    for w in writers:
        assert not w.errors, w.errors[:5]
        for serial, status, code, sent, answered in w.answers:
            # Nothing else than a commit or 503 `unavailable`, ...
            assert status == 200 or (status == 503 and code == "unavailable"), \
                (serial, status, code)
            # ... and nothing sent after the loss answered 2xx before the promotion began:
            # there was no writable database then.
            if status == 200:
                assert not (sent > lost_at and answered < promoted_at), (serial, sent, answered)
        refused = [a for a in w.answers if a[1] == 503]
        assert refused, "the writer was never refused while there was no primary"

    # Every write answered 2xx, before the loss or after the promotion, is there.
    acked = ["FO-BEFORE-0001"] + wa.acknowledged() + wb.acknowledged()
    for i in range(0, len(acked), 200):
        chunk = acked[i:i + 200]
        r = srv.import_devices([{"serial": s, "model": "m"} for s in chunk])
        assert r.status_code == 200, r.text
        assert (r.json()["imported"], r.json()["duplicates"]) == (0, len(chunk)), \
            (r.text, chunk)
    # And they are on the server that is now the primary, read directly there.
    stored = set(pg_pair.psql(pg_pair.p2, "SELECT serial FROM devices WHERE serial LIKE 'FO-%'",
                              db="iotfin").split())
    assert not set(acked) - stored, sorted(set(acked) - stored)[:10]

    assert srv.stop() == 0
    logs = srv.stdout_text() + srv.stderr_text()
    assert "storage failing" in logs and "storage recovered" in logs
    assert pg_pair.password not in logs
    print(f"failover: recovered {recovered_s:.2f} s after promotion; "
          f"{len(acked)} writes acknowledged, {sum(len(w.answers) for w in writers)} answers")
