"""The service under test: a real server subprocess (``ServerProc``) and helpers to wait on
its events. Shared by the service tests and the pipeline tests that go through a server;
the ``server`` and ``client`` fixtures are in conftest.py.

Every server is started in its own process group and the whole group is killed at
teardown, so no server or worker outlives its test.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from blender_addon.core import protocol as P
from blender_addon.core.client import Client

REPO = Path(__file__).resolve().parent.parent

FAST = {"steps": 4, "step_seconds": 0.01, "n_gaussians": 300}
LONG = {"steps": 100_000, "step_seconds": 0.02, "n_gaussians": 300}


def png_bytes(size=(96, 80), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


PHOTO = png_bytes()


class ServerProc:
    """``python -m backend serve`` in its own process group."""

    def __init__(self, root: Path, *extra: str, pipelines: str = "synthetic"):
        self.root = root
        self.conn = root / "conn.json"
        self.state = root / "state"
        self.log = root / "server.log"
        self.extra = list(extra)
        self.pipelines = pipelines
        self.proc: subprocess.Popen | None = None
        self.pgids: list[int] = []

    def start(self, timeout: float = 60.0, fresh: bool = True) -> ServerProc:
        if fresh:
            self.conn.unlink(missing_ok=True)
        mtime = self.conn.stat().st_mtime_ns if self.conn.exists() else None
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--connection-file",
            str(self.conn),
            "--state-dir",
            str(self.state),
            "--pipelines",
            self.pipelines,
            "--heartbeat",
            "0.2",
            *self.extra,
        ]
        env = {**os.environ, "PORTRAITSPLAT_TEST_PIPELINES": "1", "PYTHONPATH": _pythonpath()}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pgids.append(self.proc.pid)
        deadline = time.monotonic() + timeout
        while not self.conn.exists() or self.conn.stat().st_mtime_ns == mtime:  # written atomically once bound
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    def client(self, **kwargs) -> Client:
        client = Client(self.conn, **kwargs)
        client.connect(timeout=30)
        return client

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pgid in self.pgids:  # the server and any worker it started
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None:
            self.proc.wait(10)


def wait_ready(client: Client, timeout: float = 60.0) -> None:
    """Until a heartbeat says the worker is up (the server accepts jobs before that too)."""
    deadline = time.monotonic() + timeout
    while client.last_heartbeat is None or client.last_heartbeat.worker_state not in ("ready", "busy"):
        assert time.monotonic() < deadline, "worker did not become ready"
        client._events.extend(client.poll(timeout=0.2))


def wait_for(client: Client, job_id: str, predicate, timeout: float = 30.0) -> list[P.Message]:
    """Poll until an event of ``job_id`` satisfies ``predicate``; returns the events seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"timed out; saw {[type(m).__name__ for m in seen]}"
        for msg in client.poll(timeout=0.1):
            if getattr(msg, "job_id", None) == job_id:
                seen.append(msg)
                if predicate(msg):
                    return seen


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _pythonpath() -> str:
    """The repo first, then whatever the caller's environment already had (e.g. carried wheels)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
