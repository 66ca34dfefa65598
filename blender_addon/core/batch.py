"""A batch through the service: several photos x several styles, queued as one job each.

bpy-free (the add-on's batch operator and tests use it): :func:`plan_heads` names each head
the way ``python -m backend batch`` names its folders (``<photo stem>__<style slug>``), and
:func:`submit_batch` reads every photo first (so a missing one queues nothing), then submits
one ``submit_job`` per head; the jobs then show in the job list like any other, labelled with
their head's name. No new message: a server of protocol 1.0 on takes them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import PortraitSplatError

NO_STYLE = "plain"  # the style part of a head's name when it has no style prompt


def slug(text: str, limit: int = 40) -> str:
    """A style prompt as a name part: 'Oil painting, Rembrandt' -> 'oil-painting-rembrandt'."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    if not s:
        return NO_STYLE if not text.strip() else "style-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def head_name(photo: str | os.PathLike[str], style: str) -> str:
    """``<photo stem>__<style slug>``: the head's folder in a batch's output, its label in the job list."""
    stem = os.path.splitext(os.path.basename(os.fspath(photo)))[0]
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-.") or "photo"
    return f"{stem}__{slug(style)}"


@dataclass(frozen=True)
class BatchHead:
    name: str
    photo: str
    style: str = ""


class BatchError(PortraitSplatError):
    code = "bad_batch"
    hint = "Pick readable photos, and one style per line (or none)."


def plan_heads(photos: Sequence[str], styles: Sequence[str] = ()) -> list[BatchHead]:
    """Each photo x each style (no style: one head per photo), duplicates dropped, in order."""
    heads: dict[str, BatchHead] = {}
    style_list = [s.strip() for s in styles if s.strip()] or [""]
    for photo in photos:
        for style in style_list:
            head = BatchHead(head_name(photo, style), os.fspath(photo), style)
            if head.name in heads and heads[head.name].photo != head.photo:
                raise BatchError(
                    f"Two photos make the head {head.name!r}: {heads[head.name].photo} and {head.photo}.",
                    hint="Rename one of the photos.",
                )
            heads.setdefault(head.name, head)
    if not heads:
        raise BatchError("The batch has no photos.")
    return list(heads.values())


class _Submitter(Protocol):
    def submit(self, image: bytes, *args: Any, **kwargs: Any) -> str: ...


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def submit_batch(
    client: _Submitter,
    heads: Sequence[BatchHead],
    *,
    pipeline: str = "photo",
    preset: str = "default",
    seed: int = 0,
    options: dict[str, Any] | None = None,
    evaluate: bool = True,
    deliver_result: bool = False,
    read: Callable[[str], bytes] = _read,
) -> list[tuple[BatchHead, str]]:
    """Queue one job per head; returns (head, job id) in order. Every photo is read before the
    first submit, so an unreadable one queues nothing; if the server refuses a head part-way,
    :class:`BatchError` says which jobs were queued already (they stay queued)."""
    images: dict[str, bytes] = {}
    for head in heads:
        if head.photo not in images:
            try:
                images[head.photo] = read(head.photo)
            except OSError as exc:
                raise BatchError(f"Cannot read the photo {head.photo}: {exc.strerror or exc}") from exc
    queued: list[tuple[BatchHead, str]] = []
    for head in heads:
        try:
            job_id = client.submit(
                images[head.photo],
                pipeline=pipeline,
                preset=preset,
                seed=seed,
                style_prompt=head.style,
                options=dict(options or {}),
                image_name=head.name,
                preview_hz=0.0,  # N heads do not stream previews into one scene
                evaluate=evaluate,
                deliver_result=deliver_result,
            )
        except PortraitSplatError as exc:
            done = ", ".join(f"{h.name} ({j})" for h, j in queued) or "none"
            raise BatchError(
                f"The backend refused head {head.name}: {exc.message} Queued before it: {done}.",
                hint=exc.hint or "Fix the head's photo or settings and queue the rest again.",
            ) from exc
        queued.append((head, job_id))
    return queued
