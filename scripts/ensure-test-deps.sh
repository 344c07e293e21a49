#!/usr/bin/env bash
# Installs what the test suite needs from Debian's packages when it is
# missing: redis-server and redis-cli (the tests start their own private
# servers, a TLS one and a 3-node cluster on free loopback ports; they never
# use a Redis that is already running), chromium (the web UI test), python3
# (its email package reads the messages sendq delivers, as a second strict
# parser),
# python3-dkim (dkimpy, the second DKIM verifier), spamassassin (its local
# rules judge sendq's messages) and prometheus (for promtool: the alert
# rules' tests and the /metrics lint; about 19 MB to download, nothing is
# started), and postfix (the asynchronous-bounce test runs a private
# instance from its own config and queue directories on loopback ports;
# the package is installed with "No configuration" so no system mail
# service is set up or started). All of them together take about half a
# minute to install.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v dkimverify >/dev/null 2>&1 || need+=(python3-dkim)
command -v spamassassin >/dev/null 2>&1 || need+=(spamassassin)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/sbin/postfix ] || need+=(postfix)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing from Debian's packages: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "missing ${need[*]} and this user cannot install them: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
$SUDO apt-get update -qq
if printf '%s\n' "${need[@]}" | grep -qx postfix; then
  # No main.cf, no mail name, no service: the tests bring their own.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for c in redis-server redis-cli chromium python3 dkimverify spamassassin promtool; do
  command -v "$c" >/dev/null || { echo "ensure-test-deps: $c still missing" >&2; exit 1; }
done
[ -x /usr/sbin/postfix ] || { echo "ensure-test-deps: postfix still missing" >&2; exit 1; }
