"""CONTRACT sections 1 and 8, mail: without IOTFIN_SMTP_URL each mail is an .eml file
under <data_dir>/mail/; with it, mail goes over SMTP (here to an aiosmtpd sink the
test runs on 127.0.0.1) from IOTFIN_MAIL_FROM. A dead letter mails IOTFIN_OPS_EMAIL
once; a transient SMTP refusal is retried without a duplicate mail; a permanent one
dead-letters the mail message instead of retrying forever.

KYC is the partner mock (shipped files) with a runtime override: approve at once,
or answer 500."""

import asyncio
import email
import email.policy
import email.utils
import json
import re
import socket
import threading
import time
import uuid

import pytest
from aiosmtpd.controller import Controller

from conftest import REPO_ROOT, poll, bearer

SHIPPED_MOCKS = REPO_ROOT / "mocks"
STEP = 0.05
CAP = 15.0
MAIL_FROM = "noreply@iotfin-mail.test"
OPS = "ops-team@iotfin-mail.test"
PASSWORD = "correct-horse-battery"
MSGID_RE = re.compile(r"^<[^<>\s@]+@[^<>\s]+>$")


# ---- the SMTP sink ----------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1. `refuse(stage, address, attempt)` (stage
    "rcpt" or "data", attempt counted per stage and address from 1) may return an
    SMTP reply such as "451 4.3.0 try later" to refuse; None accepts.
    `data_delay(address, n)` (n: the sink's n-th DATA, counted on arrival) may
    return seconds to wait before answering DATA (a slow server). Every attempt is logged; `messages` holds what was accepted."""

    def __init__(self):
        self.lock = threading.Lock()
        self.refuse = None
        self.data_delay = None  # callable(address, n-th DATA of this sink) -> seconds
        self.data_started = 0
        self.attempts = []  # (stage, address)
        self.messages = []  # (mail_from, [rcpt], email.message.EmailMessage)
        self.port = None
        last = None
        for _ in range(5):
            port = free_port()
            try:
                self.controller = Controller(self, hostname="127.0.0.1", port=port)
                self.controller.start()
                self.port = port
                break
            except Exception as e:  # the port was taken in between: try another
                last = e
        if self.port is None:
            raise RuntimeError(f"could not start the SMTP sink: {last!r}")

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self):
        self.controller.stop()

    def _refusal(self, stage, address):
        with self.lock:
            self.attempts.append((stage, address))
            n = sum(1 for a in self.attempts if a == (stage, address))
            policy = self.refuse
        return policy(stage, address, n) if policy else None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        refusal = self._refusal("rcpt", address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_started += 1
            n = self.data_started  # counted on arrival, before any delay
        if self.data_delay and envelope.rcpt_tos:
            wait = max((self.data_delay(r, n) or 0) for r in envelope.rcpt_tos)
            if wait:
                await asyncio.sleep(wait)
        refusal = None
        for rcpt in envelope.rcpt_tos:
            refusal = refusal or self._refusal("data", rcpt)
        if refusal:
            return refusal
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"

    def to(self, address):
        with self.lock:
            return [m for m in self.messages if address.lower() in [r.lower() for r in m[1]]]

    def count(self, stage, address):
        with self.lock:
            return sum(1 for s, a in self.attempts if s == stage and a.lower() == address.lower())


@pytest.fixture
def sink():
    s = SmtpSink()
    yield s
    s.stop()


# ---- helpers ---------------------------------------------------------------------------






def unique_email(tag):
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


def mail_env(**extra):
    env = {
        "IOTFIN_MOCK": "on",
        "IOTFIN_MOCK_DIR": str(SHIPPED_MOCKS),
        "IOTFIN_AUTH_RATE": "10000",
        "IOTFIN_MAIL_FROM": MAIL_FROM,
        "IOTFIN_OPS_EMAIL": OPS,
        "IOTFIN_RETRY_BASE_MS": "20",
        "IOTFIN_RETRY_MAX_MS": "50",
    }
    env.update({k: (None if v is None else str(v)) for k, v in extra.items()})
    return env


def kyc_answers(srv, status, body=None):
    """Overrides the mock's KYC POST /verifications."""
    spec = {"partner": "kyc", "method": "POST", "path": "/verifications", "status": status}
    if body is not None:
        spec["body"] = body
    r = srv.put("/mock/_control/responses", json=spec, headers=srv.admin_headers())
    assert r.status_code == 201, r.text


def kyc_approves_at_once(srv):
    kyc_answers(srv, 201, {"id": "{{uuid}}", "status": "approved"})


def register(srv, addr, name="Mia Mail"):
    r = srv.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    r = srv.post(
        "/v1/registrations",
        json={"type": "local", "email": addr, "password": PASSWORD, "name": name},
        headers=bearer(r.json()["access_token"]),
    )
    assert r.status_code == 202, r.text
    out = r.json()
    return out["registration"], out["access_token"]


def registration_status(srv, reg, token):
    r = srv.get(f"/v1/registrations/{reg['id']}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["status"]


def wait_approved(srv, reg, token):
    assert poll(lambda: registration_status(srv, reg, token) == "approved"), registration_status(
        srv, reg, token
    )


def events(srv, **q):
    out, cursor = [], None
    for _ in range(200):
        params = dict(q, limit=200)
        if cursor:
            params["cursor"] = cursor
        r = srv.get("/v1/admin/events", params=params, headers=srv.admin_headers())
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return out
    pytest.fail("event log pagination does not end")


def mail_sent_events(srv, addr):
    return [e for e in events(srv, type="mail.sent") if addr.lower() in json.dumps(e).lower()]


def dead_letters(srv, queue):
    r = srv.get(f"/v1/admin/queues/{queue}/dead-letters", headers=srv.admin_headers())
    assert r.status_code == 200, r.text
    return r.json()["items"]


def eml_files(srv):
    d = srv.data_dir / "mail"
    return sorted(d.glob("*.eml")) if d.is_dir() else []


def eml_to(srv, addr):
    out = []
    for p in eml_files(srv):
        msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        tos = [a.lower() for _, a in email.utils.getaddresses([str(msg.get("To", ""))])]
        if addr.lower() in tos:
            out.append(msg)
    return out


def addresses(msg, name):
    return [a.lower() for _, a in email.utils.getaddresses([str(msg.get(name, ""))])]


def check_headers(msg, to_addr):
    assert addresses(msg, "From") == [MAIL_FROM], msg.get("From")
    assert addresses(msg, "To") == [to_addr.lower()], msg.get("To")
    assert str(msg.get("Subject", "")).strip(), dict(msg.items())
    assert MSGID_RE.match(str(msg.get("Message-ID", "")).strip()), msg.get("Message-ID")
    assert email.utils.parsedate_to_datetime(str(msg.get("Date"))), msg.get("Date")


def body_text(msg):
    part = msg.get_body(preferencelist=("plain", "html")) or msg
    return part.get_content()


# ---- the two transports ----------------------------------------------------------------


def test_without_smtp_url_the_approval_mail_is_an_eml_file(start_iotfin):
    srv = start_iotfin(env=mail_env(IOTFIN_SMTP_URL=None))
    kyc_approves_at_once(srv)
    addr = unique_email("eml")
    reg, token = register(srv, addr, name="Emil Eml")
    wait_approved(srv, reg, token)

    mails = poll(lambda: eml_to(srv, addr))
    assert mails, [p.name for p in eml_files(srv)]
    msg = mails[0]
    check_headers(msg, addr)
    assert "Emil Eml" in body_text(msg) or "Emil Eml" in str(msg["Subject"]), msg.as_string()

    ev = poll(lambda: mail_sent_events(srv, addr))
    assert len(ev) == 1, ev
    assert ev[0]["type"] == "mail.sent" and ev[0]["subject"], ev

    # One mail per causing event.
    time.sleep(0.5)
    assert len(eml_to(srv, addr)) == 1, [p.name for p in eml_files(srv)]
    assert len(mail_sent_events(srv, addr)) == 1


def test_with_smtp_url_the_approval_mail_goes_to_the_smtp_server(start_iotfin, sink):
    srv = start_iotfin(env=mail_env(IOTFIN_SMTP_URL=sink.url))
    kyc_approves_at_once(srv)
    addr = unique_email("smtp")
    reg, token = register(srv, addr, name="Sam Smtp")
    wait_approved(srv, reg, token)

    got = poll(lambda: sink.to(addr))
    assert got, (sink.attempts, srv.stderr_lines()[-10:])
    mail_from, rcpts, msg = got[0]
    assert mail_from == MAIL_FROM, mail_from
    assert [r.lower() for r in rcpts] == [addr.lower()], rcpts
    check_headers(msg, addr)
    assert "Sam Smtp" in body_text(msg) or "Sam Smtp" in str(msg["Subject"]), msg.as_string()

    ev = poll(lambda: mail_sent_events(srv, addr))
    assert len(ev) == 1, ev

    time.sleep(0.5)
    assert len(sink.to(addr)) == 1, sink.messages
    assert eml_files(srv) == [], "an .eml file was written although IOTFIN_SMTP_URL is set"


# ---- alarm mail ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["eml", "smtp"])
def test_a_dead_letter_mails_ops_exactly_once(start_iotfin, sink, transport):
    srv = start_iotfin(
        env=mail_env(IOTFIN_MAX_RECEIVES=2, IOTFIN_SMTP_URL=sink.url if transport == "smtp" else None)
    )
    kyc_answers(srv, 500, {"error": "kyc is down"})
    addr = unique_email("dl")
    reg, token = register(srv, addr)

    # Step 1: two receives, two 500s from the mock, one dead letter.
    dls = poll(lambda: dead_letters(srv, "registration-kyc"))
    assert len(dls) == 1, dls
    assert reg["id"] in json.dumps(dls[0]), dls
    posts = [c for c in srv.get("/mock/_control/requests", params={"partner": "kyc"},
                                    headers=srv.admin_headers()).json()["items"]
             if c["method"] == "POST"]
    assert len(posts) == 2, posts

    # Step 2: exactly one alarm mail to ops.
    def ops_mails():
        if transport == "smtp":
            return [m for _, _, m in sink.to(OPS)]
        return eml_to(srv, OPS)

    mails = poll(ops_mails)
    assert mails, (sink.attempts, [p.name for p in eml_files(srv)])
    time.sleep(0.6)
    mails = ops_mails()
    assert len(mails) == 1, [str(m["Subject"]) for m in mails]
    msg = mails[0]
    check_headers(msg, OPS)
    assert "registration-kyc" in str(msg["Subject"]) + body_text(msg), msg.as_string()
    if transport == "smtp":
        assert sink.to(OPS)[0][0] == MAIL_FROM
        assert eml_files(srv) == []
    # The user got nothing: the registration is still pending.
    assert registration_status(srv, reg, token) == "pending"
    assert (sink.to(addr) if transport == "smtp" else eml_to(srv, addr)) == []
    assert len(mail_sent_events(srv, OPS)) == 1


# ---- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["rcpt", "data"])
def test_transient_smtp_refusal_is_retried_without_duplicate_mail(start_iotfin, sink, stage):
    srv = start_iotfin(env=mail_env(IOTFIN_SMTP_URL=sink.url))
    addr = unique_email(f"retry-{stage}")

    # The sink refuses the user's mail twice with a transient 451, then accepts it.
    def refuse(st, address, n):
        if st == stage and address.lower() == addr.lower() and n <= 2:
            return "451 4.3.0 temporarily unavailable, try again later"
        return None

    sink.refuse = refuse
    kyc_approves_at_once(srv)
    reg, token = register(srv, addr)
    wait_approved(srv, reg, token)

    got = poll(lambda: sink.to(addr))
    assert got, (sink.attempts, srv.stderr_lines()[-10:])
    assert sink.count(stage, addr) >= 3, sink.attempts  # refused twice, then accepted
    check_headers(got[0][2], addr)

    # Exactly one mail and one mail.sent, also a little later.
    time.sleep(0.6)
    assert len(sink.to(addr)) == 1, [(f, r, str(m["Message-ID"])) for f, r, m in sink.messages]
    assert len(mail_sent_events(srv, addr)) == 1
    assert dead_letters(srv, "registration-mail") == []


def test_permanent_smtp_refusal_dead_letters_the_mail_message(start_iotfin, sink):
    max_receives = 5
    srv = start_iotfin(env=mail_env(IOTFIN_SMTP_URL=sink.url, IOTFIN_MAX_RECEIVES=max_receives))
    addr = unique_email("perm")

    def refuse(st, address, n):
        if st == "rcpt" and address.lower() == addr.lower():
            return "550 5.1.1 no such user here"
        return None

    sink.refuse = refuse
    kyc_approves_at_once(srv)
    reg, token = register(srv, addr)
    wait_approved(srv, reg, token)

    # Step 1: the registration-mail message is dead-lettered.
    dls = poll(lambda: dead_letters(srv, "registration-mail"))
    assert len(dls) == 1, dls
    dl = dls[0]
    assert set(dl) >= {"id", "event", "receive_count", "last_error", "dead_at"}, dl
    assert dl["event"]["type"] == "user.registration.approved", dl
    assert reg["id"] in json.dumps(dl["event"]), dl
    assert "550" in dl["last_error"], dl

    # Step 2: no more attempts after that, no mail delivered, no mail.sent.
    attempts = sink.count("rcpt", addr)
    assert 1 <= attempts <= max_receives, sink.attempts
    time.sleep(0.6)
    assert sink.count("rcpt", addr) == attempts, sink.attempts
    assert sink.to(addr) == []
    assert mail_sent_events(srv, addr) == []

    # Step 3: ops hears of it by mail.
    ops = poll(lambda: sink.to(OPS))
    assert len(ops) == 1, ops
    assert "registration-mail" in str(ops[0][2]["Subject"]) + body_text(ops[0][2]), ops[0][2].as_string()


@pytest.mark.slow
def test_slow_smtp_outliving_the_visibility_timeout_still_sends_once(start_iotfin, sink):
    """The first DATA takes longer than IOTFIN_VISIBILITY_TIMEOUT_MS, so the unacked
    registration-mail message reappears (CONTRACT 1) while the first send is still in
    flight. "Each mail is sent once per causing event, whatever the retries" (CONTRACT 8):
    the user gets one mail and there is one mail.sent event."""
    srv = start_iotfin(env=mail_env(IOTFIN_SMTP_URL=sink.url, IOTFIN_VISIBILITY_TIMEOUT_MS=400))
    addr = unique_email("slow")
    sink.data_delay = lambda address, n: 1.5 if address.lower() == addr.lower() and n == 1 else 0
    kyc_approves_at_once(srv)
    reg, token = register(srv, addr)
    wait_approved(srv, reg, token)

    assert poll(lambda: sink.to(addr)), (sink.attempts, srv.stderr_lines()[-10:])
    time.sleep(2.5)  # the slow first send has ended, any redelivery has run
    got = sink.to(addr)
    assert len(got) == 1, [str(m["Message-ID"]) for _, _, m in got]
    assert len(mail_sent_events(srv, addr)) == 1, mail_sent_events(srv, addr)
