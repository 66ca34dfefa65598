"""INPUT -> head specs: a folder of photos (x the ``--style`` list), or a CSV with a row per head.

CSV columns (a header row is required; only ``photo`` must be there):

    photo      path to the photo, relative to the CSV's folder (or absolute)
    style      style prompt ("" for none)
    pipeline   default: the command's --pipeline
    preset     default: the command's --preset
    seed       integer; default: the command's --seed
    options    a JSON object, or KEY=VALUE pairs separated by ';' (over the command's --option)
    name       the head's folder name (default: <photo stem>__<style slug>)

Every bad row is reported at once, with its row number, before any head runs
(:class:`BatchInputError`, code ``bad_batch``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import PortraitSplatError
from blender_addon.core.batch import NO_STYLE, head_name, slug

__all__ = ["NO_STYLE", "BatchInputError", "HeadSpec", "head_name", "plan_input", "slug"]

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
CSV_COLUMNS = ("photo", "style", "pipeline", "preset", "seed", "options", "name")
MAX_REPORTED_ROWS = 20
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,150}$")


class BatchInputError(PortraitSplatError):
    """The batch's INPUT cannot be planned: no photos, or CSV rows that are not usable."""

    code = "bad_batch"
    hint = "Fix the rows listed above (row numbers count the header as row 1) and run the batch again."


@dataclass(frozen=True)
class HeadSpec:
    """One head of a batch: what to run and the folder name it goes to."""

    name: str
    photo: str  # absolute path, read by the driver
    style: str = ""
    pipeline: str = "photo"
    preset: str = "default"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What decides the head's result (not where the photo lies): a rerun with another
        fingerprint remakes the head."""
        digest = hashlib.sha256()
        try:
            digest.update(Path(self.photo).read_bytes())
        except OSError:
            digest.update(self.photo.encode())
        recipe = {k: v for k, v in asdict(self).items() if k not in ("name", "photo")}
        digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


OptionParser = Callable[[list[str], str], dict[str, Any]]  # (KEY=VALUE pairs, pipeline) -> options


def plan_input(
    source: Path,
    *,
    styles: Sequence[str] = (),
    pipeline: str = "photo",
    preset: str = "default",
    seed: int = 0,
    options: dict[str, Any] | None = None,
    parse_pairs: OptionParser | None = None,
    known_options: Callable[[str], Collection[str] | None] | None = None,
) -> list[HeadSpec]:
    """The heads of a batch, in a stable order.

    ``parse_pairs`` turns a CSV row's ``KEY=VALUE`` pairs into options (the CLI passes its
    ``--option`` parser) and ``known_options(pipeline)`` names a pipeline's options (None:
    unknown here, not checked); a row whose options the pipeline does not have is a bad row.
    """
    base = dict(options or {})
    if source.is_dir():
        photos = photos_in(source)
        if not photos:
            raise BatchInputError(
                f"{source} holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))}).",
                hint="Point the batch at a folder of portrait photos, or at a CSV.",
            )
        specs = [
            HeadSpec(head_name(p, s), str(p.resolve()), s, pipeline, preset, seed, _with_style(base, s))
            for p in photos
            for s in (list(styles) or [""])
        ]
        _check_names(specs, [f"{Path(s.photo).name} x {s.style or NO_STYLE!r}" for s in specs])
        return specs
    if source.is_file() and source.suffix.lower() == ".csv":
        return _plan_csv(source, base, pipeline, preset, seed, parse_pairs, known_options)
    if source.is_file() and source.suffix.lower() in PHOTO_SUFFIXES:
        return [
            HeadSpec(head_name(source, s), str(source.resolve()), s, pipeline, preset, seed, _with_style(base, s))
            for s in (list(styles) or [""])
        ]
    raise BatchInputError(
        f"{source} is not a folder of photos, a CSV or a photo.",
        hint="Give a folder of photos, or a CSV with a 'photo' column.",
    )


def _with_style(options: dict[str, Any], style: str) -> dict[str, Any]:
    out = dict(options)
    if style:
        out.setdefault("style", style)
    return out


def _plan_csv(
    path: Path,
    base: dict[str, Any],
    pipeline: str,
    preset: str,
    seed: int,
    parse_pairs: OptionParser | None,
    known_options: Callable[[str], Collection[str] | None] | None,
) -> list[HeadSpec]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"Cannot read {path}: {exc}", hint="Save the CSV as UTF-8 text.") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "photo" not in columns:
        raise BatchInputError(
            f"{path} has no 'photo' column (its header row: {', '.join(columns) or 'empty'}).",
            hint=f"The first row names the columns: {', '.join(CSV_COLUMNS)} (only 'photo' is required).",
        )
    unknown = sorted(set(columns) - set(CSV_COLUMNS) - {""})
    if unknown:
        raise BatchInputError(
            f"{path} has columns this batch does not know: {', '.join(unknown)}.",
            hint=f"The columns are: {', '.join(CSV_COLUMNS)}.",
        )
    specs: list[HeadSpec] = []
    where: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(reader, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        try:
            specs.append(_row_spec(row, path.parent, base, pipeline, preset, seed, parse_pairs, known_options))
            where.append(f"row {number}")
        except PortraitSplatError as exc:
            problems.append(f"row {number}: {exc.message}")
    if problems:
        shown = problems[:MAX_REPORTED_ROWS]
        more = len(problems) - len(shown)
        raise BatchInputError(
            f"{path}: {len(problems)} bad row(s):\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )
    if not specs:
        raise BatchInputError(f"{path} has no rows.", hint="Add one row per head under the header row.")
    _check_names(specs, where)
    return specs


def _row_spec(
    row: dict[str, str],
    folder: Path,
    base: dict[str, Any],
    pipeline: str,
    preset: str,
    seed: int,
    parse_pairs: OptionParser | None,
    known_options: Callable[[str], Collection[str] | None] | None,
) -> HeadSpec:
    if not row.get("photo"):
        raise BatchInputError("the photo column is empty.")
    photo = Path(row["photo"]).expanduser()
    photo = photo if photo.is_absolute() else folder / photo
    if not photo.is_file():
        raise BatchInputError(f"no photo at {photo}.")
    style = row.get("style", "")
    pipe = row.get("pipeline") or pipeline
    try:
        row_seed = int(row["seed"]) if row.get("seed") else seed
    except ValueError:
        raise BatchInputError(f"seed {row['seed']!r} is not an integer.") from None
    options = dict(base)
    text = row.get("options", "")
    if text:
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise BatchInputError(f"options is not a JSON object: {exc}.") from None
            if not isinstance(parsed, dict):
                raise BatchInputError("options is not a JSON object.")
        elif parse_pairs is not None:
            parsed = parse_pairs([p for p in text.split(";") if p.strip()], pipe)
        else:
            raise BatchInputError("options must be a JSON object here.")
        options |= parsed
    known = known_options(pipe) if known_options is not None else None
    if known is not None:
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise BatchInputError(f"the {pipe} pipeline has no option {', '.join(map(repr, unknown))}.")
    name = row.get("name") or head_name(photo, style)
    if not _NAME_OK.match(name):
        raise BatchInputError(f"name {name!r} is not a usable folder name (letters, digits, . _ + -).")
    return HeadSpec(
        name, str(photo.resolve()), style, pipe, row.get("preset") or preset, row_seed, _with_style(options, style)
    )


def _check_names(specs: list[HeadSpec], where: list[str]) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for spec, w in zip(specs, where):
        if spec.name in seen:
            clashes.append(f"{w} and {seen[spec.name]} both make {spec.name!r}")
        seen.setdefault(spec.name, w)
    if clashes:
        raise BatchInputError(
            "Two heads would share a folder: " + "; ".join(clashes[:MAX_REPORTED_ROWS]) + ".",
            hint="Give the rows a 'name' column with a different name each (or different styles).",
        )
