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
exit 0
