#!/usr/bin/env bash
# Make sure the local services pyfc talks to are running (RabbitMQ, PostgreSQL);
# start the machine's own if one is down. Idempotent and quick when all are up.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 120); do port_open "$port" && return 0; sleep 0.5; done
  echo "services: $name did not come up on port $port" >&2
  return 1
}

if ! port_open 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ || exit 1
fi
if ! port_open 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432 PostgreSQL || exit 1
fi
# The invoke exchange shards tenants over dispatcher queues by consistent hashing.
# (The enabled-plugins file is read first: the plugins CLI takes seconds to answer.)
plugins_file=${RABBITMQ_ENABLED_PLUGINS_FILE:-/etc/rabbitmq/enabled_plugins}
if ! grep -qs rabbitmq_consistent_hash_exchange "$plugins_file" \
  && ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
  echo "services: enabling the RabbitMQ consistent-hash exchange plugin"
  rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null || {
    echo "services: cannot enable rabbitmq_consistent_hash_exchange" >&2; exit 1; }
fi
# A root worker keeps function instances off the platform's network with nftables
# (worker/netpolicy.py); the nft command is Debian's nftables package.
if [ "$(id -u)" = 0 ] && ! command -v nft >/dev/null; then
  echo "services: installing nftables"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables; } \
    >/dev/null || { echo "services: cannot install nftables" >&2; exit 1; }
fi
# The web console's browser tests (tests/test_console_browser.py) drive Debian's Chromium
# headless through Playwright (the Python package, a dev extra; no browser download).
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then
  echo "services: installing chromium"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
    >/dev/null || { echo "services: cannot install chromium" >&2; exit 1; }
fi
# A root worker runs function instances under per-tenant uids (100000 + n), which must
# reach the interpreter: pyenv installs it under /root (0700). Let others search (o+x,
# not list) the directories in the way, as a system-wide Python install would be.
if [ "$(id -u)" = 0 ] && [ -x .venv/bin/python ]; then
  .venv/bin/python - <<'PY' || exit 1
import os, stat, sys, sysconfig
paths = [os.path.realpath(sys.executable), sys.prefix, *sysconfig.get_paths().values()]
for path in paths:
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        d = os.sep.join(parts[:i]) or os.sep
        mode = os.stat(d).st_mode
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            print(f"services: letting function instance uids search {d} (o+x)")
            os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
PY
fi
exit 0
