#!/usr/bin/env bash
# Starts a three-server Skiff control plane on this machine, for trying
# replication and failover: one CA made with `skiff ca create`, shared by
# the three founding servers; each writes the administrator's credentials
# to its DATA_DIR/admin.conf. Stop it with: kill $(cat /tmp/skiff-3/*.pid)
#
#   examples/three-servers.sh
#   export SKIFF_CONFIG=/tmp/skiff-3/s1/admin.conf
#   export SKIFF_SERVER=https://127.0.0.1:7710,https://127.0.0.1:7720,https://127.0.0.1:7730
#   skiff server members
#   kill -9 $(cat /tmp/skiff-3/s1.pid)      # lose one: the others go on
set -euo pipefail
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
dir=${DIR:-/tmp/skiff-3}
mkdir -p "$dir"
[ -f "$dir/ca/ca.key" ] || "$skiff" ca create --dir "$dir/ca"
peers=1=127.0.0.1:7711,2=127.0.0.1:7721,3=127.0.0.1:7731
for i in 1 2 3; do
  "$skiff" server --id $i --data-dir "$dir/s$i" \
    --api 127.0.0.1:77${i}0 --peer-addr 127.0.0.1:77${i}1 --peers $peers \
    --ca-cert "$dir/ca/ca.crt" --ca-key "$dir/ca/ca.key" \
    >>"$dir/s$i.log" 2>&1 &
  echo $! > "$dir/s$i.pid"
done
for _ in $(seq 1 50); do [ -f "$dir/s1/admin.conf" ] && break; sleep 0.2; done
sleep 2
"$skiff" server members --config "$dir/s1/admin.conf" --server https://127.0.0.1:7710
