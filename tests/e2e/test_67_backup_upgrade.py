"""Backups and upgrades (CONTRACT section 11).

`iotfin backup FILE` while `serve` runs under load writes one file; `iotfin restore
FILE` fills an empty data dir; a server started on it has everything acknowledged
before the backup started, and the tokens issued before still work. A data dir made by
an older schema is migrated forward; a newer schema is refused with one line."""

import json
import re
import sqlite3
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import BIN, REPO_ROOT, base_env, sqlite_only
from devices_helpers import claim_active, make_user, send_command

pytestmark = [pytest.mark.slow,
              sqlite_only("backs up, restores and upgrades the SQLite file in the data dir")]


def run(args, data_dir, timeout=30):
    return subprocess.run([BIN, *args], env=base_env(data_dir), capture_output=True, text=True,
                          timeout=timeout)


def test_backup_under_load_restores_everything_acknowledged_before_it(start_iotfin, tmp_path):
    srv = start_iotfin()
    user = make_user(srv, "bk")
    device = claim_active(srv, user)
    acked = []  # (command id, monotonic time its 202 arrived)
    stop = threading.Event()

    def load():
        while not stop.is_set():
            r = send_command(srv, user, device["id"], payload={"n": len(acked)}, ttl=3600)
            if r.status_code == 202:
                acked.append((r.json()["id"], time.monotonic()))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    backup = tmp_path / "iotfin.backup"
    done = run(["backup", str(backup)], srv.data_dir)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert done.returncode == 0, done.stderr
    before = [cid for cid, at in acked if at < started]
    assert len(before) > 20, "the load did not run"
    assert len(acked) > len(before), "nothing was written while the backup ran"
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(backup) as tar:
        names = tar.getnames()
    assert "iotfin.db" in names and "admin-token" in names
    assert any(n.startswith("keys/") for n in names), names
    srv.stop()

    # A data dir with anything in it is refused.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    r = run(["restore", str(backup)], busy)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not empty" in r.stderr

    restored = tmp_path / "restored"
    r = run(["restore", str(backup)], restored)
    assert r.returncode == 0, r.stderr
    srv2 = start_iotfin(data_dir=restored)
    # The user's token from before the backup still verifies, and every command
    # acknowledged before the backup started is there.
    assert srv2.get("/v1/me", headers=user.headers).status_code == 200
    for cid in before:
        r = srv2.get(f"/v1/devices/{device['id']}/commands/{cid}", headers=user.headers)
        assert r.status_code == 200, (cid, r.text)
    assert srv2.get("/v1/admin/queues", headers=srv2.admin_headers()).status_code == 200


def test_backup_and_restore_say_what_they_need(tmp_path):
    r = run(["backup"], tmp_path / "d")
    assert r.returncode == 2 and "Usage: iotfin backup FILE" in r.stderr
    r = run(["restore", str(tmp_path / "missing.backup")], tmp_path / "empty")
    assert r.returncode == 1 and "cannot read" in r.stderr
    bad = tmp_path / "evil.backup"
    with tarfile.open(bad, "w", format=tarfile.USTAR_FORMAT) as tar:
        evil = tmp_path / "payload"
        evil.write_text("x")
        tar.add(evil, arcname="../../escaped")
    r = run(["restore", str(bad)], tmp_path / "target")
    assert r.returncode == 1 and "unexpected entry" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists()


def old_data_dir(path, upto):
    """A data dir as an iotfin with migrations 1..upto made it, with a device in it."""
    path.mkdir()
    db = sqlite3.connect(path / "iotfin.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
               " applied_at TEXT NOT NULL)")
    files = sorted((REPO_ROOT / "src" / "store" / "migrations").glob("*.sql"))
    applied = 0
    for f in files:
        m = re.match(r"(\d+)_(\w+?)(\.sqlite|\.pg)?\.sql$", f.name)
        version = int(m.group(1))
        if version > upto or (f.name.count(".") == 2 and ".sqlite." not in f.name):
            continue
        db.executescript(f.read_text())
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01T00:00:00.000Z')",
                   (version, m.group(2)))
        applied += 1
    db.execute("INSERT INTO devices (id, serial, model, status, created_at) VALUES "
               "('01900000-0000-7000-8000-000000000001', 'OLD-SERIAL-1', 'm', 'imported', "
               "'2026-01-01T00:00:00.000Z')")
    db.commit()
    db.close()
    assert applied == upto
    return path


def versions(path):
    db = sqlite3.connect(f"file:{path / 'iotfin.db'}?mode=ro", uri=True)
    try:
        return [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        db.close()


def test_an_older_data_dir_is_migrated_forward_and_a_newer_one_refused(start_iotfin, tmp_path,
                                                                       run_iotfin):
    data = old_data_dir(tmp_path / "old", upto=3)
    srv = start_iotfin(data_dir=data)
    latest = versions(data)
    assert latest[:3] == [1, 2, 3] and len(latest) > 3, latest
    # The device imported by the old version is still there: importing it again is a
    # duplicate.
    r = srv.import_devices([{"serial": "OLD-SERIAL-1"}])
    assert r.status_code == 200 and r.json()["duplicates"] == 1, r.text
    srv.stop()

    db = sqlite3.connect(data / "iotfin.db")
    db.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', "
               "'2030-01-01T00:00:00.000Z')")
    db.commit()
    db.close()
    rc, out, err, _ = run_iotfin("serve", env={"IOTFIN_DATA_DIR": str(data)})
    assert rc != 0
    lines = [json.loads(l) for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l["level"] == "error"]
    assert len(errors) == 1, errors
    assert "999" in errors[0]["msg"] and str(latest[-1]) in errors[0]["msg"], errors[0]
