"""Batches: many photos x many styles, on this machine or on a Ray cluster.

    plan.py        INPUT (a folder of photos, or a CSV) -> one :class:`~.plan.HeadSpec` per head
    head.py        one head, start to end, in whatever process runs it: photo bytes in, files out
    output.py      OUT/<photo>__<style>/ written atomically (temp folder + rename), done markers
    run.py         the driver loop both runners share: skip finished heads, retry, record failures
    run_local.py   heads in worker processes here, one at a time per GPU (one on CPU)
    run_ray.py     one Ray task per head (``num_gpus`` per head), on a cluster or a local Ray
    summary.py     summary.csv + index.html (contact sheets, figures, failures)

The command is ``python -m backend batch`` (:mod:`backend.cli.batch`). A head's files travel
back to the driver as bytes, so only the driver needs OUT and the photos; each node needs
the backend's environment and its models store.
"""

from __future__ import annotations

from .plan import BatchInputError, HeadSpec, plan_input

__all__ = ["BatchInputError", "HeadSpec", "plan_input"]
