#!/usr/bin/env bash
# Builds a small OCI image layout holding Debian's busybox-static, with umoci.
# Usage: scripts/build-busybox-image.sh [LAYOUT_DIR] [TAG]   (default images/busybox latest)
set -euo pipefail
layout=${1:-images/busybox}
tag=${2:-latest}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci not found: apt-get install umoci" >&2; exit 1; }
if [ -f "$layout/index.json" ] && grep -q "\"$tag\"" "$layout/index.json"; then
  echo "image $layout:$tag exists"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$layout")"
[ -f "$layout/oci-layout" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,var/www}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
umoci repack --image "$layout:$tag" "$work/bundle" >/dev/null
umoci config --image "$layout:$tag" --config.cmd sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
umoci gc --layout "$layout"
echo "built $layout:$tag"
