"""What every command shares: exit codes, one way to print a user-facing error, progress
bars, ``--option KEY=VALUE`` parsing."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

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


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> a dict (VALUE parsed as JSON where it can be)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PortraitSplatError(f"--option {pair!r} is not KEY=VALUE", code="bad_option")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
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
