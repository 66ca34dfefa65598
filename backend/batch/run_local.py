"""Heads on this machine: one worker process per lane, one head at a time per lane.

A lane is a GPU (its worker sees only that GPU) or, without one, the CPU (one lane; with
``--workers N``, N lanes splitting the cores between them). The
worker process is started once per lane (``spawn``: no forked torch state) and keeps its
pipelines and models warm between heads. A worker that dies (a CUDA crash, the kernel's
out-of-memory killer, ``kill -9``) costs only its current head: it comes back as a
``worker_crashed`` outcome, the driver retries it, and the lane gets a fresh process.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .head import EvalSettings, HeadOutcome, failed, produce_head
from .plan import HeadSpec


def default_lanes() -> list[str | None]:
    """One lane per visible CUDA device, else one CPU lane (None)."""
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install runs on the CPU
        n = 0
    if n == 0:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(n)]
    return list(ids[:n])


def _init_lane(device: str | None, threads: int | None) -> None:
    """In the fresh worker process, before torch is imported: its GPU, and its share of the
    CPU threads when several CPU lanes share this machine."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(threads)


@dataclass
class _Lane:
    device: str | None
    threads: int | None = None
    pool: cf.ProcessPoolExecutor | None = None
    future: cf.Future[HeadOutcome] | None = None
    spec: HeadSpec | None = None
    pids: set[int] = field(default_factory=set)

    def start(self) -> cf.ProcessPoolExecutor:
        if self.pool is None:
            self.pool = cf.ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_lane,
                initargs=(self.device, self.threads),
            )
        return self.pool

    def reset(self, wait: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)
            self.pool = None


class LocalRunner:
    def __init__(
        self,
        settings: EvalSettings,
        *,
        lanes: list[str | None] | None = None,
        ply_frame: str = "ply",
    ):
        self.settings = settings
        self.ply_frame = ply_frame
        devices = lanes if lanes is not None else default_lanes()
        cpu_lanes = sum(1 for d in devices if d is None)
        threads = max(1, (os.cpu_count() or 1) // cpu_lanes) if cpu_lanes > 1 else None
        self.lanes = [_Lane(d, threads if d is None else None) for d in devices]
        self.slots = len(self.lanes)
        gpus = [d for d in (lane.device for lane in self.lanes) if d is not None]
        self.where = f"local, {self.slots} worker process{'es' if self.slots > 1 else ''} on " + (
            f"GPU {', '.join(gpus)}" if gpus else "the CPU"
        )

    def submit(self, spec: HeadSpec, photo: bytes) -> Any:
        lane = next(lane for lane in self.lanes if lane.future is None)
        lane.spec = spec
        lane.future = lane.start().submit(produce_head, spec, photo, self.settings, self.ply_frame)
        return id(lane)

    def wait(self, timeout: float) -> list[tuple[Any, HeadOutcome]]:
        busy = {lane.future: lane for lane in self.lanes if lane.future is not None}
        if not busy:
            return []
        finished, _ = cf.wait(list(busy), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        ended = []
        for future in finished:
            lane = busy[future]
            assert lane.spec is not None
            try:
                outcome = future.result()
            except BrokenProcessPool:
                outcome = failed(
                    lane.spec.name,
                    "worker_crashed",
                    "The worker process running this head stopped unexpectedly.",
                    "Retried automatically in a fresh process; if it keeps happening, check memory use.",
                )
                lane.reset()
            except Exception as exc:  # noqa: BLE001 - e.g. an outcome that could not be pickled
                outcome = failed(lane.spec.name, "internal_error", f"{type(exc).__name__}: {exc}")
            lane.future, lane.spec = None, None
            ended.append((id(lane), outcome))
        return ended

    def close(self) -> None:
        for lane in self.lanes:
            lane.reset(wait=lane.future is None)
