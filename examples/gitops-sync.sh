#!/usr/bin/env bash
# A namespace following a git branch, against a running `skiff dev`
# (`make run` starts one): makes a bare repository holding
# examples/gitops, points `skiff sync` at it, commits a change and a
# broken spec, and shows what the sync reports each time. docs/declarative.md
# explains each step.
#
#   make run
#   examples/gitops-sync.sh            # leaves the repository in /tmp
#
# A sync reads the repository on the servers' machine, so the specs'
# relative `oci:./images/...` paths are made absolute here (a sync has no
# directory to resolve them against; registry images need nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
skiff=${SKIFF:-$(command -v skiff || echo target/debug/skiff)}
unset SKIFF_NAMESPACE SKIFF_TOKEN
dir=$(mktemp -d /tmp/skiff-gitops.XXXXXX)
git() { command git -c user.name=Lab -c user.email=lab@example.org "$@"; }

git init -q --bare -b main "$dir/origin.git"
git init -q -b main "$dir/work"
git -C "$dir/work" remote add origin "$dir/origin.git"
mkdir -p "$dir/work/jobs"
for f in examples/gitops/*.yaml; do
    sed "s|oci:\./|oci:$PWD/|" "$f" > "$dir/work/jobs/$(basename "$f")"
done
commit() { git -C "$dir/work" add -A && git -C "$dir/work" commit -q -m "$1" && git -C "$dir/work" push -q origin main; }
commit "web and batch"

# Waits until the sync has read the branch's head.
wait_head() {
    local head
    head=$(git -C "$dir/work" rev-parse --short=12 HEAD)
    for _ in $(seq 1 60); do
        "$skiff" sync status lab | grep -q "Head:       $head" && return 0
        sleep 1
    done
    echo "the sync did not read $head within a minute" >&2
    return 1
}

echo "\$ skiff sync apply lab --repo $dir/origin.git --path jobs --prune -l owner=gitops --interval 2s"
"$skiff" sync apply lab --repo "$dir/origin.git" --path jobs --prune -l owner=gitops --interval 2s
wait_head
echo "\$ skiff sync status lab"
"$skiff" sync status lab

echo "# a broken spec is committed: nothing of the commit is applied"
printf 'name: Broken_Name\ntask: {image: busybox}\n' > "$dir/work/jobs/broken.yaml"
commit "a broken spec"
wait_head
"$skiff" sync status lab

echo "# fixed, and batch retired: the sync prunes it"
rm "$dir/work/jobs/broken.yaml" "$dir/work/jobs/batch.yaml"
commit "retire batch"
wait_head
"$skiff" sync status lab
"$skiff" get jobs -l owner=gitops -o wide

echo "# stop following (the jobs stay): skiff sync delete lab"
echo "# the repository: $dir"
