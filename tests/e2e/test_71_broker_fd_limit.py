"""The managed broker gets the hard open-file limit (issue #14, connected devices):
every device connection is a descriptor in the broker, and with the usual soft limit
(1024, systemd's default too) it refused devices from about a thousand on, while the
hard limit allowed ten thousand and more (found by `make bench` step connected)."""
import resource

from conftest import wait_until


def open_files_limits(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


def test_managed_broker_gets_the_hard_open_file_limit(start_iotfin):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    assert hard == resource.RLIM_INFINITY or hard > low, "needs a hard limit above 256"
    # iotfin inherits a low soft limit, as under a service manager's defaults.
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        srv = start_iotfin()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert open_files_limits(srv.proc.pid)[0] == str(low)
    assert wait_until(lambda: srv.broker_pids(), 5), "no managed broker"
    broker = sorted(srv.broker_pids())[0]
    b_soft, b_hard = open_files_limits(broker)
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert (b_soft, b_hard) == (want, want)
