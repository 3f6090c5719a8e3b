#!/usr/bin/env bash
# Skiff on a real NVIDIA GPU: inventory, injection and live metrics.
#
# On a machine with an NVIDIA GPU and driver (nvidia-smi works), as root:
#
#   1. starts `skiff server` and `skiff agent` (NVML inventory) on loopback;
#   2. compares the node's inventory with `nvidia-smi --query-gpu=...`
#      (UUID, name, memory, PCI bus id, compute capability, PCIe, power
#      limit, clocks) and the driver version;
#   3. runs a container given one GPU and checks inside it that
#      `nvidia-smi -L` lists exactly the assigned UUID (and that
#      NVIDIA_VISIBLE_DEVICES names it);
#   4. prints the live metrics (`skiff describe node`, `get nodes -o wide`)
#      next to nvidia-smi's own reading.
#
# The GPU machine needs no cargo, runc or registry. Prepare a directory
# elsewhere (tests/gpu/prepare-bundle.sh does it) holding:
#
#   DIR/skiff                       a skiff binary built for the host
#   DIR/usr/sbin/runc               runc, e.g. `dpkg -x runc_*.deb DIR`
#   DIR/usr/lib/<arch>/libseccomp*  runc's libseccomp (`dpkg -x libseccomp2_*.deb DIR`)
#     (or DIR/runc, any runc that runs as it is)
#   DIR/busybox/                    a busybox OCI image layout (tag latest)
#
# nvidia-smi is a glibc program, which the busybox image lacks: the script
# adds a layer with the host's dynamic loader and the C libraries that
# nvidia-smi and libnvidia-ml need (never NVIDIA's own files: those are
# what the agent injects).
#
# Usage: tests/gpu/run-on-gpu-host.sh (--prebuilt DIR | --build) [--out DIR]
#                                     [--keep] [--dry-run]
#   --prebuilt DIR  use the prepared directory above
#   --build         build skiff with cargo here and use runc from PATH and
#                   a busybox layout built with scripts/build-busybox-image.sh
#   --out DIR       where logs and the work tree go (default: a temp dir)
#   --keep          leave the server, agent and work tree in place on exit
#   --dry-run       check the arguments, the tools and the image step, then
#                   stop before starting anything (works without a GPU)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

die() { echo "error: $*" >&2; exit 2; }

prebuilt="" build=0 out="" keep=0 dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) [ $# -ge 2 ] || die "--prebuilt needs a directory"; prebuilt=$2; shift 2 ;;
    --prebuilt=*) prebuilt=${1#*=}; shift ;;
    --build) build=1; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [ -n "$prebuilt" ] && [ "$build" = 1 ]; then die "give --prebuilt DIR or --build, not both"; fi
if [ -z "$prebuilt" ] && [ "$build" = 0 ]; then die "give --prebuilt DIR or --build (see --help)"; fi

repo=$(cd "$(dirname "$0")/../.." && pwd)
failures=0
ok() { printf '  ok       %s\n' "$*"; }
bad() { printf '  MISSING  %s\n' "$*"; failures=$((failures + 1)); }
gpu_only() { printf '  no GPU   %s\n' "$*"; }

echo "== checks"
[ "$(id -u)" = 0 ] && ok "running as root" || bad "root is needed (runc, device nodes)"
command -v python3 >/dev/null && ok "python3" || bad "python3 (builds the image layer, compares the inventory)"

# skiff, runc and the image.
runc_wrapper=""
if [ -n "$prebuilt" ]; then
  [ -d "$prebuilt" ] || die "--prebuilt $prebuilt is not a directory"
  prebuilt=$(cd "$prebuilt" && pwd)
  skiff_bin=$prebuilt/skiff
  layout=$prebuilt/busybox
  if [ -x "$prebuilt/usr/sbin/runc" ]; then
    runc_real=$prebuilt/usr/sbin/runc
    runc_libs=$({ find "$prebuilt/usr/lib" "$prebuilt/lib" -maxdepth 2 -name 'libseccomp.so*' -printf '%h\n' 2>/dev/null || true; } | sort -u | paste -sd: -)
  elif [ -x "$prebuilt/runc" ]; then
    runc_real=$prebuilt/runc
    runc_libs=""
  else
    runc_real=""
  fi
else
  command -v cargo >/dev/null || die "--build needs cargo; use --prebuilt DIR on a machine without it"
  skiff_bin=$repo/target/release/skiff
  layout=$repo/images/busybox
  runc_real=$(command -v runc || true)
  runc_libs=""
fi
[ -n "$runc_real" ] && ok "runc: $runc_real" || bad "runc (DIR/usr/sbin/runc from the runc .deb, or DIR/runc)"

if [ "$build" = 1 ] && [ "$dry" = 0 ]; then
  echo "== building skiff (release)"
  (cd "$repo" && cargo build --release -p skiff)
  bash "$repo/scripts/build-busybox-image.sh" "$layout" latest
fi
if [ -x "$skiff_bin" ]; then ok "skiff: $skiff_bin ($("$skiff_bin" --version))"; else bad "skiff binary at $skiff_bin"; fi
[ -f "$layout/index.json" ] && ok "busybox layout: $layout" || bad "busybox OCI layout at $layout (index.json)"

# The GPU itself.
smi=$(command -v nvidia-smi || true)
nvml_dir=""
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/aarch64-linux-gnu; do
  if [ -e "$d/libnvidia-ml.so.1" ]; then nvml_dir=$d; break; fi
done
if [ -n "$smi" ]; then ok "nvidia-smi: $smi"; elif [ "$dry" = 1 ]; then gpu_only "nvidia-smi (needed on the GPU host)"; else bad "nvidia-smi (is this a GPU host?)"; fi
if [ -n "$nvml_dir" ]; then ok "libnvidia-ml.so.1 in $nvml_dir"; elif [ "$dry" = 1 ]; then gpu_only "libnvidia-ml.so.1 (needed on the GPU host)"; else bad "libnvidia-ml.so.1"; fi
if python3 -c 'import pynvml' 2>/dev/null; then ok "python nvidia-ml-py (pynvml)"; else gpu_only "python nvidia-ml-py (optional: a second opinion)"; fi

if [ -z "$out" ]; then
  out=$(mktemp -d /tmp/skiff-gpu-host.XXXXXX)
  # A dry run leaves nothing behind in a directory it chose itself.
  if [ "$dry" = 1 ]; then trap 'rm -rf "$out"' EXIT; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "== work tree: $out"

# runc through a wrapper that finds the unpacked libseccomp.
if [ -n "$runc_real" ]; then
  runc_wrapper=$out/runc
  {
    echo '#!/bin/sh'
    [ -n "$runc_libs" ] && echo "export LD_LIBRARY_PATH=$runc_libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
    echo "exec $runc_real \"\$@\""
  } > "$runc_wrapper"
  chmod 755 "$runc_wrapper"
  if v=$("$runc_wrapper" --version 2>&1 | head -1); then ok "runc runs: $v"; else bad "runc does not run: $v"; fi
fi

# The image: busybox plus the C libraries nvidia-smi needs.
gpu_layout=$out/image
libs_of() { { ldd "$1" 2>/dev/null || true; } | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'; }
if [ -n "$smi" ]; then probe=$smi; else probe=$(command -v env); fi
files=$( {
  libs_of "$probe"
  if [ -n "$nvml_dir" ]; then libs_of "$nvml_dir/libnvidia-ml.so.1"; fi
} | { grep -v '/libnvidia' || true; } | sort -u)
if [ -f "$layout/index.json" ] && command -v python3 >/dev/null; then
  if python3 - "$layout" "$gpu_layout" $files <<'PY'
import gzip, hashlib, io, json, os, shutil, sys, tarfile
src, dst, files = sys.argv[1], sys.argv[2], sys.argv[3:]
def blob(layout, digest):
    return os.path.join(layout, "blobs", *digest.split(":", 1))
def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob(dst, d)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    open(p, "wb").write(data)
    return d
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
index = json.load(open(os.path.join(dst, "index.json")))
m = [x for x in index["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"] or index["manifests"]
mdesc = m[0]
manifest = json.load(open(blob(dst, mdesc["digest"])))
config = json.load(open(blob(dst, manifest["config"]["digest"])))
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w") as t:
    dirs = set()
    for f in files:
        rel = f.lstrip("/")
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o755
                t.addfile(info)
        data = open(os.path.realpath(f), "rb").read()
        info = tarfile.TarInfo(rel); info.size = len(data); info.mode = 0o755
        t.addfile(info, io.BytesIO(data))
layer = raw.getvalue()
gz = gzip.compress(layer, mtime=0)
ldigest = put(gz)
config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer).hexdigest())
env = config.setdefault("config", {}).setdefault("Env", [])
libdirs = sorted({os.path.dirname(f) for f in files if ".so" in f})
env.append("LD_LIBRARY_PATH=" + ":".join(libdirs))
cdata = json.dumps(config).encode()
manifest["config"] = {"mediaType": manifest["config"]["mediaType"], "digest": put(cdata), "size": len(cdata)}
manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldigest, "size": len(gz)})
mdata = json.dumps(manifest).encode()
mdesc = dict(mdesc, digest=put(mdata), size=len(mdata))
mdesc["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
index["manifests"] = [mdesc]
json.dump(index, open(os.path.join(dst, "index.json"), "w"))
print(f"{len(files)} libraries in a {len(gz)}-byte layer")
PY
  then ok "image with the C libraries for $(basename "$probe"): $gpu_layout"
  else bad "building the image layer"; fi
fi

if [ "$dry" = 1 ]; then
  if [ "$failures" = 0 ]; then echo "dry run: everything the run needs is here"; exit 0; fi
  echo "dry run: $failures thing(s) missing"; exit 1
fi
[ "$failures" = 0 ] || die "$failures thing(s) missing; see above"

# ---------------------------------------------------------------- the run
[ -n "$nvml_dir" ] && export LD_LIBRARY_PATH=$nvml_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
pids=()
cleanup() {
  if [ "$keep" = 1 ]; then echo "kept: $out (pids ${pids[*]:-})"; return; fi
  "$skiff_bin" delete job gpu-check >/dev/null 2>&1 || true
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 1
  if [ -x "$runc_wrapper" ]; then
    for c in $("$runc_wrapper" --root "$out/agent/runc" list -q 2>/dev/null); do
      "$runc_wrapper" --root "$out/agent/runc" delete --force "$c" >/dev/null 2>&1 || true
    done
  fi
  grep " $out/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting skiff server and agent"
"$skiff_bin" server --data-dir "$out/server" --api 127.0.0.1:0 --peer-addr 127.0.0.1:0 \
  >"$out/server.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do [ -s "$out/server/api.addr" ] && break; sleep 0.1; done
[ -s "$out/server/api.addr" ] || { cat "$out/server.log"; die "the server did not start"; }
url=http://$(cat "$out/server/api.addr")
node=gpu-host
"$skiff_bin" agent --server "$url" --data-dir "$out/agent" --name "$node" --listen 127.0.0.1:0 \
  --runtime "$runc_wrapper" --gpu-metrics-interval 1s >"$out/agent.log" 2>&1 & pids+=($!)
export SKIFF_SERVER=$url
sk() { "$skiff_bin" "$@"; }
for _ in $(seq 1 100); do sk get nodes 2>/dev/null | grep -q "^$node " && break; sleep 0.2; done
sk get nodes | grep -q "^$node " || { cat "$out/agent.log"; die "the agent did not register"; }
grep -m1 'GPU inventory\|no GPUs' "$out/agent.log" || true

echo "== inventory: skiff against nvidia-smi"
sk get nodes -o json > "$out/nodes.json"
nvidia-smi --query-gpu=index,uuid,name,memory.total,pci.bus_id,compute_cap,pcie.link.gen.max,pcie.link.width.max,power.limit,clocks.max.sm,clocks.max.memory,driver_version \
  --format=csv,noheader,nounits > "$out/nvidia-smi.csv"
inventory_ok=0
python3 - "$out/nodes.json" "$out/nvidia-smi.csv" <<'PY' || inventory_ok=1
import csv, json, sys
node = json.load(open(sys.argv[1]))[0]
gpus = {g["uuid"]: g for g in node["gpus"]}
rows = [[c.strip() for c in r] for r in csv.reader(open(sys.argv[2]))]
bad = 0
def check(what, ours, theirs, close=None):
    global bad
    same = (abs(float(ours) - float(theirs)) <= close) if close is not None else str(ours) == str(theirs)
    print(f"  {'ok      ' if same else 'MISMATCH'} {what}: skiff {ours!r}, nvidia-smi {theirs!r}")
    bad += not same
def num(s):
    try: return float(s)
    except ValueError: return None
print(f"  driver {node['gpu_driver'].get('driver_version')} CUDA {node['gpu_driver'].get('cuda_version')}")
whole = [g for g in node["gpus"] if not g.get("mig_profile")]
check("GPU count", len(whole), len(rows))
for idx, uuid, name, mem, bus, cc, gen, width, power, sm, memclk, driver in rows:
    g = gpus.get(uuid)
    if g is None:
        print(f"  MISSING  GPU {idx} {uuid} is not in skiff's inventory"); bad += 1; continue
    print(f"  GPU {idx} {uuid}")
    check("  name", g["model"], name)
    check("  memory MiB", g["memory_bytes"] // 2**20, mem)
    check("  PCI bus id", g.get("pci_bus_id", "").lower(), bus.lower())
    if num(cc) is not None: check("  compute capability", g.get("compute_capability", ""), cc)
    if num(gen) is not None: check("  PCIe generation", g.get("pcie_generation", 0), gen)
    if num(width) is not None: check("  PCIe width", g.get("pcie_width", 0), width)
    if num(power) is not None: check("  power limit W", g.get("power_limit_mw", 0) / 1000, power, close=1.0)
    if num(sm) is not None: check("  max SM clock MHz", g.get("max_sm_clock_mhz", 0), sm, close=1.0)
    if num(memclk) is not None: check("  max memory clock MHz", g.get("max_memory_clock_mhz", 0), memclk, close=1.0)
    check("  driver", node["gpu_driver"].get("driver_version"), driver)
    print(f"    numa {g.get('numa_node')}  mig_enabled {g.get('mig_enabled', False)}  nvlink peers {len(g.get('nvlink_peers', []))}  healthy {g.get('healthy')}")
try:
    import pynvml
    pynvml.nvmlInit()
    n = pynvml.nvmlDeviceGetCount()
    check("GPU count (pynvml)", len(whole), n)
except ImportError:
    pass
sys.exit(1 if bad else 0)
PY

echo "== a container given one GPU"
cat > "$out/gpu-check.yaml" <<EOF
name: gpu-check
task:
  image: oci:$gpu_layout:latest
  command: [sh, -c, "echo VISIBLE=\$NVIDIA_VISIBLE_DEVICES; nvidia-smi -L; echo DONE; sleep 600"]
  resources: {cpu: 500m, memory: 256Mi, gpus: 1}
  restart: {policy: never}
EOF
sk apply -f "$out/gpu-check.yaml"
alloc=""
for _ in $(seq 1 300); do
  alloc=$(sk get allocs --job gpu-check -o json | python3 -c 'import json,sys; a=[x for x in json.load(sys.stdin) if x["status"] in ("running","failed","complete")]; print(a[0]["id"] if a else "")')
  [ -n "$alloc" ] && break; sleep 0.2
done
sk get allocs --job gpu-check -o wide
[ -n "$alloc" ] || { tail -50 "$out/agent.log"; die "the container did not start"; }
assigned=$(sk get allocs --job gpu-check -o json | python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)[0]["gpus"]))')
for _ in $(seq 1 100); do sk logs "$alloc" 2>/dev/null | grep -q DONE && break; sleep 0.2; done
sk logs "$alloc" | tee "$out/container.log"
listed=$(grep -o 'UUID: [^)]*' "$out/container.log" | sed 's/UUID: //' | paste -sd, -)
visible=$(sed -n 's/^VISIBLE=//p' "$out/container.log")
container_ok=0
if [ "$listed" = "$assigned" ] && [ "$visible" = "$assigned" ]; then
  echo "  ok       nvidia-smi -L in the container lists exactly the assigned GPU $assigned"
else
  echo "  MISMATCH assigned $assigned; nvidia-smi -L listed '${listed}'; NVIDIA_VISIBLE_DEVICES='${visible}'"
  container_ok=1
fi

echo "== live metrics"
sleep 3
sk describe node "$node"
sk get nodes -o wide
echo "-- nvidia-smi's reading"
nvidia-smi --query-gpu=index,utilization.gpu,memory.used,temperature.gpu,power.draw,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total --format=csv

echo "== result"
echo "inventory: $([ "$inventory_ok" = 0 ] && echo matches || echo MISMATCH)"
echo "container: $([ "$container_ok" = 0 ] && echo 'exactly its GPU' || echo MISMATCH)"
echo "logs: $out"
[ "$inventory_ok" = 0 ] && [ "$container_ok" = 0 ]
