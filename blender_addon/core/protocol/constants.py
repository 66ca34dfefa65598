"""Constants, limits and the one error type of the PortraitSplat wire protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PortraitSplatError

# major.minor; peers with a different major refuse each other (1.1: delete_job; 1.2: evaluate;
# 1.3: submit_job.deliver_result -> job_done.splats, get_result.include_ply)
PROTOCOL_VERSION = "1.3"
DELIM = b"<IDS|MSG>"
SIGNATURE_SCHEME = "hmac-sha256"
MiB = 2**20

# dtype names allowed in buffer descriptors (always little-endian on the wire)
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16",
        "float32",
        "float64",
        "uint8",
        "int8",
        "uint16",
        "int16",
        "uint32",
        "int32",
        "int64",
        "uint64",
        "bool",
    )
}
BYTES_DTYPE = "bytes"  # a ``bytes`` field (encoded image, PLY file); itemsize 1
MAX_NDIM = 8
SPLAT_KEYS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")

ERROR_CODES = (
    "malformed",  # not a multipart envelope (no delimiter, missing frames, too many frames)
    "oversize",  # a frame or the whole message is over the configured limit
    "bad_signature",  # HMAC check failed
    "bad_json",  # header, parent or content is not a JSON object
    "version_mismatch",  # the peer speaks another major protocol version
    "unknown_msg_type",  # msg_type is not one this endpoint knows
    "buffer_mismatch",  # buffer frames do not match their descriptors (count, dtype, size)
    "invalid_content",  # the content does not fit the message's dataclass
    "replayed",  # a signed message this endpoint has already accepted (a captured copy sent again)
    "stale",  # a signed message dated outside the replay window (old, or the clocks disagree)
)

HINTS = {
    "bad_signature": "Re-read the connection file: the server writes a new key each time it starts.",
    "version_mismatch": "Install the Blender add-on and the backend from the same release.",
    "oversize": "Send a smaller photo, or start the backend with a larger --max-frame-mb.",
    "replayed": "Every request must be new; if you did not resend it, someone on the network may have.",
    "stale": "Check that the clocks of this machine and the backend's agree (within the replay window).",
}
DEFAULT_HINT = "The message did not follow the PortraitSplat protocol."


class ProtocolError(PortraitSplatError):
    """An incoming (or outgoing) message that breaks the protocol; ``code`` is in ERROR_CODES."""

    def __init__(self, code: str, message: str, msg_id: str = ""):
        super().__init__(message, code=code, hint=HINTS.get(code, DEFAULT_HINT))
        self.msg_id = msg_id  # the offending message's id, once its signed header was read

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every received message. The server keeps them small; a
    client, which receives results, uses :meth:`for_client`."""

    max_frame_bytes: int = 64 * MiB
    max_total_bytes: int = 256 * MiB
    max_json_bytes: int = 1 * MiB
    max_buffers: int = 32
    max_identities: int = 8

    @classmethod
    def for_client(cls) -> Limits:
        return cls(max_frame_bytes=4096 * MiB, max_total_bytes=8192 * MiB, max_json_bytes=64 * MiB, max_buffers=64)

    @classmethod
    def unlimited(cls) -> Limits:
        big = 2**62
        return cls(max_frame_bytes=big, max_total_bytes=big, max_json_bytes=big, max_buffers=4096, max_identities=64)
