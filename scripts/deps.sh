#!/bin/sh
# Installs the Debian packages iotfin needs to build, run and test, but only the
# ones that are missing, so `make run` and `make test` stay fast on a ready machine.
set -eu

PKGS="cmake make gcc pkg-config clang-format \
libmicrohttpd-dev libjansson-dev libsqlite3-dev libpq-dev libcurl4-openssl-dev \
libsodium-dev libssl-dev libmosquitto-dev mosquitto mosquitto-dev libcmocka-dev"
# strace: tests/e2e/test_70_package.py checks the systemd unit's hardening with it.
# chromium, chromium-driver, python3-selenium: tests/e2e/test_80_console.py drives the
# operator console in a real headless browser.
# postgresql-15: `make e2e-pg` runs a throwaway server from it (scripts/pg.sh); the
# package's own cluster is stopped below, nothing of it is used.
if [ "${1:-}" = "test" ]; then
  PKGS="$PKGS python3-pytest python3-requests python3-paho-mqtt python3-aiosmtpd \
python3-jwt python3-cryptography python3-pytest-xdist strace clang libclang-rt-14-dev \
chromium chromium-driver python3-selenium postgresql-15"
fi
# python3-matplotlib: `make bench` draws its figures as SVG charts (bench/charts.py);
# valgrind: bench/instructions_per_request.py counts instructions per request.
# wrk, nginx and nodejs are installed by bench/http_bench.py itself, when it runs.
if [ "${1:-}" = "bench" ]; then
  PKGS="$PKGS python3-matplotlib valgrind"
fi

missing=""
for p in $PKGS; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing" >&2
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing packages and not root; run: sudo apt-get install$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt (an unattended upgrade, a second `make` at the same time) may hold the
# lock for a while: wait for it rather than fail.
apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null || true
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends $missing >/dev/null
# Debian's mosquitto package may start a system broker on 1883; iotfin manages its own.
if command -v service >/dev/null 2>&1; then service mosquitto stop >/dev/null 2>&1 || true; fi
# Likewise Debian's postgresql package starts a cluster on 5432; the tests start their own.
case "$missing" in *postgresql*)
  if command -v service >/dev/null 2>&1; then service postgresql stop >/dev/null 2>&1 || true; fi ;;
esac
