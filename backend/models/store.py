"""Where the models are (root, per-model overrides by env var or TOML), whether they are
intact (safetensors headers, empty files) and fit their loader (header-level probes,
:mod:`.probe`), ``models check`` and the submit-time check.

An override may point at a folder (the repository layout) or, for the models that come as one
file (:data:`SINGLE_FILE_MODELS`: an A1111/ComfyUI SD1.5 checkpoint, a ControlNet, the
IP-Adapter, SV3D), at that file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelMissingError, PortraitSplatError

from .header import HeaderError, tensor_index
from .registry import (
    ENV_CONFIG,
    ENV_PREFIX,
    ENV_ROOT,
    GB,
    MB,
    REGISTRY,
    REPO_ROOT,
    ModelCorruptError,
    ModelSpec,
    get_spec,
    required_models,
)

# --- where they are --------------------------------------------------------------------------


def models_root() -> Path:
    """``$PORTRAITSPLAT_MODELS`` or ``<repo>/.cache/models`` (an ignored folder)."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "models"


def insightface_root(root: Path | None = None) -> Path:
    """The ``root`` argument insightface expects: it reads ``<this>/models/<pack>/``."""
    return Path(root or models_root()) / "insightface"


#: Models whose override may name a single weight file, and the suffixes it may have.
SINGLE_FILE_MODELS: dict[str, tuple[str, ...]] = {
    "sd15": (".safetensors", ".ckpt"),
    "controlnet_face": (".safetensors", ".ckpt", ".pth"),
    "ip_adapter_faceid": (".bin", ".safetensors"),
    "sv3d_u": (".safetensors",),
    "sv3d_p": (".safetensors",),
}


#: Another on-disk layout a model folder may have instead of ``spec.required``: TAESD as
#: taesd.py's two files (ComfyUI ``models/vae_approx/``).
ALTERNATIVE_LAYOUTS: dict[str, tuple[str, ...]] = {"taesd": ("taesd_encoder.*", "taesd_decoder.*")}


def config_path(root: Path | None = None) -> Path:
    """The model config file: ``$PORTRAITSPLAT_MODELS_CONFIG`` or ``<root>/models.toml``."""
    cfg = os.environ.get(ENV_CONFIG)
    return Path(cfg).expanduser() if cfg else Path(root if root is not None else models_root()) / "models.toml"


def _config_overrides(root: Path) -> dict[str, Path]:
    path = config_path(root)
    if not path.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise PortraitSplatError(
            f"The model config {path} could not be read: {exc}",
            hint='Fix the TOML syntax; it needs a [paths] table of name = "/path".',
            code="bad_model_config",
        ) from exc
    paths = data.get("paths", {})
    return {k: Path(str(v)).expanduser() for k, v in paths.items()}


def _default_path(spec: ModelSpec, root: Path) -> Path:
    if spec.source == "insightface":
        return insightface_root(root) / "models" / spec.repo
    return root / spec.name


def _resolve(name: str, root: Path | None = None) -> tuple[Path, str]:
    """(folder, where it came from: "env" | "config" | "default")."""
    spec = get_spec(name)
    root = Path(root) if root is not None else models_root()
    env = os.environ.get(ENV_PREFIX + name.upper())
    if env:
        return Path(env).expanduser(), "env"
    overrides = _config_overrides(root)
    if name in overrides:
        return overrides[name], "config"
    return _default_path(spec, root), "default"


def _missing_files(spec: ModelSpec, folder: Path) -> list[str]:
    if folder.is_file():
        suffixes = SINGLE_FILE_MODELS.get(spec.name)
        if suffixes is None or folder.suffix not in suffixes:
            return ["(a folder, not a file)"] if suffixes is None else [f"(a {' or '.join(suffixes)} file)"]
        return []
    if not folder.is_dir():
        return list(spec.required) or ["(folder)"]
    alt = ALTERNATIVE_LAYOUTS.get(spec.name)
    if alt and all(any(p.is_file() for p in folder.glob(pat)) for pat in alt):
        return []
    return [pat for pat in spec.required if not any(p.is_file() for p in folder.glob(pat))]


def _missing_message(spec: ModelSpec, folder: Path, origin: str, missing: list[str]) -> ModelMissingError:
    where = {"env": f" (set by {ENV_PREFIX}{spec.name.upper()})", "config": " (set in the model config)"}.get(
        origin, ""
    )
    if missing == list(spec.required) or missing == ["(folder)"]:
        what = "is not there"
    elif missing[0].startswith("(a "):
        what = f"must be {missing[0].strip('()')}"
    else:
        what = f"is incomplete: no {', '.join(missing)}"
    hint = f"Run: {spec.download_command}"
    if spec.gated:
        hint += f" (gated: accept the licence at {spec.page} and set HF_TOKEN first)"
    return ModelMissingError(f"Model '{spec.name}' ({spec.repo}, {spec.purpose}) {what} at {folder}{where}.", hint=hint)


def model_path(name: str, root: Path | None = None) -> Path:
    """The folder (or, for :data:`SINGLE_FILE_MODELS`, the file) holding model ``name``; raises
    :class:`ModelMissingError` if it is absent or incomplete (the message names
    ``python -m backend models download --only NAME``)."""
    spec = get_spec(name)
    folder, origin = _resolve(name, root)
    missing = _missing_files(spec, folder)
    if missing:
        raise _missing_message(spec, folder, origin, missing)
    return folder


# --- integrity -----------------------------------------------------------------------------


def _corrupt(spec_name: str | None, path: Path, why: str) -> ModelCorruptError:
    fix = f"python -m backend models download --only {spec_name}" if spec_name else "download it again"
    return ModelCorruptError(
        f"The weight file {path} is damaged: {why}.", hint=f"Delete it and fetch it again: rm '{path}' && {fix}"
    )


def verify_safetensors(path: Path, name: str | None = None) -> None:
    """Cheap integrity check of a ``.safetensors`` file: the header parses, each tensor's byte
    range fits its shape and the file is as long as the header says (a truncated download fails
    here). Reads only the header (:func:`backend.models.header.tensor_index`)."""
    try:
        tensor_index(Path(path))
    except HeaderError as exc:
        raise _corrupt(name, Path(path), str(exc)) from exc


def verify_folder(folder: Path, name: str | None = None) -> None:
    """:func:`verify_safetensors` on every ``.safetensors`` file below ``folder`` (or on
    ``folder`` itself when it is a file); empty files fail."""
    folder = Path(folder)
    for p in [folder] if folder.is_file() else sorted(folder.rglob("*")):
        if not p.is_file() or ".cache" in p.parts:
            continue
        if p.suffix == ".safetensors":
            verify_safetensors(p, name)
        elif p.suffix in (".bin", ".onnx", ".pth", ".ckpt") and p.stat().st_size == 0:
            raise _corrupt(name, p, "the file is empty")


# --- check ---------------------------------------------------------------------------------


@dataclass
class ModelStatus:
    """What :func:`check` found for one model."""

    spec: ModelSpec
    path: Path
    present: bool
    origin: str  # "default", "env" or "config"
    size_on_disk: int = 0  # bytes found in the folder
    problem: str = ""  # why it is not usable ("" when present and intact)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fix(self) -> str:
        if self.present:
            return ""
        cmd = self.spec.download_command
        fix = f"accept licence at {self.spec.page}, set HF_TOKEN, then {cmd}" if self.spec.gated else cmd
        if self.origin != "default" and self.problem != "missing":
            where = f"{ENV_PREFIX}{self.name.upper()}" if self.origin == "env" else "its entry in models.toml [paths]"
            fix = f"point {where} at a matching file, or {fix}"
        return fix


def _folder_size(folder: Path) -> int:
    if folder.is_file():
        return folder.stat().st_size
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


def _probe_context(root: Path | None) -> dict[str, object]:
    """What a probe needs beyond its own files: the IP-Adapter is checked against the UNet
    config of the SD1.5 it will be loaded into (the installed folder's, else SD1.5's)."""
    folder, _ = _resolve("sd15", root)
    cfg = folder / "unet" / "config.json"
    if folder.is_dir() and cfg.is_file():
        try:
            return {"sd15_unet_config": json.loads(cfg.read_text())}
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def probe_model(name: str, path: Path, root: Path | None = None) -> None:
    """Integrity (:func:`verify_folder`) and layout (:func:`backend.models.probe.probe`) of one
    present model: raises :class:`ModelCorruptError` with what is wrong and the fix."""
    from .probe import probe

    verify_folder(path, name)
    probe(name, path, **_probe_context(root))


def check(names: Iterable[str] | None = None, root: Path | None = None, *, verify: bool = True) -> list[ModelStatus]:
    """Status of every registered model (or of ``names``): present, intact, size, where.
    ``verify`` also reads the weight files' headers and holds their keys against the loader's
    layout (cheap: no tensor is read); a model that fails shows as BROKEN with the reason."""
    out = []
    for name in names or REGISTRY:
        spec = get_spec(name)
        folder, origin = _resolve(name, root)
        missing = _missing_files(spec, folder)
        problem = ""
        if missing:
            problem = (
                "missing" if missing in (list(spec.required), ["(folder)"]) else f"incomplete: no {', '.join(missing)}"
            )
        elif verify:
            try:
                probe_model(name, folder, root)
            except ModelCorruptError as exc:
                problem = exc.message
        out.append(ModelStatus(spec, folder, not problem, origin, _folder_size(folder), problem))
    return out


def _human(n: int) -> str:
    for unit, div in (("GB", GB), ("MB", MB), ("kB", 1000)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def format_check(statuses: list[ModelStatus]) -> str:
    """The ``models check`` table."""
    rows = [("model", "status", "size", "licence", "needed by", "path / fix")]
    for s in statuses:
        state = "present" if s.present else ("MISSING" if s.problem == "missing" else "BROKEN")
        size = _human(s.size_on_disk) if s.present else f"({_human(s.spec.size_bytes)})"
        needed = ",".join(s.spec.pipelines) or ("optional" if s.spec.optional else "-")
        where = str(s.path) if s.present else f"{s.fix}" + (f"  [{s.problem}]" if s.problem != "missing" else "")
        rows.append((s.name, state, size, s.spec.licence, needed, where))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines.insert(1, "-" * min(160, sum(widths) + 12 + len(rows[0][5])))
    return "\n".join(lines)


def ensure_models(pipeline: str, root: Path | None = None, *, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Submit-time check: the folders (or files) of every model ``pipeline`` needs, or one
    :class:`ModelMissingError` listing all that are missing or broken (a file its loader would
    refuse: the header-level probe of :func:`probe_model`, no torch) and the one command that
    fetches them. ``{}`` for the weight-free pipelines. ``names`` checks those models instead (a
    pipeline whose options need only some of its models, or an optional one)."""
    names = required_models(pipeline) if names is None else list(names)
    found, missing, broken = {}, [], {}
    for name in names:
        try:
            found[name] = model_path(name, root)
        except ModelMissingError:
            missing.append(name)
            continue
        try:
            probe_model(name, found[name], root)
        except ModelCorruptError as exc:
            broken[name] = exc.message
            del found[name]
    if broken and not missing:
        first = next(iter(broken))
        raise ModelCorruptError(
            f"The '{pipeline}' pipeline needs models whose files do not fit their loader: " + " ".join(broken.values()),
            hint=f"Run: python -m backend models download --only {' '.join(broken)}"
            + (f" (or point the override for {first} at a matching file)" if len(broken) == 1 else ""),
        )
    missing += list(broken)
    if missing:
        gated = [n for n in missing if REGISTRY[n].gated]
        hint = f"Run: python -m backend models download --only {' '.join(missing)}"
        if gated:
            hint += (
                f" ({', '.join(gated)} gated: accept the licence at "
                f"{', '.join(sorted({REGISTRY[n].page for n in gated}))} and set HF_TOKEN first)"
            )
        why = "".join(f" {m}" for m in broken.values())
        raise ModelMissingError(
            f"The '{pipeline}' pipeline needs models that are not installed: {', '.join(missing)} "
            f"(looked in {Path(root) if root else models_root()}).{why}",
            hint=hint,
        )
    return found
