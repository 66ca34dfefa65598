"""A preset by name with a job's options applied: typed errors, never a silent drop.

Every pipeline keeps its presets as a frozen dataclass per name (its ``PRESETS`` dict); a job's
``options`` override fields by name. An unknown name, or a value whose type does not fit the
field, is a :class:`~backend.errors.InvalidOptionError` before any work starts (a misspelt
``stpes`` must not run 20,000 steps quietly). ``style`` is accepted by every pipeline: the
server puts the job's style prompt there, and pipelines without a style stage ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

from ..errors import InvalidOptionError, UnknownPresetError

P = TypeVar("P")

SHARED_OPTIONS = ("style",)


def _fits(default: Any, value: Any) -> bool:
    """Does ``value`` have the type of the field whose default is ``default``?"""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # None, tuples, dicts: the pipeline checks these itself


def choose_preset(pipeline: str, presets: Mapping[str, P], name: str, options: Mapping[str, Any] | None) -> P:
    """``presets[name]`` with ``options`` applied (``style`` ignored); typed errors for bad input."""
    if name not in presets:
        raise UnknownPresetError(
            f"The {pipeline} pipeline has no preset {name!r}.", hint=f"Choose one of: {', '.join(presets)}."
        )
    base = presets[name]
    known = {f.name: getattr(base, f.name) for f in fields(base)}
    overrides = {k: v for k, v in (options or {}).items() if k not in SHARED_OPTIONS}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InvalidOptionError(
            f"The {pipeline} pipeline has no option {', '.join(map(repr, unknown))}.",
            hint=f"Options are the preset's fields: {', '.join(known)}.",
        )
    for key, value in overrides.items():
        if not _fits(known[key], value):
            raise InvalidOptionError(
                f"Option {key}={value!r} of the {pipeline} pipeline must be a "
                f"{type(known[key]).__name__}, like its default {known[key]!r}."
            )
    return replace(base, **overrides) if overrides else base
