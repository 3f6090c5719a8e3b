"""Skiff from Python: apply a job, watch it start, read its output, run a
command in it, see a refused spec's field errors, delete it.

Run it against a server (`skiff dev`) with the stubs generated
(clients/python/generate.sh) and clients/python on the module path:

    PYTHONPATH=clients/python SKIFF_CONFIG=~/.skiff/config \
        SKIFF_IMAGE=oci:/abs/path/to/busybox:latest python3 clients/python/examples/quickstart.py
"""

import os
import time

import grpc

from skiff_client import Client, field_violations, pb

image = os.environ.get("SKIFF_IMAGE", "oci:/srv/images/busybox:latest")
# The servers and credentials come from SKIFF_CONFIG (or ~/.skiff/config,
# which `skiff dev` writes); SKIFF_SERVER picks another server.
client = Client(timeout=15)

# Only what matters; the server fills in the rest as the YAML form does
# (1 replica, 100m CPU, 128Mi memory, restart always, ...).
spec = pb.JobSpec(
    name="quickstart",
    task=pb.TaskSpec(
        image=image,
        command=["sh", "-c", "echo hello from $SKIFF_ALLOC_ID; sleep 3600"],
    ),
)
# Read the index before writing: a watch from it misses nothing after.
start = client.list_jobs().index
applied = client.apply_job(spec)
stored = applied.job.spec
print(
    f"applied {stored.name} version {applied.job.version} at index {applied.index}: "
    f"{stored.replicas} replica, {stored.task.resources.cpu_millis}m CPU, "
    f"{stored.task.resources.memory_bytes // 2**20}Mi memory"
)

try:
    # The job's allocations as they change, until one runs.
    running = None
    events = client.watch(kinds=["allocation"], job="quickstart", from_index=start, timeout=60)
    for event in events:
        status = pb.AllocStatus.Name(event.allocation.status)
        print(f"  index {event.index}: allocation {event.key[:8]} {status}")
        if event.allocation.status == pb.ALLOC_STATUS_RUNNING:
            running = event.allocation
            break
    events.close()

    # Its output (the first line may take a moment to reach the log).
    out = b""
    for _ in range(50):
        out = b"".join(chunk.data for chunk in client.logs(running.id))
        if out:
            break
        time.sleep(0.2)
    print(f"logs: {out.decode().strip()}")

    # A command in its container; an id prefix is enough.
    result = client.exec(running.id[:8], ["hostname"], timeout_ms=5000)
    print(f"exec hostname: exit {result.exit_code}, {result.stdout.decode().strip()}")

    # A broken spec is refused with every broken rule, field by field.
    try:
        client.apply_job({"name": "Quick Start", "replicas": 5000, "task": {"image": image}})
    except grpc.RpcError as e:
        print(f"refused: {e.code().name}")
        for field, why in field_violations(e):
            print(f"  {field}: {why}")
finally:
    client.delete_job("quickstart")

try:
    client.get_job("quickstart")
except grpc.RpcError as e:
    print(f"after delete: {e.code().name}")
