#!/usr/bin/env bash
# Users, roles and the audit log, against a running cluster (`make run`
# starts one): makes a viewer and a developer, shows what each may do, then
# revokes the viewer and prints who did what.
#
#   make run
#   SKIFF_CONFIG=.skiff-dev/data/server/admin.conf examples/users-and-audit.sh
#
# The admin's credentials come from SKIFF_CONFIG (or ~/.skiff/config, which
# `skiff dev` writes). Each user gets its own client configuration file.
set -euo pipefail
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
suffix=$$   # user names are never reused, so each run makes new ones

"$skiff" user create "viewer-$suffix" --role viewer --out "$dir/viewer.conf"
"$skiff" user create "dev-$suffix" --role developer --out "$dir/dev.conf"

echo; echo "\$ SKIFF_CONFIG=viewer.conf skiff get jobs"
SKIFF_CONFIG=$dir/viewer.conf "$skiff" get jobs
echo; echo "\$ SKIFF_CONFIG=viewer.conf skiff apply -f examples/hello.yaml   # refused"
SKIFF_CONFIG=$dir/viewer.conf "$skiff" apply -f examples/hello.yaml || true
echo; echo "\$ SKIFF_CONFIG=dev.conf skiff scale hello 1"
SKIFF_CONFIG=$dir/dev.conf "$skiff" scale hello 1 || true
echo; echo "\$ SKIFF_CONFIG=dev.conf skiff node cordon \$(node)   # refused: developers do not run nodes"
node=$("$skiff" get nodes -o json | sed -n 's/.*"name": "\([^"]*\)".*/\1/p' | head -1)
SKIFF_CONFIG=$dir/dev.conf "$skiff" node cordon "$node" || true

echo; echo "\$ skiff user revoke viewer-$suffix"
"$skiff" user revoke "viewer-$suffix"
echo "\$ SKIFF_CONFIG=viewer.conf skiff get jobs   # refused from now on"
SKIFF_CONFIG=$dir/viewer.conf "$skiff" get jobs || true

echo; echo "\$ skiff user ls"; "$skiff" user ls
echo; echo "\$ skiff audit --since 5m"; "$skiff" audit --since 5m
