"""Pipelines: compositions of face -> prior -> gaussians (-> guidance).

The contract every pipeline keeps (the worker process calls it; see ``backend/worker.py``):

    run(image, *, preset="default", seed=0, options=None, reporter=None, model_cache=None) -> RunResult

- ``image``: HxWx3 uint8 RGB numpy array (already validated by ``backend.image_io``).
- ``reporter``: a :class:`Reporter` (progress, previews, cancellation). ``None`` = silent.
- ``model_cache``: a :class:`~backend.pipelines.cache.ModelCache` that keeps loaded networks
  warm between jobs; whoever runs the pipelines owns one and passes it to every call.
  ``None`` = a fresh cache for this call (standalone use keeps nothing).
- Raises a ``backend.errors.PortraitSplatError`` subclass for anything a user can fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from blender_addon.core.splat_arrays import SplatArrays

from .cache import ModelCache as ModelCache  # re-exported: the worker builds one


class Reporter(Protocol):
    def progress(self, stage: str, step: int, total: int, message: str = "") -> None: ...
    def preview(self, splats: SplatArrays, step: int) -> None: ...
    def cancelled(self) -> bool: ...


class NullReporter:
    def progress(self, stage: str, step: int, total: int, message: str = "") -> None:
        pass

    def preview(self, splats: SplatArrays, step: int) -> None:
        pass

    def cancelled(self) -> bool:
        return False


@dataclass
class RunResult:
    splats: SplatArrays
    turntable: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 frames
    metrics: dict[str, float] = field(default_factory=dict)
    evaluable: bool = True  # a head of the photo's person: backend.eval can judge it (False: test stand-ins)


def available() -> dict[str, Callable[..., RunResult]]:
    """Pipeline name -> run function, for pipelines whose code is importable."""
    from . import instax, photo, stylize

    return {"photo": photo.run, "instax": instax.run, "stylize": stylize.run, "instax+stylize": stylize.run_instax}
