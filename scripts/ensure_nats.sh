#!/usr/bin/env bash
# Make sure a NATS server with JetStream answers on 127.0.0.1:4222 (what tests/outbound
# expects). Installs Debian's nats-server when it is missing and starts it in the background
# with its store under ./data/nats. Only for development and CI machines.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

if port_open; then
  exit 0
fi

if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "nats-server is not installed: installing Debian's nats-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
fi
server=$(command -v nats-server || echo /usr/sbin/nats-server)
mkdir -p data/nats
nohup "$server" -js -a 127.0.0.1 -p 4222 -sd "$PWD/data/nats" >data/nats/server.log 2>&1 &
for _ in $(seq 1 50); do
  port_open && exit 0
  sleep 0.2
done
echo "NATS still not reachable at 127.0.0.1:4222 (see data/nats/server.log)" >&2
exit 1
