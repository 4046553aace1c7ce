"""CONTRACT section 4, POST /v1/admin/devices/import: JSON and CSV manifests, counts
of imported and duplicate serials, bad rows reported by index with a reason, and
replays that change nothing."""

import pytest

from conftest import assert_problem

IMPORT = "/v1/admin/devices/import"


@pytest.fixture(scope="module")
def server(shared_iotfin):
    return shared_iotfin


def import_csv(server, text, content_type="text/csv"):
    return server.post(
        IMPORT,
        data=text.encode() if isinstance(text, str) else text,
        headers=server.admin_headers(**{"Content-Type": content_type}),
    )


def answer(r):
    """The 200 answer, with its shape checked; invalid as {index: reason}."""
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"imported", "duplicates", "invalid"}, body
    invalid = {}
    for item in body["invalid"]:
        assert set(item) >= {"index", "reason"}, item
        assert isinstance(item["index"], int), item
        assert isinstance(item["reason"], str) and item["reason"], item
        assert item["index"] not in invalid, body
        invalid[item["index"]] = item["reason"]
    return body["imported"], body["duplicates"], invalid


def test_json_import_counts_and_reports_bad_items(server):
    devices = [
        {"serial": "JSON-0001", "model": "meter-1"},  # 0 ok
        {"serial": "ABC"},  # 1 too short (3)
        {"serial": "BAD_CHAR-01"},  # 2 underscore
        {"serial": "A" * 65},  # 3 too long
        {"model": "meter-1"},  # 4 no serial
        "JSON-0002",  # 5 not an object
        {"serial": "A" * 64},  # 6 ok, longest allowed
        {"serial": "ab-9"},  # 7 ok, shortest allowed
        {"serial": 12345678},  # 8 serial of the wrong type
        {"serial": "SPACE 0001"},  # 9 space
        {"serial": "JSON-0003"},  # 10 ok, model optional
        None,  # 11 not an object
        {"serial": "ÄÖÜ-0001"},  # 12 non-ASCII letters
    ]
    # Step 1: first import.
    imported, duplicates, invalid = answer(server.import_devices(devices))
    assert (imported, duplicates) == (4, 0), invalid
    assert sorted(invalid) == [1, 2, 3, 4, 5, 8, 9, 11, 12], invalid
    # Step 2: replay: nothing new, the same rows refused for the same reasons.
    imported2, duplicates2, invalid2 = answer(server.import_devices(devices))
    assert (imported2, duplicates2) == (0, 4)
    assert invalid2 == invalid


def test_empty_list_is_a_no_op(server):
    assert answer(server.import_devices([])) == (0, 0, {})


def test_duplicate_within_one_request_counts_once(server):
    imported, duplicates, invalid = answer(
        server.import_devices([{"serial": "DUP-0001"}, {"serial": "DUP-0001", "model": "x"}])
    )
    assert (imported, duplicates, invalid) == (1, 1, {})


def test_item_with_an_unknown_member_is_reported(server):
    imported, duplicates, invalid = answer(
        server.import_devices([{"serial": "EXTRA-0001", "colour": "red"}, {"serial": "EXTRA-0002"}])
    )
    assert (imported, duplicates) == (1, 0)
    assert list(invalid) == [0], invalid


def test_csv_import_with_header(server):
    csv = (
        "serial,model\r\n"
        "CSV-0001,meter-2\r\n"  # 0 ok
        "CSV-0002,\r\n"  # 1 ok, empty model
        "XY\r\n"  # 2 too short
        "CSV-0003\r\n"  # 3 ok, model column left out
        "bad serial,meter\r\n"  # 4 space
    )
    # Step 1: import.
    imported, duplicates, invalid = answer(import_csv(server, csv))
    assert (imported, duplicates) == (3, 0), invalid
    assert sorted(invalid) == [2, 4], invalid
    # Step 2: replay as CSV: all duplicates.
    assert answer(import_csv(server, csv)) == (0, 3, invalid)
    # Step 3: the same serials as JSON are duplicates too: one namespace.
    assert answer(server.import_devices([{"serial": "CSV-0001"}])) == (0, 1, {})


def test_csv_with_charset_parameter_and_plain_newlines(server):
    r = import_csv(server, "serial,model\nCSVN-0001,m\nCSVN-0002,m\n", "text/csv; charset=utf-8")
    assert answer(r) == (2, 0, {})


@pytest.mark.parametrize(
    "text",
    ["CSVH-0001,meter\nCSVH-0002,meter\n", "model,serial\nmeter,CSVH-0003\n", "", "\n\n"],
    ids=["no-header", "wrong-header", "empty", "blank-lines"],
)
def test_csv_without_the_header_is_400(server, text):
    r = import_csv(server, text)
    body = assert_problem(r, 400, "validation_failed")
    assert body.get("errors") and all({"field", "message"} <= set(e) for e in body["errors"]), body
    # Nothing was imported by the refused request.
    if "CSVH-0001" in text:
        assert answer(server.import_devices([{"serial": "CSVH-0001"}])) == (1, 0, {})


def test_import_needs_the_admin_token(server):
    r = server.post(IMPORT, json={"devices": [{"serial": "NOAUTH-0001"}]})
    assert_problem(r, 401, "unauthenticated")
    # The refused request imported nothing.
    assert answer(server.import_devices([{"serial": "NOAUTH-0001"}])) == (1, 0, {})


def test_large_manifest_in_one_request(server):
    devices = [{"serial": f"BULK-{i:05d}", "model": "bulk"} for i in range(1000)]
    assert answer(server.import_devices(devices)) == (1000, 0, {})
    assert answer(server.import_devices(devices)) == (0, 1000, {})
