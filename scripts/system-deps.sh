#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium (through Playwright; never a downloaded browser),
# ClamAV's daemon (malware scanning, with a test signature the tests write), dcmtk (a second DICOM client), and
# PostgreSQL and Redis servers for the TLS tests.
# Installs what is missing when run as root; otherwise says what to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v npm >/dev/null 2>&1 || missing+=(npm)  # fetches the OHIF Viewer build once (tests/interop/)
# TLS on loopback (tests/integration/test_transit_tls.py): a PostgreSQL and a Redis built with TLS (the embedded
# wheels' servers are not).
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ]; then
  echo "Installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "Missing system packages: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
