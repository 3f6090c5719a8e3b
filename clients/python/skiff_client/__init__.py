"""A small Python client for Skiff's gRPC API (skiff.v1).

``Client`` wraps the generated ``Cluster`` stub: whole lists across pages,
watches as iterators, a deadline on every unary call. ``pb`` holds every
message and enum; ``field_violations`` reads the BadRequest details of an
INVALID_ARGUMENT. Anything the wrapper does not cover is one call away on
``Client.stub``. docs/api.md describes the API; run ``generate.sh`` first.

Credentials come from the client configuration file Skiff writes
(``config=PATH``, else ``$SKIFF_CONFIG``, else ``~/.skiff/config``):
``https://`` servers are reached over mutual TLS with its CA and
certificate; ``http://`` only reaches a cluster started with --insecure.
"""

import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import grpc
from google.protobuf import json_format

try:
    from ._gen import cluster_pb2_grpc
except ImportError as e:  # pragma: no cover - a clear message is the point
    raise ImportError(
        "skiff_client's generated stubs are missing: run clients/python/generate.sh"
    ) from e

from . import config as _config
from . import pb
from .config import ClientConfig
from .errors import Detail, FieldViolation, field_violations, status_details

__all__ = [
    "Client",
    "Listing",
    "pb",
    "field_violations",
    "status_details",
    "FieldViolation",
    "Detail",
    "DEFAULT_SERVER",
    "ClientConfig",
]

DEFAULT_SERVER = "https://127.0.0.1:7700"
# The server takes requests up to 4 MiB; answers may be larger (an exec's
# two 4 MiB streams, a page of 1000 allocations).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
MAX_SEND_BYTES = 4 * 1024 * 1024


class Listing(list):
    """The items of every page of a list, in key order, with the index the
    first page was read at (``index``: watch from it to miss no change) and
    how many pages it took (``pages``)."""

    index: int = 0
    pages: int = 0


def _target(url: str) -> str:
    for scheme in ("https://", "http://"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    raise ValueError(f"{url!r}: use https://HOST:PORT (http:// for an --insecure cluster)")


def _kind(k: Union[int, str]) -> int:
    if isinstance(k, int):
        return k
    name = k.upper()
    if not name.startswith("OBJECT_KIND_"):
        name = "OBJECT_KIND_" + name
    return pb.ObjectKind.Value(name)


class Client:
    """A connection to one Skiff server (any server answers every call).

    ``timeout`` is the deadline, in seconds, of each unary call; streams
    (``watch``, ``logs``) take their own. A failed call raises
    ``grpc.RpcError``; see docs/api.md for the codes.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        timeout: float = 30.0,
        config: Optional[str] = None,
    ):
        conf = _config.load(config)
        url = url or os.environ.get("SKIFF_SERVER") or (conf.servers[0] if conf and conf.servers else DEFAULT_SERVER)
        self.url = url
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ]
        if url.startswith("https://"):
            if conf is None or conf.ca is None:
                raise ValueError(
                    f"{url}: an https:// server needs the cluster's CA and your credentials: "
                    "pass config=PATH or set SKIFF_CONFIG (the admin.conf a founding server writes)"
                )
            creds = grpc.ssl_channel_credentials(
                root_certificates=conf.ca, private_key=conf.key, certificate_chain=conf.cert
            )
            options.append(("grpc.ssl_target_name_override", _config.SERVER_NAME))
            self.channel = grpc.secure_channel(_target(url), creds, options=options)
        else:
            self.channel = grpc.insecure_channel(_target(url), options=options)
        self.stub = cluster_pb2_grpc.ClusterStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the channel connects; ``grpc.FutureTimeoutError``
        after ``timeout`` seconds."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # Jobs

    def apply_job(self, spec: Union[pb.JobSpec, Dict[str, Any]]) -> pb.ApplyJobResponse:
        """Creates or updates a job. ``spec`` is a ``pb.JobSpec`` or a dict
        of the same fields (proto names: ``{"name": "web", "task": {...}}``;
        enums by name: ``"type": "JOB_TYPE_BATCH"``). Left-out fields take
        their defaults on the server, as in the YAML form."""
        if isinstance(spec, dict):
            spec = json_format.ParseDict(spec, pb.JobSpec())
        return self.stub.ApplyJob(pb.ApplyJobRequest(spec=spec), timeout=self.timeout)

    def get_job(self, name: str, stale: bool = False) -> pb.GetJobResponse:
        return self.stub.GetJob(pb.GetJobRequest(name=name, stale=stale), timeout=self.timeout)

    def delete_job(self, name: str) -> pb.DeleteJobResponse:
        return self.stub.DeleteJob(pb.DeleteJobRequest(name=name), timeout=self.timeout)

    def scale(self, name: str, replicas: int) -> pb.ScaleJobResponse:
        return self.stub.ScaleJob(
            pb.ScaleJobRequest(name=name, replicas=replicas), timeout=self.timeout
        )

    def list_jobs(self, page_size: int = 0, stale: bool = False) -> Listing:
        """Every job (``pb.JobListItem``: job and summary), by name."""

        def page(token: str) -> Any:
            r = pb.ListJobsRequest(page_size=page_size, page_token=token, stale=stale)
            resp = self.stub.ListJobs(r, timeout=self.timeout)
            return resp.jobs, resp.next_page_token, resp.index

        return self._all_pages(page)

    def list_allocs(
        self, job: str = "", node: str = "", page_size: int = 0, stale: bool = False
    ) -> Listing:
        """Every allocation (stopped ones included), by id, optionally of
        one job or on one node."""

        def page(token: str) -> Any:
            r = pb.ListAllocsRequest(
                job=job, node=node, page_size=page_size, page_token=token, stale=stale
            )
            resp = self.stub.ListAllocs(r, timeout=self.timeout)
            return resp.allocs, resp.next_page_token, resp.index

        return self._all_pages(page)

    def list_nodes(self, page_size: int = 0, stale: bool = False) -> Listing:
        """Every node (``pb.NodeListItem``), by name."""

        def page(token: str) -> Any:
            r = pb.ListNodesRequest(page_size=page_size, page_token=token, stale=stale)
            resp = self.stub.ListNodes(r, timeout=self.timeout)
            return resp.nodes, resp.next_page_token, resp.index

        return self._all_pages(page)

    @staticmethod
    def _all_pages(page: Any) -> Listing:
        out = Listing()
        token = ""
        while True:
            items, token, index = page(token)
            if out.pages == 0:
                out.index = index
            out.pages += 1
            out.extend(items)
            if not token:
                return out

    # Rollouts

    def get_rollout(self, name: str, stale: bool = False) -> pb.GetRolloutResponse:
        return self.stub.GetRollout(
            pb.GetRolloutRequest(name=name, stale=stale), timeout=self.timeout
        )

    def control_rollout(self, name: str, action: int) -> pb.ControlRolloutResponse:
        return self.stub.ControlRollout(
            pb.ControlRolloutRequest(name=name, action=action), timeout=self.timeout
        )

    def pause_rollout(self, name: str) -> pb.ControlRolloutResponse:
        return self.control_rollout(name, pb.ROLLOUT_ACTION_PAUSE)

    def resume_rollout(self, name: str) -> pb.ControlRolloutResponse:
        return self.control_rollout(name, pb.ROLLOUT_ACTION_RESUME)

    def promote_rollout(self, name: str) -> pb.ControlRolloutResponse:
        return self.control_rollout(name, pb.ROLLOUT_ACTION_PROMOTE)

    def undo_rollout(self, name: str, to_version: Optional[int] = None) -> pb.UndoRolloutResponse:
        r = pb.UndoRolloutRequest(name=name)
        if to_version is not None:
            r.to_version = to_version
        return self.stub.UndoRollout(r, timeout=self.timeout)

    # Containers

    def logs(
        self,
        alloc_id: str,
        follow: bool = False,
        tail: int = 0,
        stderr_only: bool = False,
        timestamps: bool = False,
        timeout: Optional[float] = None,
    ) -> Iterator[pb.LogsResponse]:
        """A container's output as chunks of whole lines
        (``chunk.stream``, ``chunk.data``). With ``follow``, until the
        container exits or ``timeout`` seconds pass."""
        r = pb.LogsRequest(
            alloc_id=alloc_id,
            follow=follow,
            tail=tail,
            stderr_only=stderr_only,
            timestamps=timestamps,
        )
        return self._stream(self.stub.Logs(r, timeout=timeout))

    def exec(
        self,
        alloc_id: str,
        command: Sequence[str],
        timeout_ms: int = 0,
        deadline: Optional[float] = None,
    ) -> pb.ExecResponse:
        """Runs ``command`` (not through a shell) in a running container.
        ``timeout_ms`` kills it on the node; ``deadline`` (seconds; default
        the client's timeout plus ``timeout_ms``) bounds the call."""
        if deadline is None:
            deadline = self.timeout + timeout_ms / 1000.0
        r = pb.ExecRequest(alloc_id=alloc_id, command=list(command), timeout_ms=timeout_ms)
        return self.stub.Exec(r, timeout=deadline)

    # Watching and the cluster

    def watch(
        self,
        kinds: Iterable[Union[int, str]] = (),
        job: str = "",
        node: str = "",
        from_index: int = 0,
        timeout: Optional[float] = None,
    ) -> Iterator[pb.WatchEvent]:
        """The cluster's changes after ``from_index`` (0: from now), oldest
        first, then as they happen, as ``pb.WatchEvent``s. ``kinds`` are
        ``pb.OBJECT_KIND_*`` values or names (``"job"``, ``"allocation"``);
        ``job`` and ``node`` keep only their objects. To resume without
        loss, pass the ``index`` of the last event with ``last_in_index``
        set (its index is complete). Ends with a
        ``grpc.RpcError`` (DEADLINE_EXCEEDED) after ``timeout`` seconds, or
        OUT_OF_RANGE when ``from_index`` is older than the history kept.
        Closing the iterator cancels the call."""
        r = pb.WatchRequest(
            from_index=from_index, kinds=[_kind(k) for k in kinds], job=job, node=node
        )
        return self._stream(self.stub.Watch(r, timeout=timeout))

    @staticmethod
    def _stream(call: Any) -> Iterator[Any]:
        try:
            for item in call:
                yield item
        finally:
            call.cancel()

    def status(self) -> pb.StatusResponse:
        return self.stub.Status(pb.StatusRequest(), timeout=self.timeout)

    def members(self) -> List[pb.Member]:
        return list(self.stub.Members(pb.MembersRequest(), timeout=self.timeout).members)
