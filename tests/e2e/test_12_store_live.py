"""The store's promises that no HTTP request can aim at, checked against the store in
use (a SQLite file here, the suite's PostgreSQL under `make e2e-pg`) by small C
programs linked with iotfin's own store (tests/live/, built beside iotfin).

store_exec_nowait: several callbacks (three, four, then two hundred, more statements
than the writer leaves unread at once) share one group commit and one of them
collides with a key that exists; on PostgreSQL, where the statement is sent without
waiting and its failure learnt later, the callbacks between it and that moment are
undone and told so, and every callback told "committed" is."""

import subprocess

import pytest

from conftest import REPO_ROOT, TEST_PG, pg_url

LIVE = REPO_ROOT / "build" / "store_nowait"


@pytest.mark.skipif(not LIVE.exists(), reason="build/store_nowait is built by `make build`")
def test_a_write_sent_without_waiting_fails_its_own_callback_and_undoes_no_committed_one(
    tmp_path,
):
    url = pg_url(tmp_path) if TEST_PG else f"sqlite:{tmp_path}/live.db"
    p = subprocess.run([str(LIVE), url], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "as promised" in p.stdout
    if TEST_PG:
        # Each late-learnt failure is said in the log, with how many were undone.
        assert p.stderr.count("undone behind a failed statement") == 3, p.stderr
