"""`iotfin device` (CONTRACT section 5): the simulator connects with a device's
credentials, acks every command as succeeded, publishes the events and requests it
is given and prints what happens; its bad arguments are refused clearly."""
import json
import os
import subprocess

from conftest import BIN, REPO_ROOT
from devices_helpers import (claim_active, device_events, get_credentials, make_user, poll,
                             send_command, wait_command)


def run_device(creds, *extra, timeout=20):
    return subprocess.run([BIN, "device", "--id", creds["client_id"], "--password",
                           creds["password"], "--mqtt", creds["mqtt_url"], *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_device_simulator_acks_commands_and_sends_events_and_requests(start_iotfin):
    srv = start_iotfin(env={"IOTFIN_MOCK_DIR": str(REPO_ROOT / "mocks"), "IOTFIN_AUTH_RATE": "10000"})
    user = make_user(srv, tag="cli")
    dev = claim_active(srv, user)
    creds = get_credentials(srv, user, dev["id"])
    # Step 1: a command waits for the device while it is offline.
    r = send_command(srv, user, dev["id"], type="display.text", payload={"text": "hi"})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    cmd = r.json()
    # Step 2: the simulator connects, receives and acks it, sends an event and two requests.
    run = run_device(creds, "--event", 'payment.completed={"amount": 12}',
                     "--request", "ping", "--request", 'authorize={"amount": 12}')
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert f"connected as {dev['id']}" in out, out
    assert f"acked {cmd['id']}" in out, out
    # Step 3: the command succeeded, the event was stored, both requests were answered.
    done = wait_command(srv, user, dev["id"], cmd["id"], "succeeded")
    assert done["status"] == "succeeded" and done["result"] == {"by": "iotfin device"}, done
    assert poll(lambda: [e for e in device_events(srv, user, dev["id"])["items"]
                         if e["type"] == "payment.completed" and e["data"] == {"amount": 12}])
    responses = [json.loads(l.split(" ", 2)[2]) for l in out.splitlines()
                 if l.startswith("received ") and "/responses/" in l]
    assert len(responses) == 2, out
    assert all(r["status"] == "ok" for r in responses), responses
    assert any("time" in r["data"] for r in responses), responses
    assert any(r["data"].get("approved") is True for r in responses), responses


def test_device_simulator_is_refused_with_a_bad_token(start_iotfin):
    srv = start_iotfin()
    host_port = f"mqtt://{srv.mqtt_host}:{srv.mqtt_port}"
    run = subprocess.run([BIN, "device", "--id", "nobody", "--password", "not-a-token", "--mqtt",
                          host_port, "--duration", "1"], capture_output=True, text=True, timeout=20)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "refused" in run.stdout, run.stdout


def test_device_simulator_argument_errors(run_iotfin):
    rc, out, err, _ = run_iotfin("device", "--id", "x", "--password", "y", "--mqtt", "http://x")
    assert rc == 2 and "--mqtt must look like mqtt://host:port" in err, (rc, err)
    rc, out, err, _ = run_iotfin("device", "--bogus", "1")
    assert rc == 2 and "unknown option --bogus" in err, (rc, err)
    rc, out, err, _ = run_iotfin("device", "--help")
    assert rc == 0 and "--event TYPE[=JSON]" in out, out


def test_docs_events_md_is_generated_from_the_catalogue(run_iotfin):
    # docs/events.md must be exactly what `iotfin events-doc` writes: one catalogue.
    rc, out, err, _ = run_iotfin("events-doc")
    assert rc == 0, err
    with open(os.path.join(REPO_ROOT, "docs", "events.md")) as f:
        assert f.read() == out, "docs/events.md is stale: run `build/iotfin events-doc > docs/events.md`"
    for t in ("device.event.received", "queue.message.dead_lettered", "alarm.raised"):
        assert f"`{t}`" in out
