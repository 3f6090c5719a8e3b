"""End to end, as a client developer in Python would use Skiff: against a
running `skiff dev` (SKIFF_SERVER, with its credentials in SKIFF_CONFIG) with a busybox image (SKIFF_IMAGE, an
absolute `oci:` layout). tests/tests/python_client.rs runs it after
generating the stubs; it can be run by hand the same way:

    PYTHONPATH=clients/python SKIFF_SERVER=https://127.0.0.1:7700 SKIFF_CONFIG=~/.skiff/config \
        SKIFF_IMAGE=oci:/abs/busybox:latest /usr/bin/python3 clients/python/tests/test_e2e.py

Every wait has a limit; each step prints what it checked. Exits 0 when
everything held, 1 with the first broken expectation otherwise.
"""

import os
import sys
import time
import traceback

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from skiff_client import Client, field_violations, pb  # noqa: E402

SERVER = os.environ["SKIFF_SERVER"]
IMAGE = os.environ["SKIFF_IMAGE"]
WEB = "e2e-web"
BATCH = "e2e-batch"
MiB = 1024 * 1024


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def step(what):
    print(f"==> {what}", flush=True)


def ok(what):
    print(f"    ok: {what}", flush=True)


def wait_until(what, limit, probe):
    """Calls probe() every 0.2s until it returns something true; fails
    after `limit` seconds with the last value seen."""
    deadline = time.monotonic() + limit
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {limit}s waiting for {what}; last seen: {last!r}")
        time.sleep(0.2)


def refused(code, call, *args, **kwargs):
    """Runs call and returns the grpc.RpcError it must fail with `code`."""
    name = getattr(call, "__name__", type(call).__name__)
    try:
        got = call(*args, **kwargs)
    except grpc.RpcError as e:
        check(e.code() == code, f"{name}{args}: {e.code()} ({e.details()}), not {code}")
        return e
    raise Failed(f"{name}{args} succeeded ({got}), expected {code}")


def running_allocs(client, job):
    return [
        a
        for a in client.list_allocs(job=job)
        if a.desired == pb.DESIRED_STATUS_RUN and a.status == pb.ALLOC_STATUS_RUNNING
    ]


def state_of(client, job):
    return pb.JobState.Name(client.get_job(job).summary.state)


def main():
    client = Client(SERVER, timeout=15)
    client.wait_ready(20)

    step("the node of skiff dev is ready")
    nodes = wait_until(
        "a ready node",
        30,
        lambda: [n for n in client.list_nodes() if n.node.status == pb.NODE_STATUS_READY],
    )
    node = nodes[0].node.name
    ok(f"node {node}, {nodes[0].node.allocatable.cpu_millis}m CPU allocatable")

    step("apply a service job with only a name, an image and a command")
    before = client.list_jobs().index
    spec = pb.JobSpec(
        name=WEB,
        task=pb.TaskSpec(
            image=IMAGE,
            command=["sh", "-c", "echo hello from $SKIFF_ALLOC_ID; echo oops >&2; sleep 3600"],
        ),
    )
    check(not spec.HasField("replicas") and not spec.task.HasField("resources"), "a bare spec")
    applied = client.apply_job(spec)
    check(applied.changed, "a new job is a change")
    check(applied.index > before, f"write index {applied.index} after list index {before}")
    job = applied.job
    stored = job.spec
    check(job.version == 1, f"version {job.version}")
    check(stored.HasField("replicas") and stored.replicas == 1, f"replicas {stored.replicas}")
    res = stored.task.resources
    check(res.cpu_millis == 100, f"cpu_millis {res.cpu_millis}")
    check(res.memory_bytes == 128 * MiB, f"memory_bytes {res.memory_bytes}")
    check(stored.type == pb.JOB_TYPE_SERVICE, f"type {pb.JobType.Name(stored.type)}")
    policy = stored.task.restart.policy
    check(policy == pb.RESTART_POLICY_ALWAYS, f"restart {pb.RestartPolicy.Name(policy)}")
    check(stored.priority == 50, f"priority {stored.priority}")
    check(stored.versions_kept == 10, f"versions_kept {stored.versions_kept}")
    got = client.get_job(WEB)
    check(got.job.spec == stored, f"GetJob's spec differs from ApplyJob's:\n{got.job.spec}")
    again = client.apply_job(spec)
    check(not again.changed and again.job.version == 1, "the same spec again changes nothing")
    ok(
        f"version 1 at index {applied.index}: replicas 1, 100m CPU, 128Mi, "
        "SERVICE, restart ALWAYS, priority 50, versions_kept 10; applying again: unchanged"
    )

    step("pause and resume the job's first rollout")

    def pause():
        try:
            return client.pause_rollout(WEB)
        except grpc.RpcError as e:
            # The rollout starts with the job's first evaluation.
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return None

    paused = wait_until("the rollout to exist and pause", 15, pause)
    check(paused.deployment.status == pb.DEPLOYMENT_STATUS_PAUSED, f"{paused.deployment}")
    check(state_of(client, WEB) == "JOB_STATE_PAUSED", "GetJob says paused")
    rollout = client.get_rollout(WEB)
    check(rollout.deployments[-1].status == pb.DEPLOYMENT_STATUS_PAUSED, "GetRollout says paused")
    resumed = client.resume_rollout(WEB)
    check(resumed.deployment.status == pb.DEPLOYMENT_STATUS_RUNNING, f"{resumed.deployment}")
    check(resumed.index > paused.index, "each write has its index")
    ok(f"deployment {paused.deployment.id} paused at {paused.index}, resumed at {resumed.index}")

    step("watch the job from the index before it was applied, until it runs")
    kinds = {pb.OBJECT_KIND_JOB, pb.OBJECT_KIND_ALLOCATION, pb.OBJECT_KIND_DEPLOYMENT}
    seen = {"job": 0, "paused": False, "running": None}
    last_index = before
    events = client.watch(kinds=["job", "allocation", "deployment"], job=WEB, from_index=before, timeout=60)
    open_index = None  # an index whose last event has not come yet
    for ev in events:
        check(ev.index > before, f"event index {ev.index} after {before}")
        check(ev.index >= last_index, f"events in index order: {ev.index} after {last_index}")
        check(
            open_index in (None, ev.index),
            f"index {open_index} was not closed by last_in_index before {ev.index}",
        )
        open_index = None if ev.last_in_index else ev.index
        last_index = ev.index
        check(ev.kind in kinds, f"only the kinds asked for, not {pb.ObjectKind.Name(ev.kind)}")
        which = ev.WhichOneof("object")
        if ev.kind == pb.OBJECT_KIND_JOB:
            check(which == "job" and ev.key == WEB and ev.job.spec.name == WEB, f"{ev}")
            seen["job"] += 1
        elif ev.kind == pb.OBJECT_KIND_DEPLOYMENT:
            check(which == "deployment" and ev.deployment.job == WEB, f"{ev}")
            check(ev.key == ev.deployment.id, "a deployment is keyed by its id")
            if ev.deployment.status == pb.DEPLOYMENT_STATUS_PAUSED:
                seen["paused"] = True
        else:
            check(which == "allocation" and ev.allocation.job == WEB, f"{ev}")
            check(ev.key == ev.allocation.id, "an allocation is keyed by its id")
            if ev.allocation.status == pb.ALLOC_STATUS_RUNNING:
                seen["running"] = ev.allocation
        print(
            f"    event {ev.index} {pb.ObjectKind.Name(ev.kind)} {ev.key[:12]}"
            f"{' deleted' if ev.deleted else ''}",
            flush=True,
        )
        if seen["job"] and seen["paused"] and seen["running"]:
            break
    events.close()
    ok(f"the job, its paused deployment and running allocation {seen['running'].id[:8]}")

    step("the rollout succeeds (default min_healthy: 10s)")
    wait_until("rollout successful", 60, lambda: state_of(client, WEB) == "JOB_STATE_SUCCESSFUL")
    refused(grpc.StatusCode.FAILED_PRECONDITION, client.pause_rollout, WEB)
    ok("JOB_STATE_SUCCESSFUL; pausing it now is FAILED_PRECONDITION")

    step("scale to 3, then list the allocations one per page")
    scaled = client.scale(WEB, 3)
    check(scaled.job.spec.replicas == 3 and scaled.job.version == 1, f"{scaled.job}")
    check(scaled.index > resumed.index, "scale has its index")
    wait_until("3 running allocations", 60, lambda: len(running_allocs(client, WEB)) == 3)
    allocs = client.list_allocs(job=WEB, page_size=1)
    ids = [a.id for a in allocs]
    check(len(allocs) >= 3 and allocs.pages == len(allocs), f"{len(allocs)} in {allocs.pages} pages")
    check(ids == sorted(set(ids)), "ids once each, in order")
    on_node = client.list_allocs(node=node, page_size=2)
    check(set(ids) <= {a.id for a in on_node}, "the node's allocations include the job's")
    ok(f"{len(allocs)} allocations in {allocs.pages} pages, list index {allocs.index}")

    step("a batch job left to its defaults runs to completion")
    batch = client.apply_job(
        pb.JobSpec(
            name=BATCH,
            type=pb.JOB_TYPE_BATCH,
            task=pb.TaskSpec(image=IMAGE, command=["sh", "-c", "echo done"]),
        )
    ).job.spec
    check(batch.replicas == 1, f"replicas {batch.replicas}")
    check(batch.task.restart.policy == pb.RESTART_POLICY_ON_FAILURE, f"{batch.task.restart}")
    wait_until("the batch job complete", 60, lambda: state_of(client, BATCH) == "JOB_STATE_COMPLETE")
    summary = client.get_job(BATCH).summary
    check(summary.completions == 1 and summary.succeeded == 1, f"{summary}")
    refused(grpc.StatusCode.FAILED_PRECONDITION, client.scale, BATCH, 2)
    ok("replicas 1, restart ON_FAILURE, 1 of 1 completions; scaling it is FAILED_PRECONDITION")

    step("list jobs and nodes one per page")
    jobs = client.list_jobs(page_size=1)
    names = [j.job.spec.name for j in jobs]
    check([n for n in names if n.startswith("e2e-")] == [BATCH, WEB], f"{names}")
    check(jobs.pages == len(jobs), f"{len(jobs)} jobs in {jobs.pages} pages")
    web = next(j for j in jobs if j.job.spec.name == WEB)
    check(web.summary.running == 3 and web.summary.desired == 3, f"{web.summary}")
    nodes = client.list_nodes(page_size=1)
    check([n.node.name for n in nodes] == [node] and nodes.pages == 1, f"{nodes}")
    e = refused(grpc.StatusCode.INVALID_ARGUMENT, client.list_jobs, page_size=1001)
    check([v.field for v in field_violations(e)] == ["page_size"], f"{field_violations(e)}")
    e = refused(grpc.StatusCode.INVALID_ARGUMENT, client.stub.ListJobs, pb.ListJobsRequest(page_token="job-1"))
    check([v.field for v in field_violations(e)] == ["page_token"], f"{field_violations(e)}")
    ok(f"jobs {names} in {jobs.pages} pages; page_size 1001 and a made-up token refused by field")

    step("logs and exec in a running allocation")
    alloc = running_allocs(client, WEB)[0]

    def log_chunks():
        chunks = list(client.logs(alloc.id, timeout=10))
        out = b"".join(c.data for c in chunks if c.stream == pb.LogsResponse.STREAM_STDOUT)
        err = b"".join(c.data for c in chunks if c.stream == pb.LogsResponse.STREAM_STDERR)
        return (out, err) if out and err else None

    out, err = wait_until("both streams' output", 15, log_chunks)
    check(f"hello from {alloc.id}".encode() in out, f"stdout {out!r}")
    check(b"oops" in err, f"stderr {err!r}")
    only_err = list(client.logs(alloc.id[:10], stderr_only=True, timeout=10))
    check(all(c.stream == pb.LogsResponse.STREAM_STDERR for c in only_err) and only_err, "stderr only")
    r = client.exec(alloc.id[:8], ["sh", "-c", "echo out; echo err >&2; exit 3"], timeout_ms=10000)
    check((r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n"), f"{r}")
    check(not r.truncated and not r.timed_out, f"{r}")
    r = client.exec(alloc.id, ["sleep", "30"], timeout_ms=500)
    check(r.timed_out, f"a command past its timeout is killed: {r}")
    refused(grpc.StatusCode.NOT_FOUND, client.exec, "ffffffffffff", ["true"])
    ok(f"stdout {out.decode().strip()!r}, stderr {err.decode().strip()!r}; exec exit 3; timeout killed")

    step("invalid specs are refused with every broken field at once")
    bad = pb.JobSpec(
        name="Bad_Name",
        replicas=5000,
        task=pb.TaskSpec(image=IMAGE, resources=pb.TaskResources(memory_bytes=1000)),
    )
    e = refused(grpc.StatusCode.INVALID_ARGUMENT, client.apply_job, bad)
    violations = field_violations(e)
    fields = [v.field for v in violations]
    for field in ["spec.name", "spec.replicas", "spec.task.resources.memory_bytes"]:
        check(field in fields, f"{field} among the violations {violations}")
    check(all(v.description for v in violations), f"each names its rule: {violations}")
    # The message says the same for people, one line per rule.
    check(all(v.description in e.details() for v in violations), f"message: {e.details()}")
    for v in violations:
        print(f"    {v.field}: {v.description}")
    e = refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        client.apply_job,
        {
            "name": "e2e-bad-batch",
            "type": "JOB_TYPE_BATCH",
            "task": {"image": "oci:./busybox", "restart": {"policy": "RESTART_POLICY_ALWAYS"}},
        },
    )
    fields = [v.field for v in field_violations(e)]
    check("spec.task.image" in fields, f"a relative image is refused: {fields}")
    check("spec.task.restart.policy" in fields, f"a batch job may not restart always: {fields}")
    refused(grpc.StatusCode.NOT_FOUND, client.get_job, "e2e-bad-batch")
    watch = client.watch(kinds=[99], timeout=5)
    e = refused(grpc.StatusCode.INVALID_ARGUMENT, lambda: next(watch))
    check([v.field for v in field_violations(e)] == ["kinds[0]"], f"{field_violations(e)}")
    ok(f"fields {fields} and the rest; nothing stored; an unknown watch kind refused")

    step("undo returns to the stable version")
    v2 = pb.JobSpec()
    v2.CopyFrom(spec)
    v2.task.env["MODE"] = "two"
    v2.replicas = 3
    applied2 = client.apply_job(v2)
    check(applied2.job.version == 2, f"a new task is version 2: {applied2.job.version}")
    undone = client.undo_rollout(WEB)
    check(undone.job.version == 1 and "MODE" not in undone.job.spec.task.env, f"{undone.job}")
    check(undone.deployment.version == 1, f"{undone.deployment}")
    history = client.get_rollout(WEB).history
    # Kept versions in the order they were last current: the current one last.
    check([v.version for v in history] == [2, 1], f"{[v.version for v in history]}")
    ok(f"version 2 at {applied2.index}, undone to version 1 at {undone.index}")

    step("delete: a watch sees the deletion; the job is NOT_FOUND after")
    deleted = client.delete_job(WEB)
    events = client.watch(kinds=["job"], job=WEB, from_index=deleted.index - 1, timeout=10)
    ev = next(events)
    events.close()
    check(ev.index == deleted.index and ev.key == WEB and ev.deleted, f"{ev}")
    check(ev.WhichOneof("object") is None, "a deletion carries no object")
    refused(grpc.StatusCode.NOT_FOUND, client.get_job, WEB)
    refused(grpc.StatusCode.NOT_FOUND, client.get_rollout, WEB)
    refused(grpc.StatusCode.NOT_FOUND, client.scale, WEB, 1)
    refused(grpc.StatusCode.NOT_FOUND, client.delete_job, WEB)
    client.delete_job(BATCH)
    wait_until(
        "the deleted job's containers to stop",
        60,
        lambda: not [a for a in client.list_allocs(job=WEB) if a.status == pb.ALLOC_STATUS_RUNNING],
    )
    check(not [j for j in client.list_jobs() if j.job.spec.name.startswith("e2e-")], "no e2e jobs left")
    ok(f"deleted at index {deleted.index}; GetJob, GetRollout, ScaleJob, DeleteJob: NOT_FOUND")

    client.close()
    print("PASSED", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"FAILED: {e}", flush=True)
        sys.exit(1)
    except grpc.RpcError as e:
        traceback.print_exc()
        print(f"FAILED: an unexpected {e.code()}: {e.details()}", flush=True)
        sys.exit(1)
