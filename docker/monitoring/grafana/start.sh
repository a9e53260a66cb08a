#!/bin/sh
# Start Grafana with an admin password that is never the default admin/admin:
# GRAFANA_ADMIN_PASSWORD when set, else a random one made at the container's first start and kept
# in the container (read it with the command printed below). Grafana applies it when it creates
# its database, i.e. on a fresh container: `up -d --force-recreate grafana` after changing it.
set -eu
file=/var/lib/grafana/modelserve-admin-password
if [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
  GF_SECURITY_ADMIN_PASSWORD=$GRAFANA_ADMIN_PASSWORD
else
  if [ ! -s "$file" ]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  fi
  GF_SECURITY_ADMIN_PASSWORD=$(cat "$file")
  echo "modelserve: GRAFANA_ADMIN_PASSWORD is not set; sign in as admin with the password from:" >&2
  echo "  docker compose -f docker/compose.yaml exec grafana cat $file" >&2
fi
unset GRAFANA_ADMIN_PASSWORD
export GF_SECURITY_ADMIN_PASSWORD
exec /run.sh "$@"
