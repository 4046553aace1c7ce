"""CONTRACT sections 1 and 9: `iotfin demo` runs the whole journey against a running
server with the shipped partner mocks, offline, and exits 0 only if every step worked."""
import os
import subprocess
import time

from conftest import BIN, REPO_ROOT

REPO = str(REPO_ROOT)


def test_demo_runs_the_whole_journey_green(start_iotfin):
    # Step 1: a server with the shipped mocks (KYC approves after ~2 s by callback).
    srv = start_iotfin(env={"IOTFIN_MOCK_DIR": os.path.join(REPO, "mocks"),
                            "IOTFIN_RETRY_BASE_MS": "100", "IOTFIN_AUTH_RATE": "10000"})
    # Step 2: the demo, pointed at it, with the admin token from the data dir.
    env = dict(os.environ, IOTFIN_DATA_DIR=srv.data_dir)
    t0 = time.monotonic()
    run = subprocess.run([BIN, "demo", "--url", srv.url], env=env, capture_output=True,
                         text=True, timeout=90)
    took = time.monotonic() - t0
    # Step 3: every step printed ok, none failed, and the exit status says so.
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("18 step(s) ok, 0 failed"), run.stdout
    assert not any("FAILED" in l for l in lines), run.stdout
    for needle in ("KYC approves", "becomes active", "device connects", "acks it",
                   "event stream", "BANK received", "authorize", "dead letter",
                   "alarm", "redrive"):
        assert any(needle in l for l in lines), (needle, run.stdout)
    assert took < 60, took


def test_demo_fails_loudly_without_a_server(run_iotfin, tmp_path):
    # Nothing listens on this port: the first step fails and the exit status is 1.
    rc, out, err, _ = run_iotfin("demo", "--url", "http://127.0.0.1:9",
                                 "--admin-token", "x" * 32)
    assert rc == 1, (rc, out, err)
    assert "FAILED" in out, out


def test_device_needs_id_and_password(run_iotfin):
    rc, out, err, _ = run_iotfin("device")
    assert rc == 2 and "--id and --password" in err, (rc, err)
