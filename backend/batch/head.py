"""One head of a batch, start to end, in the process that runs it (a local worker process or
a Ray task): photo bytes in, the head's files out as bytes, so the node needs neither the
photos nor OUT, only the backend's environment and its models store.

The files are those of ``generate``: ``head.ply``, ``metrics.json``, ``turntable/frame_*.png``
and, when evaluated, ``eval/`` (contact sheet, front comparison, turntable video, metrics).
A failure a user can act on comes back as its typed error (code, message, hint) and is not
retried; anything else (a bug, out of memory) comes back ``retryable``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import HeadSpec

#: codes worth another attempt: the same head may well succeed elsewhere or later
RETRYABLE_CODES = frozenset({"internal_error", "worker_crashed", "out_of_memory", "worker_lost"})
#: tests: when set, a head writes ``<dir>/<name>.<pid>.started`` as it starts (to kill it mid-task)
PIDDIR_ENV = "PORTRAITSPLAT_BATCH_PIDDIR"


@dataclass
class EvalSettings:
    evaluate: bool = True
    views: int | None = None  # None: backend.eval's defaults
    size: int | None = None


@dataclass
class HeadOutcome:
    name: str
    ok: bool
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content
    metrics: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None  # code, message, hint
    seconds: float = 0.0
    host: str = ""
    pid: int = 0

    @property
    def retryable(self) -> bool:
        return not self.ok and (self.error or {}).get("code", "") in RETRYABLE_CODES


def failed(name: str, code: str, message: str, hint: str = "", seconds: float = 0.0) -> HeadOutcome:
    return HeadOutcome(name, False, error={"code": code, "message": message, "hint": hint}, seconds=seconds)


def produce_head(spec: HeadSpec, photo: bytes, settings: EvalSettings, ply_frame: str = "ply") -> HeadOutcome:
    """Run ``spec`` here; never raises for a head's own failure (it is in the outcome)."""
    from backend.errors import PortraitSplatError

    t0 = time.perf_counter()
    _mark_started(spec.name)
    work = Path(tempfile.mkdtemp(prefix=f"portraitsplat-batch-{spec.name[:40]}-"))
    try:
        metrics = _make(spec, photo, settings, ply_frame, work / "head")
        files = {
            p.relative_to(work / "head").as_posix(): p.read_bytes()
            for p in sorted((work / "head").rglob("*"))
            if p.is_file()
        }
        outcome = HeadOutcome(spec.name, True, files=files, metrics=metrics)
    except PortraitSplatError as exc:
        outcome = failed(spec.name, exc.code, exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - a bug in one head must not end the batch: typed, retried
        text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__
        code = "out_of_memory" if isinstance(exc, MemoryError) or "out of memory" in text.lower() else "internal_error"
        outcome = failed(
            spec.name,
            code,
            f"{type(exc).__name__}: {text}",
            "Retried automatically; if it keeps failing, run this head alone with `generate` and report it.",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome.seconds = round(time.perf_counter() - t0, 2)
    outcome.host, outcome.pid = socket.gethostname(), os.getpid()
    return outcome


def _make(spec: HeadSpec, photo: bytes, settings: EvalSettings, ply_frame: str, out: Path) -> dict[str, Any]:
    """What ``generate`` does for a local run, into ``out``."""
    from backend.errors import PipelineUnavailableError, PortraitSplatError
    from backend.image_io import load_image
    from backend.pipelines.outputs import write_outputs
    from backend.worker import json_metrics, load_pipelines

    pipelines, unavailable = load_pipelines([spec.pipeline])
    if spec.pipeline not in pipelines:
        offered, _ = load_pipelines(None)
        raise PipelineUnavailableError(spec.pipeline, list(offered), unavailable.get(spec.pipeline, "no such pipeline"))
    options = dict(spec.options)
    evaluate = settings.evaluate and spec.pipeline not in ("synthetic",)
    if evaluate:
        options.setdefault("turntable_frames", 0)  # the eval orbit's renders are the turntable
    t0 = time.perf_counter()
    suffix = Path(spec.photo).suffix.lower() or ".jpg"
    source = out.parent / f"photo{suffix}"
    source.write_bytes(photo)
    image = load_image(source)
    result = pipelines[spec.pipeline](
        image, preset=spec.preset, seed=spec.seed, options=options, reporter=None, model_cache=_model_cache()
    )
    write_outputs(out, result, ply_frame=ply_frame)
    metrics: dict[str, Any] = json_metrics(dict(result.metrics))
    metrics["generate_s"] = round(time.perf_counter() - t0, 2)
    if evaluate and result.evaluable:
        from backend.eval import evaluate_splats

        kwargs: dict[str, Any] = {}
        if settings.views:
            kwargs["views"] = settings.views
        if settings.size:
            kwargs["size"] = settings.size
        try:
            metrics["eval"] = evaluate_splats(
                result.splats, image, out / "eval", frames_dir=out / "turntable", style=options.get("style"), **kwargs
            )
        except PortraitSplatError as exc:  # as in the worker: the head stands, the reason is kept
            metrics["eval_error"] = f"[{exc.code}] {exc.message}"
    metrics["wall_s"] = round(time.perf_counter() - t0, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


_CACHE: Any = None


def _model_cache() -> Any:
    """One model cache per process: a worker that runs many heads keeps its networks warm."""
    global _CACHE
    if _CACHE is None:
        from backend.pipelines import ModelCache

        _CACHE = ModelCache()
    return _CACHE


def _mark_started(name: str) -> None:
    folder = os.environ.get(PIDDIR_ENV)
    if folder:
        Path(folder, f"{name}.{os.getpid()}.started").write_text(str(os.getpid()))
