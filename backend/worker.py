"""The worker process (``python -m backend.worker``), started by the local executor.

:func:`worker_main` imports the pipelines (and with them torch and the models) once, keeps
them warm between jobs, and runs each job with a :class:`JobReporter` that sends progress
and previews back and polls for cancellation. The server side of the channel is
:class:`backend.executors.local.WorkerExecutor`; the messages are in
:mod:`backend.executors.messages`.

Test-only pipelines: with ``PORTRAITSPLAT_TEST_PIPELINES=1`` in the environment the
worker also offers ``synthetic`` (``backend.pipelines.synthetic``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from blender_addon.core.protocol import JobFailed, Limits, Message, Preview, Progress, ProtocolError, Session
from blender_addon.core.splat_arrays import SplatArrays

from .executors.messages import (
    EXIT_RESTART,
    KEY_ENV,
    OOM_HINT,
    WORKER_TYPES,
    CancelJob,
    RunJob,
    StopWorker,
    WorkerExiting,
    WorkerReady,
    WorkerResult,
)

log = logging.getLogger(__name__)

TEST_PIPELINES_ENV = "PORTRAITSPLAT_TEST_PIPELINES"
TEST_PIPELINES = ("synthetic",)
PipelineFn = Callable[..., Any]  # (image, *, preset, seed, options, reporter) -> RunResult
PROGRESS_MIN_INTERVAL_S = 0.05  # progress events faster than 20 Hz are thinned (stage changes always pass)


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

    def __init__(
        self, socket: zmq.Socket[Any], session: Session, pipelines: dict[str, PipelineFn], parent_pid: int | None
    ):
        self.socket = socket
        self.session = session
        self.pipelines = pipelines
        self.model_cache: Any = None  # one backend.pipelines.ModelCache for every job: models stay warm
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
        from backend.errors import CancelledError, PipelineUnavailableError, PortraitSplatError

        self.current, self.cancel_requested = job, False
        reporter = JobReporter(self, job)
        exit_code = None
        try:
            fn = self.pipelines.get(job.pipeline)
            if fn is None:
                raise PipelineUnavailableError(job.pipeline, list(self.pipelines), "not loaded in this worker")
            image = _load_image(job)
            if self.model_cache is None:
                from backend.pipelines import ModelCache

                self.model_cache = ModelCache()
            result = fn(
                image,
                preset=job.preset,
                seed=job.seed,
                options=_options(job),
                reporter=reporter,
                model_cache=self.model_cache,
            )
            if self.cancel_requested:
                raise CancelledError("The job was cancelled.")
            splats = result.splats.astype("float32")
            splats.check_finite()
            metrics = json_metrics(result.metrics)
            if result.turntable:  # into the job's output folder, which the job store owns
                from backend.pipelines.outputs import write_turntable

                write_turntable(Path(job.output_dir) / "turntable", result.turntable)
            if job.evaluate and result.evaluable:
                metrics |= _evaluate(splats, image, Path(job.output_dir), reporter, job.options.get("style"))
            self.send(
                WorkerResult(
                    job_id=job.job_id,
                    splats=splats,
                    elapsed_s=time.monotonic() - reporter.t0,
                    metrics=metrics,
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


def _load_image(job: RunJob) -> np.ndarray:
    from backend.image_io import load_image

    kwargs: dict[str, int] = {}
    if job.max_image_pixels:
        kwargs["max_pixels"] = job.max_image_pixels
    if job.max_image_bytes:
        kwargs["max_bytes"] = job.max_image_bytes
    return load_image(Path(job.image_path), **kwargs)


def _evaluate(
    splats: SplatArrays, image: np.ndarray, output_dir: Path, reporter: JobReporter, style: str | None = None
) -> dict[str, Any]:
    """backend.eval on the finished head, into ``output_dir/eval`` (the full-size turntable
    replaces the pipeline's in ``output_dir/turntable``). A failed evaluation does not fail the
    job: its result is kept, and the reason is in ``eval_error``."""
    from backend.errors import PortraitSplatError
    from backend.eval import evaluate_splats

    reporter.progress("eval", 0, 1, "orbit renders and metrics")
    try:
        figures = evaluate_splats(
            splats, image, output_dir / "eval", frames_dir=output_dir / "turntable", style=style or None
        )
    except PortraitSplatError as exc:
        log.warning("evaluation failed: %s", exc)
        return {"eval_error": f"[{exc.code}] {exc.message}"}
    reporter.progress("eval", 1, 1)
    return {"eval": figures}


def _options(job: RunJob) -> dict[str, Any]:
    """The job's options; an evaluated job's turntable is the eval orbit's, so the pipeline
    renders none of its own (unless the job asked for frames)."""
    options = dict(job.options)
    if job.evaluate and job.pipeline not in TEST_PIPELINES:
        options.setdefault("turntable_frames", 0)
    return options


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


def json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
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


def load_pipelines(names: list[str] | None) -> tuple[dict[str, PipelineFn], dict[str, str]]:
    """(name -> run function, name -> why unavailable) for ``names`` (None: every pipeline
    ``backend.pipelines.available()`` offers, plus the test-only ones when enabled).
    Importing them here is what keeps them (and torch, and their models) warm."""
    test_ok = os.environ.get(TEST_PIPELINES_ENV) == "1"
    table: dict[str, PipelineFn] = {}
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
