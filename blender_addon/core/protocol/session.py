"""Envelope, signing and replay protection: the :class:`Session` that sends and receives messages."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import zmq

from ..splat_arrays import SplatArrayError
from .buffers import (
    _buffer_view,
    _check_descriptor,
    _conforms,
    _pack_array,
    _specs,
    _unpack_array,
    pack_splats,
    unpack_splats,
)
from .constants import BYTES_DTYPE, DELIM, PROTOCOL_VERSION, SPLAT_KEYS, Limits, ProtocolError
from .messages import MESSAGE_TYPES, Message

REPLAY_WINDOW_S = 300.0  # a signed message dated further than this from the receiver's clock is refused


@dataclass(frozen=True)
class Header:
    msg_id: str
    msg_type: str
    protocol_version: str
    session: str
    date: str

    def to_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Envelope:
    """A received message with its routing information."""

    identities: list[bytes]
    header: Header
    parent_id: str
    message: Message


def new_id() -> str:
    return uuid.uuid4().hex


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(frame: Any, what: str, limit: int) -> dict[str, Any]:
    view = _buffer_view(frame)
    if view.nbytes > limit:
        raise ProtocolError("oversize", f"{what} JSON is {view.nbytes} bytes; the limit is {limit}")
    try:
        value = json.loads(bytes(view), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad_json", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _dump_json(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError("invalid_content", f"content cannot be sent as JSON: {exc}") from None


class ReplayGuard:
    """Refuses a signed message seen before, and one dated outside the replay window.

    A captured ``submit_job``, ``delete_job`` or ``shutdown`` is validly signed, so the
    signature alone cannot stop it being sent again. Like jupyter_client, each endpoint keeps
    a bounded history of the signatures (digests) it has accepted; unlike it, every message
    must also be dated within ``window_s`` seconds of this endpoint's clock, so the history
    need only cover the window. Should the history still overflow, the newest date it had to
    forget becomes a floor: nothing dated at or before it is accepted again.

    Args:
        window_s: how far a message's ``date`` may be from now, either way.
        max_history: digests kept at most.
        clock: seconds since the epoch (``time.time``; tests may shift it).
    """

    def __init__(
        self, window_s: float = REPLAY_WINDOW_S, max_history: int = 100_000, clock: Callable[[], float] = time.time
    ):
        self.window_s = float(window_s)
        self.max_history = int(max_history)
        self.clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # digest -> message time, oldest first
        self._floor = -math.inf

    def check(self, digest: bytes, date: str) -> None:
        """Raise ``ProtocolError`` (``stale`` or ``replayed``) or remember ``digest``."""
        try:
            sent = datetime.fromisoformat(date)
        except ValueError:
            raise ProtocolError("malformed", f"header date {date[:40]!r} is not an ISO 8601 time") from None
        if sent.tzinfo is None:
            raise ProtocolError("malformed", "header date has no time zone")
        t, now = sent.timestamp(), self.clock()
        if abs(now - t) > self.window_s or t <= self._floor:
            raise ProtocolError(
                "stale", f"the message is dated {t - now:+.0f} s from now; the window is +-{self.window_s:.0f} s"
            )
        if digest in self._seen:
            raise ProtocolError("replayed", "this message was already received once; a copy is refused")
        while self._seen and next(iter(self._seen.values())) < now - self.window_s:
            self._seen.popitem(last=False)
        while len(self._seen) >= self.max_history:
            _, forgotten = self._seen.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        self._seen[digest] = t

    def __len__(self) -> int:
        return len(self._seen)


class Session:
    """Signs, serialises and checks messages for one endpoint.

    Args:
        key: HMAC key (bytes). Empty: messages are neither signed nor checked (loopback only).
        session_id: this endpoint's id, sent in every header; a fresh uuid by default.
        limits: :class:`Limits` enforced on received messages.
        types: msg_type -> dataclass accepted on receipt (default: the public protocol).
        replay: the :class:`ReplayGuard` for received signed messages (default: a fresh one).
    """

    def __init__(
        self,
        key: bytes | str = b"",
        *,
        session_id: str | None = None,
        limits: Limits | None = None,
        types: dict[str, type[Message]] | None = None,
        replay: ReplayGuard | None = None,
    ):
        if isinstance(key, str):
            key = key.encode("utf-8")
        self.key = bytes(key)
        self.session_id = session_id or new_id()
        self.limits = limits or Limits()
        self.types = MESSAGE_TYPES if types is None else types
        # signed messages only: without a key anyone may send anything, so a copy proves nothing
        self.replay = (replay if replay is not None else ReplayGuard()) if self.key else None

    # ----------------------------------------------------------------- signing
    def sign(self, frames: Iterable[Any]) -> bytes:
        if not self.key:
            return b""
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for frame in frames:
            mac.update(_buffer_view(frame))
        return mac.hexdigest().encode("ascii")

    # ------------------------------------------------------------- serialising
    def serialize(
        self,
        msg: Message,
        *,
        parent_id: str = "",
        identities: Sequence[bytes] = (),
        msg_id: str | None = None,
        buffer_dtype: str | None = None,
    ) -> list[Any]:
        """Frames for ``msg``. Buffers are memoryviews of the caller's arrays: do not mutate
        them until the send has completed. ``buffer_dtype`` converts SplatArrays buffers
        (e.g. "float16" for previews)."""
        if type(msg).msg_type not in self.types:
            raise ProtocolError("unknown_msg_type", f"{type(msg).__name__} is not a message this session sends")
        content: dict[str, Any] = {}
        descriptors: list[dict[str, Any]] = []
        buffers: list[Any] = []
        for spec in _specs(type(msg)):
            value = getattr(msg, spec.name)
            if spec.kind == "json":
                content[spec.name] = value
            elif value is None:
                if not spec.optional:
                    raise ProtocolError("invalid_content", f"{msg.msg_type}.{spec.name} must not be None")
            elif spec.kind == "splats":
                descs, bufs = pack_splats(value, buffer_dtype, spec.name)
                descriptors += descs
                buffers += bufs
            elif spec.kind == "bytes":
                view = memoryview(value).cast("B") if not isinstance(value, bytes) else value
                descriptors.append({"field": spec.name, "dtype": BYTES_DTYPE, "shape": [len(view)]})
                buffers.append(view)
            else:  # array
                desc, buf = _pack_array(value)
                desc["field"] = spec.name
                descriptors.append(desc)
                buffers.append(buf)
        content["buffers"] = descriptors
        header = Header(
            msg_id=msg_id or new_id(),
            msg_type=msg.msg_type,
            protocol_version=PROTOCOL_VERSION,
            session=self.session_id,
            date=datetime.now(UTC).isoformat(),
        )
        signed = [
            _dump_json(header.to_dict()),
            _dump_json({"msg_id": parent_id} if parent_id else {}),
            _dump_json(content),
            *buffers,
        ]
        return [*identities, DELIM, self.sign(signed), *signed]

    def send(
        self,
        socket: zmq.Socket[Any],
        msg: Message,
        *,
        parent_id: str = "",
        identities: Sequence[bytes] = (),
        flags: int = 0,
        buffer_dtype: str | None = None,
    ) -> str:
        """Send zero-copy; returns the msg_id (match replies on ``Envelope.parent_id``)."""
        msg_id = new_id()
        frames = self.serialize(
            msg, parent_id=parent_id, identities=identities, msg_id=msg_id, buffer_dtype=buffer_dtype
        )
        socket.send_multipart(frames, flags=flags, copy=False)
        return msg_id

    # ----------------------------------------------------------- deserialising
    def recv(self, socket: zmq.Socket[Any], flags: int = 0) -> Envelope:
        """Receive zero-copy and decode; raises :class:`ProtocolError` (and ``zmq.Again``
        with ``flags=zmq.NOBLOCK`` when nothing is waiting)."""
        return self.deserialize(socket.recv_multipart(flags=flags, copy=False))

    def split_identities(self, frames: Sequence[Any]) -> tuple[list[bytes], int]:
        """(identities, index of the delimiter); raises ProtocolError('malformed')."""
        limit = min(len(frames), self.limits.max_identities + 1)
        for i in range(limit):
            view = _buffer_view(frames[i])
            if view.nbytes == len(DELIM) and view.tobytes() == DELIM:
                return [_buffer_view(f).tobytes() for f in frames[:i]], i
        raise ProtocolError("malformed", f"no {DELIM!r} delimiter in the first {limit} frames")

    def deserialize(self, frames: Sequence[Any]) -> Envelope:
        lim = self.limits
        identities, d = self.split_identities(frames)
        rest = frames[d + 1 :]
        if len(rest) < 4:
            raise ProtocolError(
                "malformed",
                f"expected signature, header, parent and content after the delimiter; got {len(rest)} frames",
            )
        if len(rest) - 4 > lim.max_buffers:
            raise ProtocolError("oversize", f"{len(rest) - 4} buffer frames; the limit is {lim.max_buffers}")
        total = 0
        for f in rest:
            n = _buffer_view(f).nbytes
            if n > lim.max_frame_bytes:
                raise ProtocolError("oversize", f"a {n}-byte frame is over the {lim.max_frame_bytes}-byte limit")
            total += n
        if total > lim.max_total_bytes:
            raise ProtocolError("oversize", f"the message is {total} bytes; the limit is {lim.max_total_bytes}")

        signature, signed = rest[0], rest[1:]
        if self.key:
            expected = self.sign(signed)
            if not hmac.compare_digest(_buffer_view(signature).tobytes(), expected):
                raise ProtocolError(
                    "bad_signature", "the message signature does not match (wrong key in the connection file?)"
                )

        h = _load_json(signed[0], "header", lim.max_json_bytes)
        try:
            header = Header(**{f.name: h[f.name] for f in fields(Header)})
        except KeyError as exc:
            raise ProtocolError("malformed", f"header lacks {exc.args[0]!r}") from None
        bad = [f.name for f in fields(Header) if not isinstance(getattr(header, f.name), str)]
        if bad:
            raise ProtocolError("malformed", f"header fields must be strings: {', '.join(bad)}")
        if self.replay is not None:
            try:
                self.replay.check(_buffer_view(signature).tobytes(), header.date)
            except ProtocolError as exc:
                exc.msg_id = header.msg_id
                raise
        try:
            parent_id, message = self._decode_after_header(header, signed)
        except ProtocolError as exc:
            exc.msg_id = header.msg_id  # lets the receiver address its error reply
            raise
        return Envelope(identities=identities, header=header, parent_id=parent_id, message=message)

    def _decode_after_header(self, header: Header, signed: Sequence[Any]) -> tuple[str, Message]:
        lim = self.limits
        if _major(header.protocol_version) != _major(PROTOCOL_VERSION):
            raise ProtocolError(
                "version_mismatch",
                f"the peer speaks protocol {header.protocol_version}, this side speaks {PROTOCOL_VERSION}; "
                "update the Blender add-on and the backend to the same release",
            )
        cls = self.types.get(header.msg_type)
        if cls is None:
            raise ProtocolError("unknown_msg_type", f"unknown msg_type {header.msg_type[:64]!r}")
        parent = _load_json(signed[1], "parent", lim.max_json_bytes)
        parent_id = parent.get("msg_id", "")
        if not isinstance(parent_id, str):
            raise ProtocolError("malformed", "parent msg_id must be a string")
        content = _load_json(signed[2], "content", lim.max_json_bytes)
        return parent_id, self._build(cls, content, signed[3:])

    def _build(self, cls: type[Message], content: dict[str, Any], buffers: Sequence[Any]) -> Message:
        descriptors = content.get("buffers", [])
        if not isinstance(descriptors, list) or len(descriptors) != len(buffers):
            n = len(descriptors) if isinstance(descriptors, list) else "no"
            raise ProtocolError("buffer_mismatch", f"{n} buffer descriptors for {len(buffers)} buffer frames")
        specs = {s.name: s for s in _specs(cls)}
        grouped: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for desc, buf in zip(descriptors, buffers):
            name = _check_descriptor(desc, buf, specs)
            grouped.setdefault(name, []).append((desc, buf))

        kwargs: dict[str, Any] = {}
        for spec in specs.values():
            if spec.kind == "json":
                if spec.name not in content:
                    if spec.required:
                        raise ProtocolError("invalid_content", f"{cls.msg_type} lacks the field {spec.name!r}")
                    continue
                value = content[spec.name]
                if not _conforms(value, spec.hint):
                    raise ProtocolError(
                        "invalid_content", f"{cls.msg_type}.{spec.name} has the wrong type ({type(value).__name__})"
                    )
                kwargs[spec.name] = value
                continue
            parts = grouped.get(spec.name)
            if not parts:
                if spec.optional:
                    kwargs[spec.name] = None
                    continue
                raise ProtocolError("buffer_mismatch", f"{cls.msg_type} lacks the buffer {spec.name!r}")
            if spec.kind == "splats":
                keys = [d.get("key") for d, _ in parts]
                if any(k not in SPLAT_KEYS for k in keys) or len(set(keys)) != len(keys):
                    raise ProtocolError("buffer_mismatch", f"bad or repeated splat array keys {keys}")
                try:
                    kwargs[spec.name] = unpack_splats([d for d, _ in parts], [_buffer_view(b) for _, b in parts])
                except SplatArrayError as exc:
                    raise ProtocolError("invalid_content", f"{spec.name}: {exc}") from None
            elif len(parts) != 1:
                raise ProtocolError("buffer_mismatch", f"{len(parts)} buffers for the field {spec.name!r}")
            elif spec.kind == "bytes":
                kwargs[spec.name] = _buffer_view(parts[0][1]).tobytes()
            else:
                kwargs[spec.name] = _unpack_array(parts[0][0], _buffer_view(parts[0][1]))
        return cls(**kwargs)
