"""Start a local PortraitSplat backend as a subprocess and wait for its connection file.

bpy-free and torch-free: the add-on calls this with the Python interpreter the user chose
(the backend's own venv, which lives outside Blender), and tests call it from plain Python.

    proc = launch_backend(BackendCommand(python="/path/to/venv/bin/python",
                                         connection_file=Path("conn.json"),
                                         state_dir=Path("state")))
    info = proc.connection_info          # the parsed JSON the server wrote
    ...
    proc.stop()

The backend writes the connection file atomically (temp file, then rename) once its sockets
are bound, so the file appearing is the readiness handshake: no sleeps, no port probing.
A stale file from an earlier run is removed before launch so it is never mistaken for the
new server's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import PortraitSplatError


class BackendLaunchError(PortraitSplatError, RuntimeError):
    """The backend could not be started; ``message`` says why and ``hint`` what to do."""

    code = "backend_launch_failed"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message, hint=hint)


@dataclass
class BackendCommand:
    python: str  # interpreter of the backend's venv
    connection_file: Path
    state_dir: Path
    workdir: Path | None = None  # added to PYTHONPATH and used as cwd (a source checkout)
    extra_args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return [
            self.python,
            "-m",
            "backend",
            "serve",
            "--connection-file",
            str(self.connection_file),
            "--state-dir",
            str(self.state_dir),
            *self.extra_args,
        ]


class BackendProcess:
    """A running backend subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, popen: subprocess.Popen[bytes], command: BackendCommand, log_path: Path, log_file: IO[bytes]):
        self.popen = popen
        self.command = command
        self.log_path = log_path
        self._log_file = log_file
        self.connection_info: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0, poll_interval: float = 0.05) -> dict[str, Any]:
        """Block until the connection file parses, the process exits, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        path = self.command.connection_file
        while True:
            if path.exists():
                try:
                    self.connection_info = json.loads(path.read_text())
                    return self.connection_info
                except (OSError, ValueError):
                    pass  # being written by a writer that does not rename; try again
            if not self.alive():
                raise BackendLaunchError(
                    f"the backend exited with code {self.popen.returncode} before it was ready:\n{self.log_tail()}",
                    "check the Python path in the add-on preferences points at the backend's venv "
                    "(it must be able to run 'python -m backend serve'); the full log is at "
                    f"{self.log_path}",
                )
            if time.monotonic() > deadline:
                self.stop(timeout=2.0)
                raise BackendLaunchError(
                    f"the backend did not write {path} within {timeout:.0f} s",
                    f"see its log at {self.log_path}",
                )
            time.sleep(poll_interval)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate (then kill) the process; returns its exit code."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        return self.popen.returncode


def check_python(python: str) -> str:
    """Resolve the interpreter path or raise a :class:`BackendLaunchError` that says what to set."""
    if not python:
        raise BackendLaunchError(
            "no backend Python interpreter is configured",
            "set 'Backend Python' in Edit > Preferences > Add-ons > PortraitSplat to the python of "
            "the venv where the backend is installed",
        )
    if os.path.dirname(python):
        resolved = python if os.path.isfile(python) else None
    else:
        resolved = shutil.which(python)
    if resolved is None:
        raise BackendLaunchError(
            f"the backend Python '{python}' does not exist",
            "point 'Backend Python' at e.g. /path/to/portraitsplat/.venv/bin/python "
            "(Windows: .venv\\Scripts\\python.exe)",
        )
    return resolved


def launch_backend(command: BackendCommand, *, timeout: float = 60.0, wait: bool = True) -> BackendProcess:
    """Start ``python -m backend serve`` and (by default) wait for its connection file."""
    command.python = check_python(command.python)
    command.connection_file = Path(command.connection_file)
    command.state_dir = Path(command.state_dir)
    command.state_dir.mkdir(parents=True, exist_ok=True)
    command.connection_file.parent.mkdir(parents=True, exist_ok=True)
    if command.connection_file.exists():
        command.connection_file.unlink()
    env = dict(os.environ)
    # Blender sets PYTHONHOME/PYTHONPATH for its own interpreter; the backend venv must not see them.
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    if command.workdir is not None:
        env["PYTHONPATH"] = str(command.workdir)
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = command.state_dir / "backend.log"
    log_file = open(log_path, "ab")
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    try:
        popen = subprocess.Popen(
            command.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(command.workdir) if command.workdir else None,
            env=env,
            **kwargs,
        )
    except OSError as exc:
        log_file.close()
        raise BackendLaunchError(f"could not start '{command.python}': {exc}", "check the Backend Python path") from exc
    proc = BackendProcess(popen, command, log_path, log_file)
    if wait:
        proc.wait_ready(timeout=timeout)
    return proc
