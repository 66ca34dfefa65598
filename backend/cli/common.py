"""What every command shares: exit codes, one way to print a user-facing error, progress
bars, ``--option KEY=VALUE`` parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Collection
from typing import Any

from tqdm import tqdm

from backend.errors import InvalidOptionError
from blender_addon.core.errors import PortraitSplatError

MiB = 2**20
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def print_error(code: str, message: str, hint: str = "") -> None:
    print(f"error [{code}]: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def user_errors(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    """Run a command; a ``PortraitSplatError`` (the backend's, the client's, the wire's)
    becomes its code, message and hint on stderr and an exit code: 2 when there is no usable
    connection file, else 1."""

    @functools.wraps(fn)
    def run(args: Any) -> int:
        from blender_addon.core.connection import ConnectionFileError

        try:
            return fn(args)
        except PortraitSplatError as exc:
            print_error(exc.code, exc.message, exc.hint)
            return EXIT_USAGE if isinstance(exc, ConnectionFileError) else EXIT_FAILED

    return run


#: Where each pipeline keeps its option names: a module with ``PRESETS`` (name -> a dataclass
#: whose fields are the options) or ``DEFAULTS`` (option -> default). ``style`` is every
#: pipeline's (backend.pipelines.presets.SHARED_OPTIONS).
_OPTION_SOURCES = {
    "photo": "backend.pipelines.photo",
    "instax": "backend.pipelines.instax",
    "stylize": "backend.pipelines.stylize_presets",
    "instax+stylize": "backend.pipelines.stylize_presets",
    "synthetic": "backend.pipelines.synthetic",
}
SHARED_OPTIONS = ("style",)


def option_names(pipeline: str) -> frozenset[str] | None:
    """The option names ``pipeline`` accepts, from its code in this install; ``None`` for a
    pipeline this install does not know (a server may still offer it: it then checks them)."""
    import dataclasses
    import importlib

    source = _OPTION_SOURCES.get(pipeline)
    if source is None:
        return None
    module = importlib.import_module(source)
    presets = getattr(module, "PRESETS", None)
    if presets:
        names = {f.name for f in dataclasses.fields(next(iter(presets.values())))}
    else:
        names = set(module.DEFAULTS)
    return frozenset(names | set(SHARED_OPTIONS))


def _option_value(key: str, text: str) -> Any:
    """VALUE as JSON where it is JSON (numbers, true/false/null, lists, objects, quoted
    strings), else the text itself; text that starts like JSON must be JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "[", '"'):
            raise InvalidOptionError(
                f"--option {key}={text}: the value starts like JSON but is not valid JSON ({exc}).",
                hint="Quote the whole option for the shell, e.g. --option 'radius_range=[0.6, 0.8]'.",
            ) from None
        return text


def parse_options(pairs: list[str], *, pipeline: str = "", known: Collection[str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--option``, repeatable) -> a dict, the one parser for every
    command that takes pipeline options (``generate`` here and ``generate --connect``).

    VALUE is parsed as JSON where it can be (``steps=3`` -> 3, ``mvdream=false`` -> False,
    ``encoder=taesd`` -> "taesd"). Raises :class:`InvalidOptionError` (code ``bad_option``) for
    a pair without ``=`` or key, a key given twice, a value that starts like JSON but is not,
    or (``known`` given: the pipeline's option names) a key the pipeline does not have.
    Whether a value fits its option is the pipeline's check, before it starts any work.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidOptionError(
                f"--option {pair!r} is not KEY=VALUE.", hint="Write each option as KEY=VALUE, e.g. --option steps=300."
            )
        if key in options:
            raise InvalidOptionError(f"--option {key} is given twice.", hint="Give each option once.")
        options[key] = _option_value(key, value)
    if known is not None:
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidOptionError(
                f"The {pipeline or 'chosen'} pipeline has no option {', '.join(map(repr, unknown))}.",
                hint=f"Its options: {', '.join(sorted(known))}.",
            )
    return options


class TqdmReporter:
    """Progress as one bar per stage, for a pipeline run here or a job's ``progress`` events."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def progress(self, stage: str, step: int, total: int, message: str = "") -> None:
        if self.quiet:
            return
        if stage != self._stage or self._bar is None:
            self.close()
            self._stage = stage
            self._bar = tqdm(total=total, desc=stage, unit="step", dynamic_ncols=True, file=sys.stderr)
        self._bar.total = total
        self._bar.n = step
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def preview(self, splats: Any, step: int) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
