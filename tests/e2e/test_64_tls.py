"""TLS (CONTRACT section 11): the API over HTTPS with IOTFIN_TLS_CERT/KEY, devices over
MQTT with TLS with IOTFIN_MQTT_TLS_CERT/KEY; the ready line and the credentials'
mqtt_url follow; `iotfin demo --cafile` runs the whole journey over TLS. A certificate
or key that cannot be used is a bad setting, named at once.

The certificates come from a throwaway CA made here with openssl."""

import os
import socket
import ssl
import subprocess

import paho.mqtt.client as mqtt
import pytest
import requests

from conftest import BIN, REPO_ROOT
from devices_helpers import claim_active, get_credentials, make_user


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=iotfin test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
            "server.key", "-out", "server.csr", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem", cwd=d)
    openssl("genpkey", "-algorithm", "RSA", "-out", "other.key", cwd=d)
    return d


def tls_env(pki, http=True, mqtt_too=True):
    env = {"IOTFIN_AUTH_RATE": "10000", "IOTFIN_RETRY_BASE_MS": "100"}
    if http:
        env.update(IOTFIN_TLS_CERT=pki / "server.pem", IOTFIN_TLS_KEY=pki / "server.key")
    if mqtt_too:
        env.update(IOTFIN_MQTT_TLS_CERT=pki / "server.pem", IOTFIN_MQTT_TLS_KEY=pki / "server.key")
    return env


def trust(srv, pki):
    # requests lets REQUESTS_CA_BUNDLE from the environment win over a session's
    # verify; this session trusts our CA only.
    srv.session.trust_env = False
    srv.session.verify = str(pki / "ca.pem")


def test_the_whole_journey_runs_over_tls(start_iotfin, pki):
    srv = start_iotfin(env=tls_env(pki))
    assert srv.ready_line.startswith("iotfin ready http=https://"), srv.ready_line
    assert " mqtt=mqtts://" in srv.ready_line, srv.ready_line
    trust(srv, pki)
    assert srv.get("/healthz").status_code == 200
    # Plain HTTP on the HTTPS port gets no answer a client could take for one.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{srv.http_port}/healthz", timeout=3)
    # A client that does not trust our CA refuses the connection.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(srv.url + "/healthz", timeout=3, verify=True)

    # The demo: registration with KYC (the mock calls back over HTTPS), claim, a device
    # over MQTT with TLS, commands, events to BANK, authorize, dead letters, redrive.
    run = subprocess.run(
        [BIN, "demo", "--url", srv.url, "--admin-token", srv.admin_token, "--cafile",
         str(pki / "ca.pem")],
        capture_output=True, text=True, timeout=90,
        env={**os.environ, "IOTFIN_MOCK_DIR": str(REPO_ROOT / "mocks")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failed" in run.stdout.splitlines()[-1], run.stdout


def test_device_credentials_name_the_tls_broker_and_plain_mqtt_is_refused(start_iotfin, pki):
    srv = start_iotfin(env=tls_env(pki))
    trust(srv, pki)
    user = make_user(srv, "tls")
    creds = get_credentials(srv, user, claim_active(srv, user)["id"])
    assert creds["mqtt_url"] == srv.mqtt_url and creds["mqtt_url"].startswith("mqtts://")

    def connect(tls):
        c = mqtt.Client(client_id=creds["client_id"], protocol=mqtt.MQTTv5)
        c.username_pw_set(creds["client_id"], creds["password"])
        if tls:
            c.tls_set(ca_certs=str(pki / "ca.pem"))
        result = {}
        c.on_connect = lambda cl, u, f, rc, p=None: result.setdefault("rc", rc.value)
        # A plain client on the TLS port is cut off at its first bytes: no need to wait
        # out the CONNACK deadline to know it got none.
        c.on_disconnect = lambda *a: result.setdefault("closed", True)
        try:
            c.connect(srv.mqtt_host, srv.mqtt_port, keepalive=10)
        except (OSError, ssl.SSLError):
            return None
        c.loop_start()
        for _ in range(100):
            if "rc" in result or "closed" in result:
                break
            c._thread and c._thread.join(0.03)
        c.disconnect()
        c.loop_stop()
        return result.get("rc")

    assert connect(tls=True) == 0
    assert connect(tls=False) is None  # no CONNACK on a TLS port for plain MQTT

    # iotfin device, with --cafile, publishes over TLS and gets its ping answered.
    run = subprocess.run(
        [BIN, "device", "--id", creds["client_id"], "--password", creds["password"], "--mqtt",
         creds["mqtt_url"], "--cafile", str(pki / "ca.pem"), "--request", "ping"],
        capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"status":"ok"' in run.stdout.replace(" ", ""), run.stdout


@pytest.mark.parametrize(
    "change, named",
    [
        ({"IOTFIN_TLS_CERT": "/nonexistent/cert.pem"}, "IOTFIN_TLS_CERT"),
        ({"IOTFIN_TLS_KEY": "other.key"}, "IOTFIN_TLS_KEY"),
        ({"IOTFIN_TLS_CERT": "server.key"}, "IOTFIN_TLS_CERT"),
        ({"IOTFIN_TLS_KEY": None}, "IOTFIN_TLS_KEY"),
        ({"IOTFIN_MQTT_TLS_KEY": "other.key"}, "IOTFIN_MQTT_TLS_KEY"),
        ({"IOTFIN_MQTT_TLS_CERT": "ca.key"}, "IOTFIN_MQTT_TLS_CERT"),
    ],
)
def test_an_unusable_certificate_or_key_is_a_bad_setting(run_iotfin, pki, change, named):
    env = tls_env(pki)
    for k, v in change.items():
        env[k] = None if v is None else (v if v.startswith("/") else pki / v)
    rc, out, err, took = run_iotfin("serve", env=env)
    assert rc == 2, (rc, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"iotfin: invalid setting {named}:"), lines[0]
    assert took < 5  # "at once": no start-up work happens before the check
