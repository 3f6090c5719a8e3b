#!/usr/bin/env bash
# Makes the stand-ins examples/fake-gpus.yaml points at: character devices
# with NVIDIA's numbers (mknod; opening one fails with "No such device or
# address" on a machine without the driver, which is fine), a stand-in
# nvidia-smi that lists the GPU device nodes a container sees, and a
# stand-in library. Needs root (mknod).
# Usage: scripts/fake-gpu-host.sh [DIR]   (default /tmp/skiff-fake-gpus)
set -euo pipefail
dir=${1:-/tmp/skiff-fake-gpus}
mkdir -p "$dir/nvidia-caps"
node() { [ -e "$dir/$1" ] || mknod "$dir/$1" c "$2" "$3"; }
for i in 0 1 2 3 4; do node "nvidia$i" 195 "$i"; done
node nvidiactl 195 255
node nvidia-uvm 511 0
for m in 41 42 51 52; do node "nvidia-caps/nvidia-cap$m" 236 "$m"; done
cat > "$dir/nvidia-smi" <<'SMI'
#!/bin/sh
# Stand-in for nvidia-smi: one line per GPU device node in this container.
for d in /dev/nvidia[0-9]*; do
  [ -e "$d" ] && echo "GPU ${d#/dev/nvidia}: stand-in ($d) NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"
done
SMI
chmod 755 "$dir/nvidia-smi"
echo "stand-in library" > "$dir/libnvidia-ml.so.1"
echo "stand-ins ready in $dir"
