#!/usr/bin/env bash
# Make sure a NATS server with JetStream answers on 127.0.0.1:4222 (the outbound relay's tests
# and benchmark publish there). Installs Debian's nats-server and starts it in the background
# when it is missing. Only for development and CI machines.
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

if listening; then
  exit 0
fi

if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  echo "nats-server is not installed: installing Debian's nats-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
fi
server=$(command -v nats-server || echo /usr/sbin/nats-server)
store=/var/lib/nats-server
mkdir -p "$store"
start-stop-daemon --start --oknodo --background --exec "$server" -- \
  -a 127.0.0.1 -p 4222 -js -sd "$store" -l /var/log/nats-server.log
for _ in $(seq 1 30); do
  listening && exit 0
  sleep 0.5
done
echo "NATS still not listening on 127.0.0.1:4222 (see /var/log/nats-server.log)" >&2
exit 1
