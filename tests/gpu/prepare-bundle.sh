#!/usr/bin/env bash
# Prepares the directory tests/gpu/run-on-gpu-host.sh takes with --prebuilt,
# on a Debian machine with cargo and apt (the GPU host needs neither):
#
#   DIR/skiff                     skiff, built here (release)
#   DIR/usr/sbin/runc, DIR/usr/lib/<arch>/libseccomp.so.*
#                                 runc and libseccomp from Debian's .debs,
#                                 unpacked with dpkg -x
#   DIR/busybox/                  a busybox OCI layout (scripts/build-busybox-image.sh)
#   DIR/run-on-gpu-host.sh        the script itself
#
# Usage: tests/gpu/prepare-bundle.sh DIR [--debug]
#   --debug   copy target/debug/skiff instead of building a release binary
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [--debug]" >&2; exit 2; }
dir=$1
profile=release
[ "${2:-}" = "--debug" ] && profile=debug
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ "$profile" = release ]; then
  (cd "$repo" && cargo build --release -p skiff)
fi
cp "$repo/target/$profile/skiff" "$dir/skiff"

debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
(cd "$debs" && apt-get download runc libseccomp2 >/dev/null)
for d in "$debs"/*.deb; do dpkg -x "$d" "$dir"; done

bash "$repo/scripts/build-busybox-image.sh" "$dir/busybox" latest
cp "$repo/tests/gpu/run-on-gpu-host.sh" "$dir/run-on-gpu-host.sh"
echo "prepared $dir ($(du -sh "$dir" | cut -f1)); on the GPU host: $dir/run-on-gpu-host.sh --prebuilt $dir"
