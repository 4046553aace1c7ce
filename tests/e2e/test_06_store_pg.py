"""The PostgreSQL store (CONTRACT section 10, one instance): a database out of reach
at start is retried for IOTFIN_DB_WAIT_S and then named in one line; the password of
IOTFIN_DB never reaches a log; a database that goes away answers 503 `unavailable`
(never a wrong answer), /readyz says so, and everything comes back by itself within
5 s without losing a write answered 2xx; instances starting at once on a fresh
database migrate it once; a schema named by the URL's search_path is created at the
first start.

The first two tests need no server and run on both backends; the others run when the
suite runs on PostgreSQL (`make e2e-pg`, IOTFIN_TEST_PG)."""

import base64
import secrets
import socket
import threading
import time
import urllib.parse

import pytest

from conftest import REPO_ROOT, TEST_PG, assert_problem, pg_url, poll, psql

needs_pg = pytest.mark.skipif(not TEST_PG, reason="runs on PostgreSQL (make e2e-pg)")


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_an_unreachable_database_is_retried_then_named_in_one_line(run_iotfin):
    url = f"postgres://iotfin:hunter2-not-logged@127.0.0.1:{closed_port()}/iotfin"
    rc, out, err, secs = run_iotfin("serve", env={"IOTFIN_DB": url, "IOTFIN_DB_WAIT_S": "2"},
                                    timeout=20)
    assert rc != 0
    assert 2.0 <= secs < 10, f"gave up after {secs:.1f} s with IOTFIN_DB_WAIT_S=2"
    errors = [l for l in err.splitlines() if '"level":"error"' in l or l.startswith("iotfin:")]
    assert len(errors) == 1, errors
    assert "IOTFIN_DB" in errors[0] and "127.0.0.1" in errors[0], errors
    assert "hunter2-not-logged" not in out + err
    assert "iotfin:***@" in errors[0]


def test_a_bad_wait_setting_is_refused(run_iotfin):
    rc, out, err, _ = run_iotfin("serve", env={"IOTFIN_DB_WAIT_S": "soon"})
    assert rc == 2
    assert "IOTFIN_DB_WAIT_S" in err


@needs_pg
def test_the_password_never_reaches_a_log(iotfin):
    password = urllib.parse.urlsplit(TEST_PG).password
    assert password
    assert iotfin.get("/readyz").status_code == 200
    r = iotfin.import_devices([{"serial": "PGLOG-0001", "model": "m"}])
    assert r.status_code == 200, r.text
    assert iotfin.stop() == 0
    logs = iotfin.stdout_text() + iotfin.stderr_text()
    assert "postgres" in logs and "***" in logs
    assert password not in logs


class Proxy:
    """A TCP relay between iotfin and the test PostgreSQL that the test can cut: down()
    drops every connection and refuses new ones, as a restarting server does."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.open = True
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self):
        self.open = False
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def up(self):
        self.open = True

    def close(self):
        self.down()
        self.lsock.close()


@needs_pg
def test_a_lost_database_answers_503_and_recovers_within_5s(start_iotfin, tmp_path):
    pg = urllib.parse.urlsplit(TEST_PG)
    proxy = Proxy(pg.port)
    try:
        data = tmp_path / "data"
        url = pg_url(data).replace(f"@{pg.hostname}:{pg.port}/", f"@127.0.0.1:{proxy.port}/")
        srv = start_iotfin(env={"IOTFIN_DB": url}, data_dir=data)
        r = srv.import_devices([{"serial": "LOST-0001", "model": "m"}])
        assert r.status_code == 200, r.text

        proxy.down()
        # Writes and reads are refused with 503, never answered from nowhere.
        r = srv.import_devices([{"serial": "LOST-0002", "model": "m"}])
        assert_problem(r, 503, "unavailable")
        assert_problem(srv.get("/readyz"), 503, "unavailable")
        r = srv.get("/v1/admin/queues", headers=srv.admin_headers())
        assert r.status_code == 503, r.text

        proxy.up()
        t0 = time.monotonic()
        assert poll(lambda: srv.get("/readyz").status_code == 200, timeout=5), \
            srv.get("/readyz").text
        r = poll(lambda: (lambda x: x if x.status_code == 200 else None)(
            srv.import_devices([{"serial": "LOST-0003", "model": "m"}])), timeout=5)
        assert r, "writes are still refused 5 s after the database came back"
        assert time.monotonic() - t0 < 5
        # What was answered 2xx before the cut is there; the refused write is not.
        r = srv.import_devices([{"serial": "LOST-0001", "model": "m"},
                                {"serial": "LOST-0002", "model": "m"}])
        assert r.status_code == 200, r.text
        assert (r.json()["imported"], r.json()["duplicates"]) == (1, 1), r.text
        assert srv.stop() == 0
        logs = srv.stderr_text()
        assert "storage failing" in logs and "storage recovered" in logs
    finally:
        proxy.close()


@needs_pg
def test_instances_starting_at_once_migrate_a_fresh_database_once(start_iotfin, tmp_path):
    url = pg_url(tmp_path / "shared-schema")
    servers = [None, None]
    errors = []

    def start(i):
        try:
            servers[i] = start_iotfin(env={"IOTFIN_DB": url}, data_dir=tmp_path / f"d{i}")
        except BaseException as e:  # pytest.fail inside a thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    applied = sum(s.stderr_text().count("applied migration") for s in servers)
    steps = {f.name.split("_")[0] for f in (REPO_ROOT / "src/store/migrations").glob("*.sql")
             if not f.name.endswith(".sqlite.sql")}
    assert applied == len(steps), applied
    created = sum(s.stderr_text().count("created the schema") for s in servers)
    assert created == 1, created
    # Both serve the same data.
    r = servers[0].import_devices([{"serial": "TWIN-0001", "model": "m"}])
    assert r.status_code == 200, r.text
    r = servers[1].import_devices([{"serial": "TWIN-0001", "model": "m"}])
    assert r.status_code == 200 and r.json()["duplicates"] == 1, r.text


@needs_pg
def test_two_instances_through_a_lost_database_recover_and_hear_each_other_again(
        start_iotfin, tmp_path):
    # Two instances on one schema, both behind the relay: the database goes away and
    # comes back. Both answer 503 meanwhile and recover by themselves within 5 s, and
    # their notifications (LISTEN on a new connection) carry a key rotation again.
    pg = urllib.parse.urlsplit(TEST_PG)
    proxy = Proxy(pg.port)
    try:
        url = pg_url(tmp_path / "shared").replace(f"@{pg.hostname}:{pg.port}/",
                                                  f"@127.0.0.1:{proxy.port}/")
        env = {"IOTFIN_DB": url, "IOTFIN_ADMIN_TOKEN": "two-instances-" + "x" * 24}
        a = start_iotfin(env=env, data_dir=tmp_path / "a")
        b = start_iotfin(env=env, data_dir=tmp_path / "b")
        # A's token is B's too (the keys are shared): B knows it, and only the tier is
        # too low for /v1/me (403, where a token B cannot verify is 401).
        token = a.anonymous_token()
        assert_problem(b.get("/v1/me", headers={"Authorization": f"Bearer {token}"}), 403,
                       "forbidden")

        proxy.down()
        for srv in (a, b):
            assert_problem(srv.get("/readyz"), 503, "unavailable")
            assert_problem(srv.import_devices([{"serial": "TWO-LOST", "model": "m"}]), 503,
                           "unavailable")
        proxy.up()
        t0 = time.monotonic()
        for srv in (a, b):
            assert poll(lambda: srv.get("/readyz").status_code == 200, timeout=5)
        assert time.monotonic() - t0 < 5
        r = a.import_devices([{"serial": "TWO-BACK", "model": "m"}])
        assert r.status_code == 200, r.text

        # A rotation on A reaches B within a second: B's listener is connected again.
        jwks = lambda srv: sorted(k["kid"] for k in srv.get("/.well-known/jwks.json").json()["keys"])
        assert poll(lambda: jwks(a) == jwks(b), 2)
        r = a.post("/v1/admin/keys/rotate", headers=a.admin_headers())
        assert r.status_code == 201, r.text
        kid = r.json()["kid"]
        t1 = time.monotonic()
        assert poll(lambda: kid in jwks(b), 1.5), (jwks(a), jwks(b))
        assert time.monotonic() - t1 < 1.0
        # B signs with it too: an anonymous token from B names the new kid.
        header = b.anonymous_token().split(".")[0]
        assert kid in base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)).decode()
    finally:
        proxy.close()


@needs_pg
def test_a_schema_named_by_the_search_path_is_created_at_the_first_start(start_iotfin, tmp_path):
    # Quoted and mixed case: the name is taken as written, not folded to lower case.
    schema = f"Tenant_{secrets.token_hex(4)}"
    url = f"{TEST_PG}?options=-csearch_path%3D%22{schema}%22"
    srv = start_iotfin(env={"IOTFIN_DB": url}, data_dir=tmp_path / "tenant")
    assert srv.stderr_text().count("created the schema") == 1
    r = srv.import_devices([{"serial": "TENANT-0001", "model": "m"}])
    assert r.status_code == 200, r.text
    assert srv.stop() == 0
    rows = psql(TEST_PG, f"SELECT serial FROM \"{schema}\".devices").split()
    assert rows == ["TENANT-0001"]
    # The second start finds it.
    srv = start_iotfin(env={"IOTFIN_DB": url}, data_dir=tmp_path / "tenant")
    assert "created the schema" not in srv.stderr_text()
    assert "applied migration" not in srv.stderr_text()
