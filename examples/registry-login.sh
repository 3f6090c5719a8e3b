#!/usr/bin/env bash
# A namespace's own registry login, against a running `skiff dev` (`make
# run` starts one): describes namespace `ml`, stores its login for a
# private registry (the password read from stdin, sealed by the servers
# before it is replicated), lists the logins (never the password), and
# removes it again. Jobs in `ml` then pull that registry's images with it;
# no other namespace can, not even from a node's cache.
#
#   make run
#   REGISTRY=registry.lab:5000 REGISTRY_USER=ci-bot \
#     REGISTRY_PASSWORD_FILE=token.txt examples/registry-login.sh
#
# Without the variables it stores a made-up login (nothing contacts the
# registry until a job of `ml` pulls from it). docs/images.md explains
# each step.
set -euo pipefail
cd "$(dirname "$0")/.."
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
unset SKIFF_NAMESPACE SKIFF_TOKEN
registry=${REGISTRY:-registry.lab:5000}
user=${REGISTRY_USER:-ci-bot}

echo "\$ skiff namespace apply -f examples/namespace.yaml"
"$skiff" namespace apply -f examples/namespace.yaml

echo "\$ skiff registry login -n ml $registry --username $user --password-stdin"
if [ -n "${REGISTRY_PASSWORD_FILE:-}" ]; then
    "$skiff" registry login -n ml "$registry" --username "$user" --password-stdin < "$REGISTRY_PASSWORD_FILE"
else
    echo "example-token-$$" | "$skiff" registry login -n ml "$registry" --username "$user" --password-stdin
fi

echo "\$ skiff registry ls"
"$skiff" registry ls

echo "# a job in ml naming $registry/... now pulls with this login, e.g.:"
echo "#   skiff apply -n ml -f examples/registry-image.yaml   (its image on $registry)"

echo "\$ skiff registry logout -n ml $registry"
"$skiff" registry logout -n ml "$registry"
