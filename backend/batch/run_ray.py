"""Heads on Ray: one task per head, on an existing cluster or on a local Ray.

``connect(address)`` joins the cluster at ``address`` (``ray.init(address=...)``; "auto"
finds a cluster this machine is part of) or, with no address, starts a local Ray on this
machine. Each head is a task asking for ``num_gpus`` (``--gpus-per-head``; default 1 when the
cluster has GPUs, else 0) and
one CPU. The photo goes into the object store once and the head's files come back through
it, so a node needs neither the photos nor OUT: only this backend installed (the same
version, ``pip install -e .``) and the models store (``PORTRAITSPLAT_MODELS`` or the default
path, shared or synced: ``python -m backend models check`` on a node says what it has;
``env`` / ``--ray-env KEY=VALUE`` sets it for the tasks when the nodes' own environment does not).

Ray's own task retries are off (``max_retries=0``): a worker or node that dies comes back
as a ``worker_lost`` outcome and the driver's loop retries it like any other retryable
failure, with one bound (``--max-attempts``) for every runner.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .head import EvalSettings, HeadOutcome, failed, produce_head
from .plan import HeadSpec

log = logging.getLogger("backend.batch")


def _head_task(spec: HeadSpec, photo: bytes, settings: EvalSettings, ply_frame: str) -> HeadOutcome:
    return produce_head(spec, photo, settings, ply_frame)


class RayRunner:
    def __init__(
        self,
        settings: EvalSettings,
        *,
        address: str | None = None,
        gpus_per_head: float | None = None,
        cpus_per_head: float = 1.0,
        num_cpus: int | None = None,
        ply_frame: str = "ply",
        max_in_flight: int | None = None,
        env: dict[str, str] | None = None,
    ):
        import ray

        self.ray = ray
        self.settings = settings
        self.ply_frame = ply_frame
        self.started_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            elif num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            # a local Ray's workers inherit this environment (models store, test switches); a
            # cluster's have their nodes' own (each node's PORTRAITSPLAT_MODELS, for instance)
            ray.init(**kwargs)
            self.started_ray = True
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        if gpus_per_head is None:  # one GPU per head where the cluster has GPUs
            gpus_per_head = 1.0 if gpus else 0.0
        if gpus_per_head > 0 and gpus < gpus_per_head:
            from backend.errors import PortraitSplatError

            raise PortraitSplatError(
                f"The Ray cluster has {gpus:g} GPU(s); each head asks for {gpus_per_head:g}.",
                code="no_gpu",
                hint="Use --gpus-per-head 0 to run on CPUs, or add GPU nodes to the cluster.",
            )
        fits = int(gpus // gpus_per_head) if gpus_per_head > 0 else int(cpus // max(cpus_per_head, 1e-3))
        # keep a few heads queued beyond what runs at once, not the whole batch (photos stay small)
        self.slots = max_in_flight or max(1, 2 * fits)
        task_options: dict[str, Any] = {
            "num_gpus": gpus_per_head,
            "num_cpus": cpus_per_head,
            "max_retries": 0,
            "name": "portraitsplat_head",
        }
        if env:  # e.g. where the nodes keep the models store (costs Ray's runtime-env setup, seconds)
            task_options["runtime_env"] = {"env_vars": dict(env)}
        self.remote = ray.remote(_head_task).options(**task_options)
        self.refs: dict[Any, str] = {}
        self._photo_refs: dict[str, Any] = {}
        self.where = f"Ray at {address or 'a local Ray'}: {cpus:g} CPU, {gpus:g} GPU; {gpus_per_head:g} GPU per head"

    def submit(self, spec: HeadSpec, photo: bytes) -> Any:
        ref = self._photo_refs.get(spec.photo)
        if ref is None:  # one copy per photo in the object store, whatever its number of styles
            ref = self._photo_refs[spec.photo] = self.ray.put(photo)
        task = self.remote.remote(spec, ref, self.settings, self.ply_frame)
        self.refs[task] = spec.name
        return task

    def wait(self, timeout: float) -> list[tuple[Any, HeadOutcome]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        ended = []
        for ref in ready:
            name = self.refs.pop(ref)
            ended.append((ref, self._outcome(ref, name)))
        return ended

    def _outcome(self, ref: Any, name: str) -> HeadOutcome:
        exc_mod = self.ray.exceptions
        lost: tuple[type[BaseException], ...] = tuple(
            t
            for t in (
                getattr(exc_mod, n, None)
                for n in ("WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError", "ActorDiedError")
            )
            if isinstance(t, type) and issubclass(t, BaseException)
        )
        try:
            outcome = self.ray.get(ref)
        except lost as exc:
            return failed(
                name,
                "worker_lost",
                f"The Ray worker running this head was lost ({type(exc).__name__}).",
                "Retried automatically; if it keeps happening, check the nodes' memory and logs (ray status).",
            )
        except exc_mod.RayError as exc:
            text = str(exc).strip().splitlines()
            return failed(name, "internal_error", f"{type(exc).__name__}: {text[0] if text else ''}"[:500])
        if not isinstance(outcome, HeadOutcome):
            return failed(name, "internal_error", f"The task returned {type(outcome).__name__}, not a head.")
        return outcome

    def close(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.refs.clear()
        self._photo_refs.clear()
        if self.started_ray and not os.environ.get("PORTRAITSPLAT_KEEP_RAY"):
            self.ray.shutdown()
