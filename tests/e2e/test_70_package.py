"""CONTRACT section 11, Install: the Debian package puts iotfin, its broker plugin, the
shipped mocks, the docs, a systemd unit and /etc/default/iotfin in place and creates the
user iotfin; the INSTALLED binary, started the way the unit starts it (its user, its
environment, its settings file, its working directory, no capabilities, no new
privileges), serves the whole journey; removing the package keeps the data, purging
removes the data and the user.

There is no systemd here, so the unit is parsed and run by hand. When strace is there,
the run is traced and what iotfin and its mosquitto did is checked against the unit's
hardening: system calls within SystemCallFilter, sockets within
RestrictAddressFamilies, no writable-and-executable memory (MemoryDenyWriteExecute),
writes only below the StateDirectory and /tmp (ProtectSystem=strict, PrivateTmp).

The test changes the machine (a package, a system user), so it needs root, serialises
itself with a lock file, refuses to touch an iotfin that was there before it, and
purges in a `finally`.
"""

import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import BIN, READY_RE, REPO_ROOT, broker_pids, sqlite_only, wait_until

pytestmark = [pytest.mark.slow,
              sqlite_only("the installed unit runs on its default SQLite file")]

STATE_DIR = Path("/var/lib/iotfin")
UNIT = Path("/lib/systemd/system/iotfin.service")
DEFAULTS = Path("/etc/default/iotfin")
DEPENDS = ["libmicrohttpd12", "libjansson4", "libsqlite3-0", "libpq5", "libcurl4",
           "libsodium23", "libssl3", "libmosquitto1", "mosquitto"]
INSTALLED = {
    "/usr/bin/iotfin": 0o755,
    "/usr/lib/iotfin/mosquitto_iotfin_auth.so": 0o644,
    "/usr/share/iotfin/mocks/kyc/openapi.json": 0o644,
    "/usr/share/iotfin/mocks/kyc/verifications/POST.json": 0o644,
    "/usr/share/doc/iotfin/README.md": 0o644,
    "/usr/share/doc/iotfin/operating.md": 0o644,
    "/usr/share/doc/iotfin/copyright": 0o644,
    str(UNIT): 0o644,
    str(DEFAULTS): 0o600,
}
HARDENING = {
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}


def skip_reason():
    if os.geteuid() != 0:
        return "installing a package needs root"
    for tool in ("dpkg", "dpkg-deb", "setpriv", "cmake"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    probe = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "iotfin"],
                           capture_output=True, text=True)
    if "installed" in probe.stdout or "config-files" in probe.stdout:
        return "an iotfin package is already on this machine; this test will not touch it"
    if user_exists("iotfin"):
        return "a user iotfin already exists (not from this test's package); remove it to run"
    for path in (STATE_DIR, DEFAULTS):
        if path.exists():
            return f"{path} already exists (not from this test's package); this test keeps it"
    return None


def build_dir():
    """The CMake build dir the binary under test came from (make e2e runs a copy in
    build/private/), so the package holds exactly what the rest of the suite tests."""
    for d in Path(BIN).resolve().parents:
        if (d / "CMakeCache.txt").is_file():
            return d
    return REPO_ROOT / "build"


def parse_unit(path):
    """{section: {key: [values]}} of a systemd unit file."""
    sections, cur = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        cur.setdefault(key.strip(), []).append(value.strip())
    return sections


def parse_env_file(path):
    """KEY=VALUE lines the way systemd's EnvironmentFile= reads them (comments, blank
    lines and optional quotes)."""
    env = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def dpkg(*args, check=True):
    # Another dpkg or apt (an unattended upgrade, a `make test` installing packages in
    # another checkout) may hold the lock for a while: wait for it, up to two minutes.
    deadline = time.monotonic() + 120
    while True:
        run = subprocess.run(["dpkg", *args], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if run.returncode == 0 or "lock" not in run.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    if check:
        assert run.returncode == 0, (args, run.stdout, run.stderr)
    return run


def package_state():
    run = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "iotfin"],
                         capture_output=True, text=True)
    return run.stdout.strip()


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def session_iotfin_pid(sid):
    """The pid of /usr/bin/iotfin in session sid (under setpriv, maybe under strace)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            if os.readlink(f"/proc/{entry}/exe") == "/usr/bin/iotfin":
                return int(entry)
        except OSError:
            continue
    return None


def syscall_set(group):
    """The system calls of a systemd-analyze group, groups expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                         text=True, check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif cur is not None and line.strip() and not line.strip().startswith("#"):
            cur.append(line.strip())

    def expand(name, seen):
        if not name.startswith("@"):
            return {name}
        if name in seen:
            return set()
        seen.add(name)
        return set().union(*(expand(m, seen) for m in groups.get(name, [])), set())

    return expand(group, set())


def allowed_syscalls(filters):
    """What a list of SystemCallFilter= lines lets through (allow lists, then ~ deny)."""
    allowed = set()
    for f in filters:
        deny = f.startswith("~")
        names = set().union(*(syscall_set(n) for n in f.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def check_trace(trace_path, service, state_dir):
    """What the traced service did, against the unit's hardening; [] when all is well."""
    lines = trace_path.read_text(errors="replace").splitlines()
    # setpriv's own calls (setresuid, capset...) come before iotfin is executed.
    start = next(i for i, l in enumerate(lines) if 'execve("/usr/bin/iotfin"' in l)
    lines = lines[start:]
    problems = []
    call_re = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[ (]")
    used = {m.group(1) for m in map(call_re.match, lines) if m}
    if shutil.which("systemd-analyze"):
        extra = used - allowed_syscalls(service["SystemCallFilter"])
        if extra:
            problems.append(f"system calls outside SystemCallFilter: {sorted(extra)}")
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", "\n".join(lines)))
    allowed_families = set(service["RestrictAddressFamilies"][0].split())
    if families - allowed_families:
        problems.append(f"socket families outside RestrictAddressFamilies: {families}")
    for l in lines:
        if re.search(r"\bmmap\(.*PROT_WRITE\|PROT_EXEC", l) or re.search(
                r"\bmprotect\(.*PROT_EXEC", l):
            problems.append(f"writable-and-executable memory: {l}")
    write_re = re.compile(r'\b(?:openat|open|mkdir|mkdirat|unlink|unlinkat|rename|renameat2?)'
                          r'\((?:AT_FDCWD, )?"(/[^"]*)"(.*)')
    for l in lines:
        m = write_re.search(l)
        if not m:
            continue
        path, rest = m.group(1), m.group(2)
        if "open" in l.split("(")[0] and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", rest):
            continue
        if rest.rstrip().endswith("EEXIST (File exists)"):
            continue  # mkdir -p of the data dir's parents: EEXIST wins over EROFS
        if not (path.startswith(str(state_dir) + "/") or path == str(state_dir)
                or path.startswith(("/tmp/", "/proc/self/", "/proc/thread-self/", "/dev/"))
                or re.match(r"/proc/\d+/task/\d+/comm", path)):
            problems.append(f"write outside the StateDirectory (ProtectSystem=strict): {l}")
    return problems


@pytest.fixture
def package_lock():
    """One package test at a time on this machine (other checkouts run the suite too)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
    with open(os.path.join(lock_dir, "iotfin-package-test.lock"), "w") as f:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another package test held the lock for 120 s")
                time.sleep(0.1)
        reason = skip_reason()  # again: the holder we waited for may have left something
        if reason:
            pytest.skip(reason)
        yield


def test_package_installs_runs_as_iotfin_and_purges(tmp_path, package_lock):
    proc = None
    try:
        # Step 1: build the package from the tested build dir, as `make deb` does.
        build = subprocess.run(["sh", str(REPO_ROOT / "packaging" / "build-deb.sh"),
                                str(build_dir()), str(tmp_path)],
                               capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, build.stderr
        deb = Path(build.stdout.strip().splitlines()[-1])
        assert re.fullmatch(r"iotfin_[0-9.]+_[a-z0-9]+\.deb", deb.name), deb
        control = tmp_path / "control"
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
        fields = {}
        for line in (control / "control").read_text().splitlines():
            if ":" in line and not line.startswith(" "):
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        depends = [d.strip() for d in fields["Depends"].split(",")]
        for pkg in DEPENDS:
            assert pkg in depends, (pkg, depends)
        assert (control / "conffiles").read_text().split() == [str(DEFAULTS)]
        assert "usr/bin/iotfin" in (control / "md5sums").read_text()
        for script in ("postinst", "prerm", "postrm"):
            assert os.access(control / script, os.X_OK), script

        # Step 2: install it.
        dpkg("-i", str(deb))
        assert package_state() == "install ok installed"
        for path, mode in INSTALLED.items():
            st = os.stat(path)
            assert (st.st_mode & 0o777, st.st_uid) == (mode, 0), path
        assert dpkg("--verify", "iotfin").stdout == ""
        user = pwd.getpwnam("iotfin")
        assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin"), user
        st = os.stat(STATE_DIR)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
            user.pw_uid, user.pw_gid, 0o750), st
        # Every library the binary and the plugin need comes from a declared package.
        if shutil.which("readelf"):
            for obj in ("/usr/bin/iotfin", "/usr/lib/iotfin/mosquitto_iotfin_auth.so"):
                dyn = subprocess.run(["readelf", "-d", obj], capture_output=True,
                                     text=True, check=True).stdout
                for soname in re.findall(r"\(NEEDED\).*\[(.+)\]", dyn):
                    owner = subprocess.run(["dpkg", "-S", f"*/{soname}"], capture_output=True,
                                           text=True).stdout.split(":")[0]
                    assert owner in depends, (obj, soname, owner, depends)

        # Step 3: the unit and the settings file say what the contract says.
        unit = parse_unit(UNIT)
        service = unit["Service"]
        assert service["User"] == ["iotfin"] and service["StateDirectory"] == ["iotfin"]
        assert service["ExecStart"] == ["/usr/bin/iotfin serve"], service["ExecStart"]
        assert "IOTFIN_DATA_DIR=/var/lib/iotfin" in service["Environment"]
        assert service["EnvironmentFile"][0].lstrip("-") == str(DEFAULTS)
        assert service["Restart"] == ["on-failure"] and service["KillMode"] == ["mixed"]
        assert int(service["TimeoutStopSec"][0]) > 10
        assert int(service["LimitNOFILE"][0]) >= 65536
        for key, value in HARDENING.items():
            assert service.get(key) == [value], (key, service.get(key))
        if shutil.which("systemd-analyze"):
            verify = subprocess.run(["systemd-analyze", "verify", str(UNIT)],
                                    capture_output=True, text=True, timeout=30)
            assert verify.returncode == 0, verify.stdout + verify.stderr
        settings = parse_env_file(DEFAULTS)
        assert settings["IOTFIN_MOCK"] == "off", settings
        assert "IOTFIN_LISTEN" in settings and "IOTFIN_MQTT_LISTEN" in settings, settings

        # Step 4: start the installed binary as the unit would: its user without
        # capabilities or new privileges, its environment then its settings file, in its
        # working directory. For this test: free ports, and the mock on with its default
        # dir (what an installed binary finds by itself: /usr/share/iotfin/mocks).
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}
        env.update(v.split("=", 1) for v in service["Environment"])
        env.update(settings)
        env.update({"IOTFIN_LISTEN": "127.0.0.1:0", "IOTFIN_MQTT_LISTEN": "127.0.0.1:0",
                    "IOTFIN_MOCK": "on", "IOTFIN_RETRY_BASE_MS": "100",
                    "IOTFIN_AUTH_RATE": "10000"})
        assert "IOTFIN_MOCK_DIR" not in env
        argv = ["setpriv", "--reuid=iotfin", "--regid=iotfin", "--init-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all",
                *service["ExecStart"][0].split()]
        trace = tmp_path / "strace.out"
        if shutil.which("strace"):
            argv = ["strace", "-f", "-qq", "-o", str(trace), *argv]
        out_path, err_path = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, env=env, cwd=service["WorkingDirectory"][0],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)

        def ready():
            for line in out_path.read_text(errors="replace").splitlines():
                m = READY_RE.fullmatch(line)
                if m:
                    return m
            return proc.poll() is not None and "exited"

        m = wait_until(ready, 15, 0.02)
        assert m and m != "exited", (out_path.read_text(), err_path.read_text())
        url = f"http://{m['http_host']}:{m['http_port']}"
        iotfin_pid = session_iotfin_pid(proc.pid)
        brokers = broker_pids(STATE_DIR)
        assert iotfin_pid and len(brokers) == 1, (iotfin_pid, brokers)
        # iotfin is not root, so its mosquitto runs as the same user.
        assert proc_uid(iotfin_pid) == user.pw_uid and proc_uid(brokers[0]) == user.pw_uid
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert (STATE_DIR / "admin-token").stat().st_uid == user.pw_uid

        # Step 5: the whole journey against it, with the admin token from its data dir.
        demo = subprocess.run(["/usr/bin/iotfin", "demo", "--url", url],
                              env={"PATH": env["PATH"], "IOTFIN_DATA_DIR": str(STATE_DIR)},
                              cwd="/", capture_output=True, text=True, timeout=60)
        assert demo.returncode == 0, demo.stdout + demo.stderr + err_path.read_text()[-4000:]
        assert " 0 failed" in demo.stdout.strip().splitlines()[-1], demo.stdout

        # Step 6: SIGTERM, as systemd sends it with KillMode=mixed: exit 0, broker gone.
        os.kill(iotfin_pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err_path.read_text()[-4000:]
        proc = None
        assert wait_until(lambda: not broker_pids(STATE_DIR), 2), broker_pids(STATE_DIR)
        if trace.exists():
            assert check_trace(trace, service, STATE_DIR) == []

        # Step 7: remove keeps the data, the user and the settings file.
        dpkg("-r", "iotfin")
        assert package_state() == "deinstall ok config-files"
        assert not os.path.exists("/usr/bin/iotfin")
        assert (STATE_DIR / "admin-token").is_file() and (STATE_DIR / "iotfin.db").is_file()
        assert user_exists("iotfin") and DEFAULTS.is_file()

        # Step 8: purge removes the data, the user, the group and the settings.
        dpkg("--purge", "iotfin")
        assert package_state() in ("", "unknown ok not-installed")
        assert not STATE_DIR.exists() and not DEFAULTS.exists()
        assert not user_exists("iotfin") and not group_exists("iotfin")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in broker_pids(STATE_DIR):
            os.kill(pid, signal.SIGKILL)
        if package_state():
            dpkg("--purge", "iotfin", check=False)
        # A failed postrm must not leave the machine changed either.
        if user_exists("iotfin"):
            subprocess.run(["userdel", "iotfin"], capture_output=True)
        if group_exists("iotfin"):
            subprocess.run(["groupdel", "iotfin"], capture_output=True)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
