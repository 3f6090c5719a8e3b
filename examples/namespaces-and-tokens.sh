#!/usr/bin/env bash
# Namespaces and bearer tokens, against a running `skiff dev` (`make run`
# starts one): describes namespace `ml` from examples/namespace.yaml, makes a
# developer granted it, runs examples/hello.yaml there as that developer,
# shows the developer refused outside its grant, makes a bearer token that
# acts as the developer and uses it, then removes all of it again.
#
#   make run
#   examples/namespaces-and-tokens.sh
#   # or: SKIFF_CONFIG=.skiff-dev/data/server/admin.conf examples/namespaces-and-tokens.sh
#
# The admin's credentials come from SKIFF_CONFIG (or ~/.skiff/config, which
# `skiff dev` writes). Run it against a throwaway cluster: it describes the
# namespace `ml` (replacing an `ml` you had) and deletes it at the end.
# docs/namespaces.md explains what each step shows.
set -euo pipefail
# examples/hello.yaml names its image relative to the repository, which
# `skiff dev` (started there by `make run`) allows as an image root.
cd "$(dirname "$0")/.."
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
# Every command below says where it acts; a namespace or token in the
# environment would change that (SKIFF_NAMESPACE is also what
# `skiff user create` grants).
unset SKIFF_NAMESPACE SKIFF_TOKEN
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
dev="dev-$$"   # user names are never reused, so each run makes a new one

echo "\$ skiff namespace apply -f examples/namespace.yaml"
"$skiff" namespace apply -f examples/namespace.yaml

echo; echo "\$ skiff user create $dev --role developer --namespace ml --out dev.conf"
"$skiff" user create "$dev" --role developer --namespace ml --out "$dir/dev.conf"

echo; echo "\$ SKIFF_CONFIG=dev.conf skiff apply -n ml -f examples/hello.yaml"
SKIFF_CONFIG=$dir/dev.conf "$skiff" apply -n ml -f examples/hello.yaml
for _ in $(seq 1 150); do
  running=$(SKIFF_CONFIG=$dir/dev.conf "$skiff" get allocs -n ml --job hello --status running -o json |
    grep -c '"id"' || true)
  [ "${running:-0}" -ge 2 ] && break
  sleep 0.2
done
echo; echo "\$ SKIFF_CONFIG=dev.conf skiff get allocs -n ml   # their job is ml/hello"
SKIFF_CONFIG=$dir/dev.conf "$skiff" get allocs -n ml

echo; echo "\$ skiff namespace ls"
"$skiff" namespace ls

echo; echo "\$ SKIFF_CONFIG=dev.conf skiff apply -f examples/hello.yaml   # refused: default is not granted"
SKIFF_CONFIG=$dir/dev.conf "$skiff" apply -f examples/hello.yaml || true

# A bearer token for scripts that hold no certificate. Its word is printed
# once, on stdout; stderr says its id and until when it works.
echo; echo "\$ skiff user token $dev --ttl 1h --out dev-token.conf"
token=$("$skiff" user token "$dev" --ttl 1h --out "$dir/dev-token.conf")
id=$(echo "$token" | cut -d. -f2)
shown="skiffu1.$id.…"   # the secret stays out of this script's output

echo; echo "\$ SKIFF_TOKEN=$shown skiff get jobs -n ml   # the admin's file still gives the CA"
SKIFF_TOKEN=$token "$skiff" get jobs -n ml
echo; echo "\$ SKIFF_CONFIG=dev-token.conf skiff get jobs -A   # servers, CA and token in one file"
SKIFF_CONFIG=$dir/dev-token.conf "$skiff" get jobs -A
echo; echo "\$ SKIFF_TOKEN=$shown skiff delete job hello   # refused: the token has the developer's grants"
SKIFF_TOKEN=$token "$skiff" delete job hello || true

echo; echo "\$ SKIFF_CONFIG=dev.conf skiff delete job hello -n ml"
SKIFF_CONFIG=$dir/dev.conf "$skiff" delete job hello -n ml
echo; echo "\$ skiff user revoke-token $id"
"$skiff" user revoke-token "$id"
echo "\$ SKIFF_TOKEN=$shown skiff get jobs -n ml   # refused from now on"
SKIFF_TOKEN=$token "$skiff" get jobs -n ml || true
echo; echo "\$ skiff audit --since 5m | grep user-token/$id   # the token's calls, by its id"
"$skiff" audit --since 5m | grep "user-token/$id" || true

echo; echo "\$ skiff user revoke $dev"
"$skiff" user revoke "$dev"
echo; echo "\$ skiff namespace delete ml"
"$skiff" namespace delete ml
