#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 with a `test` database that the
# `postgres` role reaches without a password (what the test suite expects). Installs and starts
# Debian's PostgreSQL when it is missing. Only for development and CI machines.
set -euo pipefail

url_ok() { psql "postgresql://postgres@127.0.0.1:5432/test" -Atqc 'select 1' >/dev/null 2>&1; }

if command -v psql >/dev/null && url_ok; then
  exit 0
fi

if ! command -v pg_ctlcluster >/dev/null; then
  echo "PostgreSQL is not installed: installing Debian's postgresql package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done

if ! url_ok; then
  # A fresh Debian cluster asks for passwords over TCP: trust loopback, as a dev machine does.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q 'crm-ledger test access' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust # crm-ledger test access' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
  su postgres -c "psql -Atqc \"select 1 from pg_database where datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test"
fi

url_ok || { echo "PostgreSQL still not reachable at 127.0.0.1:5432/test" >&2; exit 1; }
