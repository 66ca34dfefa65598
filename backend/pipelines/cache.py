"""Warm models between jobs: one :class:`ModelCache`, owned by whoever runs the pipelines.

A pipeline gets the cache as a named argument (``run(..., model_cache=cache)``), the way a
diffusers pipeline gets its components, and asks it for each network by slot::

    unet = model_cache.get("sd15", (str(path), device, dtype), lambda: load_sd15(path, ...))

A slot holds one model. The same key returns the held model; a different key frees the old
one first (and CUDA's cached blocks with it), then builds the new one. A pipeline called
without a cache gets a fresh one, so a standalone call works and keeps nothing.

Importing this module imports no torch (the light server process may import the package).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelCache:
    """Slot -> (key, model); see the module docstring."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Hashable, Any]] = {}

    def get(self, slot: str, key: Hashable, build: Callable[[], T]) -> T:
        """The model in ``slot`` if it was built for ``key``; else free the slot and ``build()``."""
        held = self._held.get(slot)
        if held is None or held[0] != key:
            self._held.pop(slot, None)  # free the old one before loading its replacement
            _free_cuda_cache()
            self._held[slot] = (key, build())
        return self._held[slot][1]

    def peek(self, slot: str) -> Any | None:
        """The model held in ``slot`` (None when empty); builds nothing."""
        held = self._held.get(slot)
        return None if held is None else held[1]

    def clear(self) -> None:
        """Drop every model."""
        had = bool(self._held)
        self._held.clear()
        if had:
            _free_cuda_cache()

    def __contains__(self, slot: str) -> bool:
        return slot in self._held

    def __len__(self) -> int:
        return len(self._held)


def _free_cuda_cache() -> None:
    torch = sys.modules.get("torch")  # nothing to free when torch was never imported
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
