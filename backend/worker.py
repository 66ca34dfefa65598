"""The executor: runs pipelines in a worker subprocess, never in the server process.

Two halves live here:

- :class:`WorkerExecutor` (server side, imported by ``backend.server``; no torch). It starts
  ``python -m backend.worker`` with a fresh PAIR socket and key per worker generation,
  hands it one job at a time, forwards what it reports, and kills and restarts it when
  it crashes, runs out of memory or ignores a cancel for longer than the grace period.
- :func:`worker_main` (the subprocess). It imports the pipelines (and with them torch and
  the models) once, keeps them warm between jobs, and runs each job with a
  :class:`JobReporter` that sends progress and previews back and polls for cancellation.

The channel speaks the public protocol's envelope (signed, arrays as buffers, no pickle)
with a few internal message types (:data:`WORKER_TYPES`).

A later executor (Ray: one task per job, ``num_gpus=1``) keeps the same surface:
``start / run / cancel / drain / poll_exit / kill / stop`` and the ``state`` attribute.

Test-only pipelines: with ``PORTRAITSPLAT_TEST_PIPELINES=1`` in the environment the
worker also offers ``synthetic`` (``backend.pipelines.synthetic``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from blender_addon.core.protocol import (
    JobFailed,
    Limits,
    Message,
    Preview,
    Progress,
    ProtocolError,
    Session,
    registry,
)
from blender_addon.core.splat_arrays import SplatArrays

log = logging.getLogger(__name__)

TEST_PIPELINES_ENV = "PORTRAITSPLAT_TEST_PIPELINES"
KEY_ENV = "PORTRAITSPLAT_WORKER_KEY"
TEST_PIPELINES = ("synthetic",)
EXIT_RESTART = 75  # the worker asks to be replaced (after an out-of-memory error)
PROGRESS_MIN_INTERVAL_S = 0.05  # progress events faster than 20 Hz are thinned (stage changes always pass)

OOM_HINT = (
    "Try the 'preview' or 'fast' preset, close other programs that use the GPU, or run on a "
    "GPU with more memory. The backend restarted its worker, so you can try again at once."
)


# ------------------------------------------------------------- internal messages
@dataclass
class RunJob(Message):
    msg_type = "run_job"
    job_id: str
    image_path: str
    pipeline: str
    preset: str = "default"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    preview_hz: float = 5.0  # 0 disables previews
    preview_dtype: str = "float32"
    max_image_pixels: int | None = None
    max_image_bytes: int | None = None


@dataclass
class CancelJob(Message):
    msg_type = "cancel_job"
    job_id: str


@dataclass
class StopWorker(Message):
    msg_type = "stop_worker"


@dataclass
class WorkerReady(Message):
    msg_type = "worker_ready"
    pid: int
    pipelines: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    vram_free: int | None = None
    vram_total: int | None = None
    torch_version: str = ""


@dataclass
class WorkerExiting(Message):
    """The worker will exit after its next message (it asks to be replaced): take it no job."""

    msg_type = "worker_exiting"
    reason: str = ""


@dataclass
class WorkerResult(Message):
    msg_type = "worker_result"
    job_id: str
    splats: SplatArrays
    elapsed_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


WORKER_TYPES = registry(
    RunJob, CancelJob, StopWorker, WorkerReady, WorkerExiting, WorkerResult, Progress, Preview, JobFailed
)


# ==================================================================== server side
class WorkerExecutor:
    """One worker subprocess, one job at a time.

    ``state``: ``stopped`` -> ``starting`` -> ``ready`` <-> ``busy``; ``exiting`` once the
    worker has said it will exit; back to ``stopped`` when the process exits (see
    :meth:`poll_exit`). Jobs go only to a ``ready`` worker.

    Args:
        context: the server's zmq context.
        pipelines: pipeline names to load; None loads every available one.
        python: interpreter for the worker (default: this one).
        env: extra environment variables for the worker.
    """

    def __init__(
        self,
        context: zmq.Context,
        *,
        pipelines: tuple[str, ...] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ):
        self.context = context
        self.pipelines = pipelines
        self.python = python or sys.executable
        self.env = dict(env or {})
        self.state = "stopped"
        self.info: WorkerReady | None = None
        self.socket: zmq.Socket | None = None
        self.proc: subprocess.Popen | None = None
        self.session: Session | None = None
        self.job_id: str | None = None
        self.generation = 0
        self.started_at = 0.0
        self.killed = False  # the last exit was our own kill

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("worker already started")
        self.generation += 1
        key = secrets.token_hex(32)
        self.session = Session(key, types=WORKER_TYPES, limits=Limits.unlimited())
        sock = self.context.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.socket = sock
        repo_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, **self.env, KEY_ENV: key}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
        cmd = [
            self.python,
            "-m",
            "backend.worker",
            "--endpoint",
            f"tcp://127.0.0.1:{port}",
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.pipelines is not None:
            cmd += ["--pipelines", ",".join(self.pipelines)]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.state, self.info, self.job_id, self.killed = "starting", None, None, False
        self.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", self.generation, self.proc.pid)

    def run(self, job: RunJob) -> None:
        if self.state != "ready":
            raise RuntimeError(f"worker is {self.state}, not ready")
        self._send(job)
        self.state, self.job_id = "busy", job.job_id

    def cancel(self, job_id: str) -> None:
        if self.job_id == job_id and self.socket is not None:
            try:
                self._send(CancelJob(job_id=job_id))
            except zmq.Again:
                log.warning("worker did not take the cancel request; it will be killed at the deadline")

    def job_ended(self) -> None:
        """The server saw the running job's final message: take the next one."""
        if self.state == "busy":
            self.state = "ready"
        self.job_id = None

    def drain(self, max_messages: int = 1000) -> list[Message]:
        """Messages from the worker, without blocking. ``WorkerReady`` updates ``info`` and
        ``state`` and is returned too."""
        out: list[Message] = []
        if self.socket is None or self.session is None:
            return out
        for _ in range(max_messages):
            try:
                env = self.session.recv(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                break
            except ProtocolError as exc:
                log.error("undecodable message from the worker: %s", exc)
                continue
            msg = env.message
            if isinstance(msg, WorkerReady):
                self.info = msg
                self.state = "ready" if self.job_id is None else "busy"
            elif isinstance(msg, WorkerExiting):
                log.info("worker %d is exiting: %s", self.generation, msg.reason)
                self.state = "exiting"
            out.append(msg)
        return out

    def poll_exit(self) -> int | None:
        """If the worker process has exited: clean up and return its exit code."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        log.log(
            logging.INFO if self.killed or code == 0 else logging.ERROR,
            "worker %d (pid %d) exited with %s",
            self.generation,
            self.proc.pid,
            _describe_exit(code),
        )
        self._cleanup()
        return code

    def kill(self) -> int | None:
        """Hard stop (SIGKILL); returns the exit code. Safe to call when not running."""
        if self.proc is None:
            return None
        self.killed = True
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self._cleanup()
        return code

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it has not after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.socket is not None:
            try:
                self._send(StopWorker())
                self.proc.wait(timeout=timeout)
            except (zmq.Again, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _send(self, msg: Message) -> None:
        assert self.socket is not None and self.session is not None
        self.session.send(self.socket, msg)

    def _cleanup(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket, self.proc, self.session = None, None, None
        self.state, self.job_id = "stopped", None


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def crash_error(code: int) -> dict[str, str]:
    """The job_failed error for a job whose worker died under it."""
    if code == EXIT_RESTART:
        return {"code": "out_of_memory", "message": "The worker ran out of memory.", "hint": OOM_HINT}
    hint = "Try again; if it happens again, check the backend log and report it."
    if code == -getattr(signal, "SIGKILL", 9):
        hint = "The system may have run out of memory and killed the worker. " + OOM_HINT
    return {
        "code": "worker_crashed",
        "message": f"The generation worker stopped unexpectedly ({_describe_exit(code)}).",
        "hint": hint,
    }


# ==================================================================== worker side
class JobReporter:
    """The Reporter a pipeline gets inside the worker.

    - ``progress`` and ``preview`` raise ``backend.errors.CancelledError`` once the job has
      been cancelled, so a pipeline that only reports still stops promptly;
    - previews are rate-limited to ``preview_hz`` and copied (to ``preview_dtype``) before
      sending, so the pipeline may keep optimising the arrays in place; a preview that
      finds the channel full is dropped (latest-wins);
    - progress is thinned to 20 Hz, except stage changes and the last step.
    """

    def __init__(self, worker: Worker, job: RunJob):
        self.worker = worker
        self.job = job
        self.t0 = time.monotonic()
        self.preview_interval = math.inf if job.preview_hz <= 0 else 1.0 / job.preview_hz
        self._last_preview = -math.inf
        self._last_progress = -math.inf
        self._stage: str | None = None
        self._stage_t0 = self.t0
        self.dropped_previews = 0

    def cancelled(self) -> bool:
        self.worker.poll_control()
        return self.worker.cancel_requested

    def _check(self) -> None:
        if self.cancelled():
            from backend.errors import CancelledError

            raise CancelledError("The job was cancelled.")

    def progress(self, stage: str, step: int, total: int, message: str = "") -> None:
        self._check()
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_t0 = stage, now
        elif now - self._last_progress < PROGRESS_MIN_INTERVAL_S and step < total:
            return
        self._last_progress = now
        eta = None
        if 0 < step <= total:
            eta = (now - self._stage_t0) / step * (total - step)
        self.worker.send(
            Progress(
                job_id=self.job.job_id,
                stage=str(stage),
                step=int(step),
                total=int(total),
                eta_s=eta,
                elapsed_s=now - self.t0,
                message=str(message),
            )
        )

    def preview(self, splats: SplatArrays, step: int) -> None:
        self._check()
        now = time.monotonic()
        if now - self._last_preview < self.preview_interval:
            return
        self._last_preview = now
        snapshot = splats.astype(self.job.preview_dtype)  # a copy: safe to send zero-copy
        try:
            self.worker.send(Preview(job_id=self.job.job_id, step=int(step), splats=snapshot), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_previews += 1


class Worker:
    """The worker process's loop: wait for a job, run it, report, repeat."""

    def __init__(self, socket: zmq.Socket, session: Session, pipelines: dict[str, Callable], parent_pid: int | None):
        self.socket = socket
        self.session = session
        self.pipelines = pipelines
        self.parent_pid = parent_pid
        self.current: RunJob | None = None
        self.cancel_requested = False
        self.stop_requested = False

    def parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def send(self, msg: Message, flags: int = 0) -> None:
        while True:
            try:
                self.session.send(self.socket, msg, flags=flags)
                return
            except zmq.Again:
                if flags & zmq.NOBLOCK:
                    raise
                if not self.parent_alive():
                    raise SystemExit("the server is gone") from None

    def poll_control(self) -> None:
        """Read cancel/stop requests without blocking (called from the reporter)."""
        while True:
            try:
                env = self.session.recv(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                break
            except ProtocolError as exc:
                log.error("undecodable message from the server: %s", exc)
                continue
            self._control(env.message)
        if not self.parent_alive():
            raise SystemExit("the server is gone")

    def _control(self, msg: Message) -> None:
        if isinstance(msg, CancelJob):
            if self.current is not None and msg.job_id == self.current.job_id:
                self.cancel_requested = True
        elif isinstance(msg, StopWorker):
            self.stop_requested = self.cancel_requested = True
        elif isinstance(msg, RunJob):
            log.error(
                "got job %s while running %s; refusing it", msg.job_id, self.current.job_id if self.current else None
            )
            self.send(
                JobFailed(
                    job_id=msg.job_id, code="internal_error", message="The worker was busy.", hint="Submit again."
                )
            )

    def loop(self) -> int:
        while not self.stop_requested:
            if not self.socket.poll(500):
                if not self.parent_alive():
                    return 0
                continue
            try:
                env = self.session.recv(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                continue
            except ProtocolError as exc:
                log.error("undecodable message from the server: %s", exc)
                continue
            msg = env.message
            if isinstance(msg, RunJob):
                code = self.run_job(msg)
                if code is not None:
                    return code
            else:
                self._control(msg)
        return 0

    def run_job(self, job: RunJob) -> int | None:
        """Run one job and report its end. Returns an exit code when the worker must be
        replaced (out of memory), else None."""
        from backend.errors import CancelledError, PortraitSplatError

        self.current, self.cancel_requested = job, False
        reporter = JobReporter(self, job)
        exit_code = None
        try:
            fn = self.pipelines.get(job.pipeline)
            if fn is None:
                raise PortraitSplatError(
                    f"The pipeline {job.pipeline!r} is not available in this backend.",
                    code="unknown_pipeline",
                    hint=f"Available: {', '.join(sorted(self.pipelines)) or 'none'}.",
                )
            image = _load_image(job)
            result = fn(image, preset=job.preset, seed=job.seed, options=dict(job.options), reporter=reporter)
            if self.cancel_requested:
                raise CancelledError("The job was cancelled.")
            splats = result.splats.astype("float32")
            splats.check_finite()
            if result.turntable:  # beside the job's photo, so the job folder holds them too
                from backend.pipelines.outputs import write_turntable

                write_turntable(Path(job.image_path).parent / "turntable", result.turntable)
            self.send(
                WorkerResult(
                    job_id=job.job_id,
                    splats=splats,
                    elapsed_s=time.monotonic() - reporter.t0,
                    metrics=_json_metrics(result.metrics),
                )
            )
        except CancelledError as exc:
            self.send(
                JobFailed(job_id=job.job_id, code="cancelled", message=exc.message or "The job was cancelled.", hint="")
            )
        except PortraitSplatError as exc:
            self.send(JobFailed(job_id=job.job_id, code=exc.code, message=exc.message, hint=exc.hint))
        except SystemExit:
            raise
        except BaseException as exc:
            if _is_out_of_memory(exc):
                log.error("job %s ran out of memory: %s", job.job_id, exc)
                self.send(WorkerExiting(reason="out of memory: a fresh process frees it all"))
                self.send(
                    JobFailed(
                        job_id=job.job_id,
                        code="out_of_memory",
                        message=f"Out of memory: {_first_line(exc)}",
                        hint=OOM_HINT,
                    )
                )
                exit_code = EXIT_RESTART
            elif isinstance(exc, KeyboardInterrupt):
                raise
            else:
                log.exception("job %s failed", job.job_id)
                self.send(
                    JobFailed(
                        job_id=job.job_id,
                        code="internal_error",
                        message=f"{type(exc).__name__}: {_first_line(exc)}",
                        hint="This is a bug in the backend; its log has the traceback. Please report it.",
                    )
                )
        finally:
            self.current = None
            gc.collect()
        return exit_code


def _load_image(job: RunJob):
    from backend.image_io import load_image

    kwargs = {}
    if job.max_image_pixels:
        kwargs["max_pixels"] = job.max_image_pixels
    if job.max_image_bytes:
        kwargs["max_bytes"] = job.max_image_bytes
    return load_image(Path(job.image_path), **kwargs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _json_metrics(metrics: dict) -> dict[str, Any]:
    """Only finite numbers, strings and bools survive (the wire refuses NaN)."""
    out: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, (bool, str)):
            out[str(key)] = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                out[str(key)] = int(number) if isinstance(value, int) else number
    return out


def load_pipelines(names: list[str] | None) -> tuple[dict[str, Callable], dict[str, str]]:
    """(name -> run function, name -> why unavailable) for ``names`` (None: every pipeline
    ``backend.pipelines.available()`` offers, plus the test-only ones when enabled).
    Importing them here is what keeps them (and torch, and their models) warm."""
    test_ok = os.environ.get(TEST_PIPELINES_ENV) == "1"
    table: dict[str, Callable] = {}
    unavailable: dict[str, str] = {}
    regular = None if names is None else [n for n in names if n not in TEST_PIPELINES]
    if regular is None or regular:
        try:
            from backend.pipelines import available

            found = available()
        except Exception as exc:
            log.exception("could not load the pipelines")
            found = {}
            for name in regular or ["photo"]:
                unavailable[name] = f"{type(exc).__name__}: {_first_line(exc)}"
        for name in found if regular is None else regular:
            if name in found:
                table[name] = found[name]
            else:
                unavailable.setdefault(name, "no such pipeline")
    tests = [n for n in TEST_PIPELINES if (test_ok if names is None else n in names)]
    for name in tests:
        if not test_ok:
            unavailable[name] = f"test-only pipeline; set {TEST_PIPELINES_ENV}=1 to enable it"
            continue
        from backend.pipelines import synthetic

        table[name] = synthetic.run
    return table, unavailable


def device_info() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {"device": "cpu", "torch_version": ""}
    info: dict[str, Any] = {"device": "cpu", "torch_version": str(torch.__version__)}
    try:
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info.update(device=f"cuda:0 ({torch.cuda.get_device_name(0)})", vram_free=int(free), vram_total=int(total))
    except Exception as exc:  # noqa: BLE001 - a broken driver shows up in welcome, not as a crash
        info["device"] = f"cpu (CUDA unusable: {_first_line(exc)})"
    return info


def models_info() -> dict[str, Any]:
    """Model name -> what ``welcome`` reports about it (file checks only; no hashing)."""
    from backend import models

    try:
        statuses = models.check(verify=False)
    except Exception as exc:  # noqa: BLE001 - a broken model config shows in welcome, not as a crash
        return {"error": _first_line(exc)}
    return {
        s.name: {
            "present": s.present,
            "size": s.size_on_disk if s.present else s.spec.size_bytes,
            "licence": s.spec.licence,
            "pipelines": list(s.spec.pipelines),
            "optional": s.spec.optional,
            "fix": s.fix,
        }
        for s in statuses
    }


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL this worker when the server dies (kill -9 included)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backend.worker", description="PortraitSplat worker (started by the server)"
    )
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--pipelines", default=None, help="comma-separated names (default: all available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[worker %(process)d] %(levelname)s %(name)s: %(message)s")
    _set_parent_death_signal()
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 0  # the server died before we got here
    key = os.environ.pop(KEY_ENV, "")
    if not key:
        print(f"error: {KEY_ENV} is not set; the worker is started by `python -m backend serve`", file=sys.stderr)
        return 2
    context = zmq.Context(io_threads=1)
    sock = context.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, 4)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.connect(args.endpoint)
    session = Session(key, types=WORKER_TYPES, limits=Limits.unlimited())
    names = None if args.pipelines in (None, "", "all") else [n.strip() for n in args.pipelines.split(",") if n.strip()]
    pipelines, unavailable = load_pipelines(names)
    worker = Worker(sock, session, pipelines, args.parent_pid)
    dev = device_info()
    try:
        worker.send(
            WorkerReady(
                pid=os.getpid(), pipelines=sorted(pipelines), unavailable=unavailable, models=models_info(), **dev
            )
        )
        return worker.loop()
    except SystemExit as exc:
        log.info("worker exiting: %s", exc)
        return 0
    finally:
        sock.close(linger=0)
        context.term()


if __name__ == "__main__":
    sys.exit(worker_main())
