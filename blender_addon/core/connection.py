"""The connection file: how a client finds and authenticates to a running backend.

Jupyter-style JSON, written by ``python -m backend serve`` with mode 0600 (it holds the
signing key), read by the Blender add-on and the CLI::

    {"transport": "tcp", "ip": "127.0.0.1", "router_port": 53001, "pub_port": 53002,
     "key": "<hex>", "signature_scheme": "hmac-sha256", "protocol_version": "1.0",
     "server_version": "0.1.0", "pid": 1234, "curve_server_key": null}

bpy-free and torch-free: the add-on imports it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import PortraitSplatError
from .protocol import PROTOCOL_VERSION, SIGNATURE_SCHEME

ANY_ADDRESSES = ("0.0.0.0", "*", "::", "")


class ConnectionFileError(PortraitSplatError, ValueError):
    """The connection file is missing, unreadable or incomplete."""

    code = "bad_connection_file"
    hint = "Start the backend (python -m backend serve), or point the add-on at its connection file."


def new_key() -> str:
    return secrets.token_hex(32)


@dataclass
class ConnectionInfo:
    ip: str
    router_port: int
    pub_port: int
    key: str  # HMAC key; "" only for an unsigned loopback server
    transport: str = "tcp"
    signature_scheme: str = SIGNATURE_SCHEME
    protocol_version: str = PROTOCOL_VERSION
    server_version: str = ""
    pid: int | None = None
    curve_server_key: str | None = None  # Z85 public key when CURVE encryption is on

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode("utf-8")

    def _host(self) -> str:
        # a server bound to every interface is reached on this machine through loopback
        host = "127.0.0.1" if self.ip in ANY_ADDRESSES else self.ip
        return f"[{host}]" if ":" in host else host

    @property
    def router_url(self) -> str:
        return f"{self.transport}://{self._host()}:{self.router_port}"

    @property
    def pub_url(self) -> str:
        return f"{self.transport}://{self._host()}:{self.pub_port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        names = {f.name for f in fields(cls)}
        missing = [n for n in ("ip", "router_port", "pub_port", "key") if n not in data]
        if missing:
            raise ConnectionFileError(f"connection file lacks {', '.join(missing)}")
        if data.get("signature_scheme", SIGNATURE_SCHEME) != SIGNATURE_SCHEME:
            raise ConnectionFileError(
                f"unsupported signature scheme {data['signature_scheme']!r}; expected {SIGNATURE_SCHEME!r}"
            )
        info = cls(**{k: v for k, v in data.items() if k in names})
        if not isinstance(info.router_port, int) or not isinstance(info.pub_port, int):
            raise ConnectionFileError("connection file ports must be integers")
        return info


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> Path:
    """Write atomically with mode 0600 (the file holds the signing key)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):  # the O_CREAT mode is masked by the umask; be exact
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info.to_dict(), fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConnectionFileError(
            f"no connection file at {path}; start the backend with: python -m backend serve --connection-file {path}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConnectionFileError(f"cannot read the connection file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConnectionFileError(f"{path} is not a connection file (not a JSON object)")
    return ConnectionInfo.from_dict(data)
