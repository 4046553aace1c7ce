"""What the fuzz targets (fuzz/) found, replayed end to end against the real server:
a CSV row that is not UTF-8 is reported rather than lost, and the partner mock's file
lookup neither leaves its folder nor costs 2^segments probes for a deep URL."""
import json
import shutil
import socket
import time
from urllib.parse import urlparse

import pytest

from conftest import REPO_ROOT

IMPORT = "/v1/admin/devices/import"


def test_csv_rows_that_are_not_utf8_are_reported_not_lost(iotfin):
    body = b"serial,model\nFZUTF-0001,m\nFZ\xff\xfeUTF1,m\nFZUTF-0002,\xc3\n"
    r = iotfin.post(
        IMPORT, data=body, headers=iotfin.admin_headers(**{"Content-Type": "text/csv"})
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["imported"] == 1, answer
    assert {i["index"]: i["reason"] for i in answer["invalid"]} == {
        1: "not valid UTF-8",
        2: "not valid UTF-8",
    }, answer


@pytest.fixture
def mock_server(start_iotfin, tmp_path):
    """A server whose mock folder has a file planted next to it, outside it."""
    root = tmp_path / "m"
    mocks = root / "mocks"
    shutil.copytree(REPO_ROOT / "mocks" / "kyc", mocks / "kyc")
    secret = {"status": 200, "body": {"secret": "outside the mock folder"}}
    for rel in ("GET.json", "mocks/GET.json"):
        (root / rel).write_text(json.dumps(secret))
    return start_iotfin(env={"IOTFIN_MOCK": "on", "IOTFIN_MOCK_DIR": str(mocks)})


def test_a_deep_mock_url_is_answered_at_once(mock_server):
    # 32 segments: the old lookup tried each segment and "_" at every level, 2^32
    # probes, hours of one thread.
    path = "/mock/kyc" + "/a" * 32
    t0 = time.monotonic()
    r = mock_server.get(path, timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert r.status_code == 404, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")


def raw_request(inst, request_line):
    """Sends one request line as is (HTTP clients refuse odd methods) and returns the
    whole answer as text."""
    u = urlparse(inst.url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(request_line.encode() + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("method", ["../../../GET", "../../GET", "GE/T"])
def test_a_mock_method_never_names_a_file_outside_the_folder(mock_server, method):
    answer = raw_request(mock_server, f"{method} /mock/kyc/verifications HTTP/1.1")
    assert answer.startswith("HTTP/1.1 "), answer
    assert "outside the mock folder" not in answer, answer
    assert not answer.startswith("HTTP/1.1 200"), answer
