#!/usr/bin/env bash
# Starts a three-server Skiff control plane on this machine, for trying
# replication and failover. Stop it with: kill $(cat /tmp/skiff-3/*.pid)
#
#   examples/three-servers.sh
#   export SKIFF_SERVER=http://127.0.0.1:7710,http://127.0.0.1:7720,http://127.0.0.1:7730
#   skiff server members
#   kill -9 $(cat /tmp/skiff-3/s1.pid)      # lose one: the others go on
set -euo pipefail
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
dir=${DIR:-/tmp/skiff-3}
mkdir -p "$dir"
peers=1=127.0.0.1:7711,2=127.0.0.1:7721,3=127.0.0.1:7731
for i in 1 2 3; do
  "$skiff" server --id $i --data-dir "$dir/s$i" \
    --api 127.0.0.1:77${i}0 --peer-addr 127.0.0.1:77${i}1 --peers $peers \
    >>"$dir/s$i.log" 2>&1 &
  echo $! > "$dir/s$i.pid"
done
sleep 2
"$skiff" server members --server http://127.0.0.1:7710
