"""Reading Skiff's structured errors.

An INVALID_ARGUMENT from Skiff names every broken rule in its message and
again as ``google.rpc.BadRequest`` field violations in the status details
(the ``grpc-status-details-bin`` trailer: a serialized ``google.rpc.Status``
whose ``details`` hold the BadRequest as an ``Any``). Debian ships no
Python module for the ``google.rpc`` protos, and these two messages are
tiny, so they are decoded here from the protobuf wire format:

    google.rpc.Status     {int32 code = 1; string message = 2; repeated Any details = 3;}
    google.protobuf.Any   {string type_url = 1; bytes value = 2;}
    google.rpc.BadRequest {repeated FieldViolation field_violations = 1;}
    FieldViolation        {string field = 1; string description = 2; ...}
"""

from typing import Iterator, List, NamedTuple, Optional, Tuple

import grpc

DETAILS_KEY = "grpc-status-details-bin"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class FieldViolation(NamedTuple):
    """One broken rule: the request field's path and what is wrong."""

    field: str
    description: str


class Detail(NamedTuple):
    """One entry of a status's details: its type URL and serialized value."""

    type_url: str
    value: bytes


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[Tuple[int, object]]:
    """The (field number, value) pairs of a serialized message; a value is
    an int for varints and fixed-size fields, bytes for length-delimited
    ones (strings, bytes, messages)."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = bytes(data[pos : pos + n]), pos + n
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, value


def status_details(err: grpc.RpcError) -> List[Detail]:
    """The details of a failed call's status (empty when it has none)."""
    metadata = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    raw: Optional[bytes] = None
    for key, value in metadata or ():
        if key == DETAILS_KEY:
            raw = value if isinstance(value, bytes) else value.encode()
    if raw is None:
        return []
    details = []
    for number, value in _fields(raw):
        if number == 3 and isinstance(value, bytes):
            type_url, payload = "", b""
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    type_url = v.decode("utf-8", "replace")
                elif n == 2 and isinstance(v, bytes):
                    payload = v
            details.append(Detail(type_url, payload))
    return details


def field_violations(err: grpc.RpcError) -> List[FieldViolation]:
    """The BadRequest field violations of a failed call: each request field
    (``spec.task.resources.memory_bytes``) and its broken rule. Empty when
    the status carries none (any code other than INVALID_ARGUMENT)."""
    out = []
    for d in status_details(err):
        if d.type_url != BAD_REQUEST_TYPE:
            continue
        for number, value in _fields(d.value):
            if number != 1 or not isinstance(value, bytes):
                continue
            field = description = ""
            for n, v in _fields(value):
                if n == 1 and isinstance(v, bytes):
                    field = v.decode("utf-8", "replace")
                elif n == 2 and isinstance(v, bytes):
                    description = v.decode("utf-8", "replace")
            out.append(FieldViolation(field, description))
    return out
