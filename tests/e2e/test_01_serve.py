"""CONTRACT section 1, running: the ready line, what goes to standard output and
standard error, the admin token, health, restarts, two instances side by side,
bad settings, signals, the command line, and the managed broker's lifetime."""

import os
import signal
import socket
import stat
import time

import pytest

from conftest import (
    READY_RE,
    assert_problem,
    jwks_keys,
    mqtt_connack,
    tcp_accepts,
    verify_token,
    wait_until,
)


# -- the ready line and standard output -------------------------------------------


def test_ready_line_is_exact_and_names_live_ports(iotfin):
    # Step 1: the line matches the contract format in full, with real ports.
    m = READY_RE.fullmatch(iotfin.ready_line)
    assert m, iotfin.ready_line
    assert m["http_host"] == "127.0.0.1" and m["mqtt_host"] == "127.0.0.1", iotfin.ready_line
    assert 0 < iotfin.http_port < 65536 and 0 < iotfin.mqtt_port < 65536, iotfin.ready_line
    assert iotfin.http_port != iotfin.mqtt_port
    # Step 2: the line is terminated and flushed (the server is still running).
    assert iotfin.stdout_text().endswith(iotfin.ready_line + "\n")
    # Step 3: both advertised ports answer.
    r = iotfin.get("/healthz")
    assert r.status_code == 200, r.text
    assert tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port)


def test_first_start_prints_admin_token_once(start_iotfin, tmp_path):
    data = tmp_path / "data"
    # Step 1: first start prints the generated token, then the ready line, nothing else.
    first = start_iotfin(data_dir=data)
    token_file = data / "admin-token"
    token = token_file.read_text().strip()
    assert len(token) >= 16, token
    assert sorted(first.stdout_lines()) == sorted([token, first.ready_line])
    # Step 2: the token file is private to the owner.
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, oct(token_file.stat().st_mode)
    # Step 3: the token works on an admin route.
    r = first.import_devices([])
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 0, "duplicates": 0, "invalid": []}
    # Step 4: standard output stays quiet until the end.
    assert first.stop() == 0
    assert sorted(first.stdout_lines()) == sorted([token, first.ready_line])

    # Step 5: a second start on the same data dir prints only the ready line and
    # keeps the token.
    second = start_iotfin(data_dir=data)
    assert second.stdout_lines() == [second.ready_line]
    assert token_file.read_text().strip() == token
    r = second.import_devices([])
    assert r.status_code == 200, r.text
    assert second.stop() == 0
    assert second.stdout_lines() == [second.ready_line]


def test_admin_token_from_environment_is_used_and_not_printed(start_iotfin):
    token = "e2e-admin-token-0123456789abcdef"
    inst = start_iotfin(env={"IOTFIN_ADMIN_TOKEN": token})
    # Step 1: standard output has the ready line only; the given token is not echoed.
    assert inst.stdout_lines() == [inst.ready_line]
    # Step 2: that token opens the admin routes; another one does not.
    r = inst.import_devices([])
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 0
    r = inst.post(
        "/v1/admin/devices/import",
        json={"devices": []},
        headers={"Authorization": "Bearer not-" + token},
    )
    assert_problem(r, 401, "unauthenticated")
    assert token not in inst.stderr_text()


def test_logs_are_one_json_object_per_line_and_hold_no_secrets(iotfin):
    # Step 1: traffic of each kind: success, unknown route, admin with the token.
    assert iotfin.get("/healthz").status_code == 200
    assert iotfin.get("/no/such/route").status_code == 404
    assert iotfin.import_devices([{"serial": "LOG-0001"}]).status_code == 200
    token = iotfin.admin_token
    assert iotfin.stop() == 0
    # Step 2: every line of standard error is a JSON object.
    lines = iotfin.stderr_json()
    assert lines, "no log lines at all"
    for obj in lines:
        assert isinstance(obj, dict) and obj, obj
    # Step 3: the admin token never reaches the log.
    assert token not in iotfin.stderr_text()


# -- health ---------------------------------------------------------------------


def test_healthz_and_readyz_answer_200(shared_iotfin):
    for path in ("/healthz", "/readyz"):
        r = shared_iotfin.get(path)
        assert r.status_code == 200, (path, r.text)
        assert "problem" not in r.headers.get("Content-Type", ""), r.headers
        assert r.content, path


def test_readyz_is_503_while_the_managed_broker_is_down(iotfin):
    # Step 1: ready, with one managed broker process.
    assert iotfin.get("/readyz").status_code == 200
    pids = iotfin.broker_pids()
    assert len(pids) == 1, pids
    # Step 2: the broker dies; readiness turns 503 `unavailable` quickly.
    os.kill(pids[0], signal.SIGKILL)
    # A 503 Response is falsy (requests' Response.__bool__ is .ok): wrap it, or the
    # poll only ends well if the broker is still down at its deadline.
    def readyz_if_503():
        r = iotfin.get("/readyz")
        return [r] if r.status_code == 503 else None

    got = wait_until(readyz_if_503, 3)
    assert got, "readyz stayed 200 with the broker dead"
    r = got[0]
    assert_problem(r, 503, "unavailable")
    # Step 3: liveness is unaffected.
    assert iotfin.get("/healthz").status_code == 200
    # Step 4: iotfin brings its broker back and becomes ready again.
    ok = wait_until(lambda: iotfin.get("/readyz").status_code == 200, 10, interval=0.1)
    assert ok, "readyz did not return to 200 within 10 s of the broker dying"
    assert tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port)


# -- restarts and instances ----------------------------------------------------------


def test_restart_on_same_data_dir_keeps_everything(start_iotfin, tmp_path):
    data = tmp_path / "data"
    # Step 1: first run imports a device and hands out a token.
    first = start_iotfin(data_dir=data)
    r = first.import_devices([{"serial": "KEEP-0001", "model": "m1"}])
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 1, "duplicates": 0, "invalid": []}
    old_token = first.anonymous_token()
    _, old_claims = verify_token(first, old_token)
    kids = set(jwks_keys(first))
    assert first.stop() == 0

    # Step 2: second run on the same data dir still knows the device.
    second = start_iotfin(data_dir=data)
    r = second.import_devices([{"serial": "KEEP-0001", "model": "m1"}])
    assert r.status_code == 200, r.text
    assert r.json() == {"imported": 0, "duplicates": 1, "invalid": []}
    # Step 3: the signing keys survived: the old token still verifies.
    assert kids <= set(jwks_keys(second))
    _, claims = verify_token(second, old_token)
    assert claims == old_claims


def test_two_instances_on_two_data_dirs_do_not_interfere(start_iotfin, tmp_path):
    # Step 1: two servers at once, port 0 everywhere.
    a = start_iotfin(data_dir=tmp_path / "a")
    b = start_iotfin(data_dir=tmp_path / "b")
    ports = {a.http_port, a.mqtt_port, b.http_port, b.mqtt_port}
    assert len(ports) == 4, (a.ready_line, b.ready_line)
    assert a.admin_token != b.admin_token
    # Step 2: the same serial is new to each of them.
    for inst in (a, b):
        r = inst.import_devices([{"serial": "TWIN-0001"}])
        assert r.status_code == 200, r.text
        assert r.json() == {"imported": 1, "duplicates": 0, "invalid": []}
    # Step 3: one's admin token is worthless at the other.
    r = b.post(
        "/v1/admin/devices/import", json={"devices": []}, headers=a.admin_headers()
    )
    assert_problem(r, 401, "unauthenticated")
    # Step 4: stopping one leaves the other serving.
    assert a.stop() == 0
    r = b.get("/readyz")
    assert r.status_code == 200, r.text
    assert tcp_accepts(b.mqtt_host, b.mqtt_port)


def test_ipv6_listen_address_gives_a_valid_url(start_iotfin):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    inst = start_iotfin(env={"IOTFIN_LISTEN": "[::1]:0"})
    # The ready line's http URL must be usable as printed: http://[::1]:PORT.
    assert inst.http_host == "[::1]", inst.ready_line
    r = inst.get("/healthz")
    assert r.status_code == 200, r.text


# -- bad settings -----------------------------------------------------------------

BAD_SETTINGS = [
    ("IOTFIN_LISTEN", "garbage"),
    ("IOTFIN_LISTEN", "127.0.0.1:99999"),
    ("IOTFIN_MQTT_LISTEN", "nowhere"),
    ("IOTFIN_MOCK", "maybe"),
    ("IOTFIN_MAX_RECEIVES", "abc"),
    ("IOTFIN_DB", "mysql://x"),
    ("IOTFIN_BROKER", "http://x"),
    ("IOTFIN_ACCESS_TTL_S", "0"),
    ("IOTFIN_AUTH_RATE", "-5"),
    ("IOTFIN_SMTP_URL", "http://mail.example"),
    ("IOTFIN_PARTNER_KYC_URL", "ftp://kyc.example"),
    ("IOTFIN_PARTNER_BANK_TIMEOUT_MS", "soon"),
    ("IOTFIN_ADMIN_TOKEN", "short"),
]


@pytest.mark.parametrize("name,value", BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_bad_setting_exits_at_once_naming_it(run_iotfin, name, value):
    rc, out, err, secs = run_iotfin("serve", env={name: value}, timeout=10)
    assert rc != 0, (rc, err)
    assert secs < 2, f"took {secs:.2f} s"
    # Nothing on standard output (no ready line, no token); one line naming the setting.
    assert out == "", out
    lines = [l for l in err.split("\n") if l.strip()]
    assert len(lines) == 1, lines
    assert name in lines[0], lines


def test_retry_max_below_base_is_a_bad_setting(run_iotfin):
    rc, out, err, secs = run_iotfin(
        "serve", env={"IOTFIN_RETRY_BASE_MS": "5000", "IOTFIN_RETRY_MAX_MS": "1000"}
    )
    assert rc != 0 and secs < 2 and out == "", (rc, secs, out)
    lines = [l for l in err.split("\n") if l.strip()]
    assert len(lines) == 1 and "IOTFIN_RETRY_MAX_MS" in lines[0], lines


def test_http_port_in_use_exits_non_zero_quickly(run_iotfin):
    # A port someone else holds is a bad IOTFIN_LISTEN: fail fast, say which.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        rc, out, err, secs = run_iotfin("serve", env={"IOTFIN_LISTEN": f"127.0.0.1:{port}"})
    finally:
        holder.close()
    assert rc != 0, (rc, err)
    assert secs < 5, f"took {secs:.2f} s"
    assert "iotfin ready" not in out, out
    assert "IOTFIN_LISTEN" in err or f"127.0.0.1:{port}" in err, err


# -- signals and the managed broker's lifetime ----------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_exit_0(iotfin, sig):
    # Step 1: serving.
    assert iotfin.get("/readyz").status_code == 200
    assert iotfin.broker_pids()
    # Step 2: the signal ends the process with status 0.
    t0 = time.monotonic()
    assert iotfin.stop(sig) == 0
    assert time.monotonic() - t0 < 10
    # Step 3: nothing is left listening: neither HTTP nor the managed broker.
    assert not tcp_accepts("127.0.0.1", iotfin.http_port)
    assert wait_until(lambda: not iotfin.broker_pids(), 2), iotfin.broker_pids()
    assert not tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port)


def test_sigterm_finishes_the_request_in_flight(iotfin):
    # Step 1: a request whose body is only half sent.
    body = b'{"devices": [{"serial": "INFLIGHT-0001"}]}'
    head = (
        f"POST /v1/admin/devices/import HTTP/1.1\r\nHost: {iotfin.http_host}\r\n"
        f"Authorization: Bearer {iotfin.admin_token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    conn = socket.create_connection(("127.0.0.1", iotfin.http_port), timeout=10)
    conn.sendall(head + body[:10])
    time.sleep(0.2)
    # Step 2: SIGTERM arrives; new connections are no longer accepted.
    iotfin.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: not tcp_accepts("127.0.0.1", iotfin.http_port), 2)
    assert iotfin.running(), "exited with a request in flight"
    # Step 3: the rest of the body arrives and the request is answered in full.
    conn.sendall(body[10:])
    reply = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        reply += chunk
    conn.close()
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 200"), reply
    assert b'"imported":1' in rest.replace(b" ", b""), reply
    # Step 4: then the process exits 0.
    assert iotfin.wait_exit(15) == 0


def test_kill_9_takes_the_managed_broker_down_within_2_s(iotfin):
    # Step 1: the broker is up and accepting connections.
    assert len(iotfin.broker_pids()) == 1
    assert tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port)
    # Step 2: iotfin dies without a chance to clean up.
    iotfin.stopped_by_test = True
    iotfin.kill()
    t0 = time.monotonic()
    # Step 3: within 2 s nothing accepts device connections on the MQTT port.
    gone = wait_until(
        lambda: not iotfin.broker_pids() and not tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port),
        2.0,
    )
    assert gone, (
        f"after {time.monotonic() - t0:.2f} s: broker pids {iotfin.broker_pids()}, "
        f"port accepts: {tcp_accepts(iotfin.mqtt_host, iotfin.mqtt_port)}"
    )


def test_managed_broker_refuses_anonymous_and_bad_clients(shared_iotfin):
    host, port = shared_iotfin.mqtt_host, shared_iotfin.mqtt_port
    # Step 1: no credentials: the broker answers CONNACK "not authorised".
    rc = mqtt_connack(host, port)
    assert rc in (4, 5), f"anonymous CONNACK rc={rc}"
    # Step 2: made-up credentials, including iotfin's own user name: refused.
    assert mqtt_connack(host, port, "someone", "something") in (4, 5)
    assert mqtt_connack(host, port, "iotfin", "guess") in (4, 5)
    # Step 3: an anonymous session token is no device credential.
    token = shared_iotfin.anonymous_token()
    assert mqtt_connack(host, port, "device", token) in (4, 5)


# -- the command line -------------------------------------------------------------


def test_help_lists_commands(run_iotfin):
    rc, out, err, _ = run_iotfin("--help")
    assert rc == 0, err
    assert "serve" in out and "Usage" in out, out


def test_serve_help_lists_every_setting(run_iotfin):
    rc, out, err, secs = run_iotfin("serve", "--help")
    assert rc == 0, err
    assert secs < 2
    for name in (
        "IOTFIN_LISTEN", "IOTFIN_DATA_DIR", "IOTFIN_DB", "IOTFIN_BROKER", "IOTFIN_MQTT_LISTEN",
        "IOTFIN_ADMIN_TOKEN", "IOTFIN_SMTP_URL", "IOTFIN_MAIL_FROM", "IOTFIN_OPS_EMAIL",
        "IOTFIN_MOCK", "IOTFIN_MOCK_DIR", "IOTFIN_PARTNER_", "IOTFIN_RETRY_BASE_MS",
        "IOTFIN_RETRY_MAX_MS", "IOTFIN_MAX_RECEIVES", "IOTFIN_VISIBILITY_TIMEOUT_MS",
        "IOTFIN_KYC_POLL_MS", "IOTFIN_COMMAND_TTL_S", "IOTFIN_ACCESS_TTL_S",
        "IOTFIN_DEVICE_TOKEN_TTL_S", "IOTFIN_AUTH_RATE", "IOTFIN_PASSWORD_HASH_MIB",
    ):
        assert name in out, name


def test_version(run_iotfin):
    rc, out, err, _ = run_iotfin("--version")
    assert rc == 0, err
    lines = out.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("iotfin "), out
    assert any(ch.isdigit() for ch in lines[0]), out


@pytest.mark.parametrize("command", ["demo", "device"])
def test_other_commands_have_help(run_iotfin, command):
    # CONTRACT section 1: `iotfin <command> --help` works for demo and device too.
    rc, out, err, _ = run_iotfin(command, "--help")
    assert rc == 0, (rc, err)
    assert command in out and "--help" not in err, (out, err)


def test_unknown_command_exits_non_zero(run_iotfin):
    rc, out, err, _ = run_iotfin("frobnicate")
    assert rc != 0
    assert out == "", out
    assert "frobnicate" in err, err


def test_serve_rejects_stray_arguments(run_iotfin):
    rc, out, err, secs = run_iotfin("serve", "--port=1")
    assert rc != 0 and secs < 2, (rc, secs)
    assert "iotfin ready" not in out
    assert "--port=1" in err, err
