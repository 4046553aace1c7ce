"""CONTRACT section 12, in a real browser (headless Chromium driven by Selenium): an
operator signs in to /console/ with the admin token, sees the overview, watches a
live event arrive, sees a poisoned BANK notification raise an alarm, redrives it
from the dead-letter page and watches the alarm clear; every page also works in a
phone-size window. Screenshots of each page go to the test's tmp folder (and to
docs/console/ with IOTFIN_CONSOLE_DOCS=1, which is how the docs' images are made)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, poll
from devices_helpers import (
    claim_active, device_connect, get_credentials, make_users, mock_requests,
)

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="python3-selenium is not installed (scripts/deps.sh test)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not (os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM)):
    pytest.skip("chromium and chromium-driver are not installed (scripts/deps.sh test)",
                allow_module_level=True)

ENV = {
    "IOTFIN_AUTH_RATE": "10000",
    "IOTFIN_RETRY_BASE_MS": "50",
    "IOTFIN_RETRY_MAX_MS": "200",
    "IOTFIN_ACCESS_LOG": "all",  # every request is logged: the token must be in none
}
DOCS = REPO_ROOT / "docs" / "console"
# The pages docs/console.md shows; the test's tmp folder has every page.
DOC_SHOTS = {"signin", "overview", "overview-alarm", "dead-letters", "alarms", "events",
             "devices", "partners", "phone-overview"}


def chrome(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,800", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-sync",
              f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER) if hasattr(
        webdriver, "ChromeService") else webdriver.chrome.service.Service(CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=opts)


class Console:
    """The browser on the console, with the waits and screenshots the steps use."""

    def __init__(self, driver, srv, out):
        self.d, self.srv, self.out = driver, srv, out
        self.shots = []

    def wait(self, pred, timeout=10, what="condition"):
        return WebDriverWait(self.d, timeout, poll_frequency=0.05).until(
            lambda d: pred(), message=f"timed out waiting for {what}")

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    # The pages re-render their lists as data arrives, so an element found a moment
    # ago may be gone: reads go through one script call each, atomically.
    def visible(self, css):
        return self.d.execute_script(
            "var e = document.querySelector(arguments[0]);"
            "return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;", css)

    def text(self, css):
        return self.d.execute_script(
            "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)

    def press(self, css):
        """Focuses the element and presses Enter, as a keyboard user would."""
        def go():
            try:
                self.find(css).send_keys("\n")
                return True
            except Exception:  # re-rendered under us: find it again
                return False
        self.wait(go, what=f"pressing {css}")

    def page(self, name):
        self.find(f'#nav a[data-page="{name}"]').click()
        self.wait(lambda: self.visible(f"#page-{name}"), what=f"the {name} page")

    def shot(self, name):
        path = self.out / f"{name}.png"
        self.d.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def js(self, script, *args):
        return self.d.execute_script(script, *args)


@pytest.mark.slow
def test_operator_signs_in_watches_redrives_and_sees_it_clear(start_iotfin, tmp_path):
    srv = start_iotfin(env=ENV)
    token = srv.admin_token
    admin = srv.admin_headers()
    user = make_users(srv, 1, tag="console")[0]
    dev = claim_active(srv, user)
    device = device_connect(srv, get_credentials(srv, user, dev["id"]))
    out = tmp_path / "screenshots"
    out.mkdir()
    driver = chrome(tmp_path)
    c = Console(driver, srv, out)
    try:
        # Step 1: /console/ answers fast and asks for the token. The first load in a
        # fresh browser also pays for Chromium's own start-up, so the one measured is
        # a new navigation once the browser runs (as an operator's would be).
        driver.get(srv.url + "/console/")
        c.wait(lambda: c.visible("#signin-form"), what="the sign-in form")
        driver.get(srv.url + "/console/?again")
        c.wait(lambda: c.visible("#signin-form"), what="the sign-in form")
        # The page is three small files. How fast a browser makes them usable depends
        # on the machine's load (a shared 2-core CI box can take 1 s), so the times are
        # reported here; test_81 holds the server to its 300 ms.
        nav = c.js("var n = performance.getEntriesByType('navigation')[0];"
                   "var all = [n].concat(performance.getEntriesByType('resource')"
                   ".filter(r => r.name.indexOf('/console/api/') < 0));"
                   "return {files: all.length, serve_ms: all.reduce((a, r) => a + r.responseEnd"
                   " - r.requestStart, 0), bytes: all.reduce((a, r) => a + r.encodedBodySize, 0),"
                   " usable_ms: n.domContentLoadedEventEnd - n.startTime};")
        assert nav["files"] == 3 and nav["bytes"] < 64 * 1024, nav
        print(f"console page: {nav}")
        c.shot("signin")
        assert c.find("#token").get_attribute("type") == "password"
        assert c.find("label[for=token]").text == "Admin token"

        # Step 2: a wrong token is refused on the page.
        c.find("#token").send_keys("not-the-token")
        c.find("#signin-form button[type=submit]").click()
        c.wait(lambda: "not this instance" in c.text("#signin-error"), what="the refusal")
        assert not driver.get_cookies(), driver.get_cookies()

        # Step 3: the right token signs in; the overview shows queues and devices.
        c.find("#token").send_keys(token)
        c.find("#signin-form button[type=submit]").click()
        c.wait(lambda: c.visible("#page-overview"), what="the overview")
        c.wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#ov-queues tbody tr")) >= 3,
               what="the queue table")
        c.wait(lambda: c.text("#ov-online") == "1", what="one device online")
        c.wait(lambda: "live" == c.text("#live"), what="the live stream")
        assert "bank-forwarder" in c.text("#ov-queues")
        # The session is a cookie script cannot read; nothing is kept in storage.
        cookies = {k["name"]: k for k in driver.get_cookies()}
        assert set(cookies) == {"iotfin_console"}, cookies
        ck = cookies["iotfin_console"]
        assert ck["httpOnly"] and ck["sameSite"] == "Strict" and ck["value"] != token, ck
        assert c.js("return document.cookie") == ""
        assert c.js("return localStorage.length + sessionStorage.length") == 0
        assert c.find("#token").get_attribute("value") == ""

        # Step 4: a live event arrives on the overview without a reload.
        device.publish_event({"id": "console-live-1", "type": "meter.reading", "data": {"kwh": 1}})
        c.wait(lambda: "device.event.received" in c.text("#ov-latest"), what="the live event")
        c.wait(lambda: len(c.js("return document.querySelectorAll('#ov-eps-spark polyline')")) == 1,
               what="the events-per-second chart")
        c.shot("overview")

        # Step 5: BANK refuses one notification for good: dead letter and alarm.
        r = srv.put("/mock/_control/responses", headers=admin,
                    json={"partner": "bank", "method": "POST", "path": "/notifications",
                          "status": 400, "body": {"error": "schema mismatch"}, "times": 1})
        assert r.status_code == 201, r.text
        device.publish_event({"id": "console-poison-1", "type": "meter.reading", "data": {"kwh": 2}})
        c.wait(lambda: c.visible("#nav-alarms") and c.text("#nav-alarms") == "1", 15,
               what="the alarm badge")
        c.wait(lambda: "alarm" in c.find("#card-alarms").get_attribute("class"), what="the alarm card")
        assert "dead-letters:bank-forwarder" in c.text("#ov-alarms-sub")
        c.shot("overview-alarm")

        # Step 6: the alarms page shows it, with its history.
        c.page("alarms")
        c.wait(lambda: "dead-letters:bank-forwarder" in c.text("#al-table"), what="the alarm row")
        assert "alarm" in c.text("#al-table tbody")
        c.wait(lambda: "alarm.raised" in c.text("#al-history"), what="the alarm history")
        c.shot("alarms")

        # Step 7: BANK is fixed; the dead-letter page shows the failing event and its
        # error, and one click redrives it.
        r = srv.delete("/mock/_control/responses", headers=admin)
        assert r.status_code in (200, 204), r.text
        c.page("queues")
        c.wait(lambda: c.visible("#dl") and "bank-forwarder" in c.text("#dl-h"), what="dead letters")
        item = c.text("#dl-list")
        assert "device.event.received" in item and "Last error" in item, item
        assert "400" in item, item
        c.shot("dead-letters")
        c.press("#dl-list button.redrive")  # keyboard, not a mouse click
        c.wait(lambda: c.visible("#dl-empty"), 15, what="the dead letters to empty")
        c.wait(lambda: not c.visible("#nav-alarms"), 15, what="the alarm badge to clear")
        def deliveries():
            return [x for x in mock_requests(srv, "bank") if isinstance(x.get("body"), dict)
                    and x["body"].get("data", {}).get("event_id") == "console-poison-1"]

        # Refused once, delivered after the redrive: the dead-letter list empties when
        # the message is ready again, and its delivery follows a moment later.
        assert poll(lambda: len(deliveries()) >= 2), deliveries()
        c.page("alarms")
        c.wait(lambda: "ok" in c.text("#al-table tbody"), what="the alarm to read ok")
        c.wait(lambda: "alarm.cleared" in c.text("#al-history"), what="alarm.cleared in history")

        # Step 8: the event log filters by type and takes live events, also one that
        # comes while the filtered page is on its way: the page's answer is held in
        # the browser until the event has arrived, so the answer cannot hold it and
        # replacing the list must not wipe it.
        c.page("events")
        c.js("""var f = window.fetch; window.__evRead = false;
                window.fetch = function (u, o) {
                  var p = f(u, o);
                  if (String(u).indexOf('/console/api/events?') < 0) return p;
                  return p.then(function (r) {
                    window.__evRead = true;
                    return new Promise(function (ok) { setTimeout(function () { ok(r); }, 1500); });
                  });
                };""")
        c.find("#ev-type").send_keys("device.event.received")
        c.find("#ev-form button[type=submit]").click()
        c.wait(lambda: c.js("return window.__evRead"), what="the filtered page to be read")
        device.publish_event({"id": "console-live-2", "type": "meter.reading", "data": {"kwh": 3}})
        c.wait(lambda: c.js("return [...document.querySelectorAll('#ev-list li .ty')]"
                            ".every(e => e.textContent === 'device.event.received')"
                            " && document.querySelectorAll('#ev-list li').length >= 3"),
               what="the live, filtered log")
        assert "alarm.raised" not in c.text("#ev-list")
        c.shot("events")

        # Step 9: a device found by serial: status, online, last seen, events, commands.
        c.page("devices")
        c.find("#dev-key").send_keys(dev["serial"] + "\n")
        c.wait(lambda: c.visible("#dev-result"), what="the device")
        facts = c.text("#dev-facts")
        assert dev["id"] in facts and "active" in facts and "yes" in facts, facts
        assert "meter.reading" in c.text("#dev-events")
        c.shot("devices")

        # Step 10: partner calls (the mock's log).
        c.page("partners")
        c.wait(lambda: "BANK POST /notifications" in c.text("#pc-list"), what="partner calls")
        c.shot("partners")

        # Step 11: a phone-size screen: one column, nothing wider than the screen.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        c.page("overview")
        c.wait(lambda: c.text("#ov-online") == "1", what="the overview on a phone")
        assert c.js("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
            c.js("return [document.documentElement.scrollWidth, window.innerWidth]")
        cols = c.js("return getComputedStyle(document.querySelector('.split')).gridTemplateColumns")
        assert len(cols.split()) == 1, cols
        c.shot("phone-overview")
        c.page("queues")
        assert c.js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        c.shot("phone-queues")
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        # Step 12: sign-out ends the session: the page asks for the token again and
        # the old cookie no longer opens anything.
        old = driver.get_cookie("iotfin_console")["value"]
        c.find("#signout").click()
        c.wait(lambda: c.visible("#signin-form"), what="the sign-in form again")
        r = srv.get("/console/api/overview", cookies={"iotfin_console": old})
        assert r.status_code == 401, r.text

        # Step 13: the token was in no URL the browser asked for, and in no log line.
        urls = []
        for entry in driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        assert any("/console/api/stream" in u for u in urls), urls
        assert not [u for u in urls if token in u], "the admin token was in a URL"
        # And no request left for another origin (chrome:// is the browser's own tab).
        assert not [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))
                    and not u.startswith(srv.url + "/")], urls
        time.sleep(0.2)  # the access-log lines of the last requests
        assert srv.get("/healthz").status_code == 200
        log = srv.stderr_text()
        assert "/console/api/session" in log, "IOTFIN_ACCESS_LOG=all logged no console call"
        assert token not in log, "the admin token is in iotfin's log"
    finally:
        device.close()
        driver.quit()
    if os.environ.get("IOTFIN_CONSOLE_DOCS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for p in c.shots:
            if p.stem in DOC_SHOTS:
                shutil.copy(p, DOCS / p.name)
