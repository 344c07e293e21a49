#!/usr/bin/env bash
# Installs redis-server from Debian's packages when it is missing. The tests
# start their own private redis-server processes on free loopback ports;
# they never use a Redis that is already running.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found: installing it from Debian's packages" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "redis-server is missing and this user cannot install it: apt-get install redis-server" >&2
    exit 1
  fi
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
# Debian starts the packaged service; the tests do not need it.
command -v redis-server >/dev/null
