"""Pretrained models: one registry, where they live, how to get them, how to load them.

Every pretrained weight file the backend uses is named here, by a short name, with its
source repository, revision, files, size, licence and purpose (facts: shared/WEIGHTS.md).
Nothing else in the backend opens a weight file by itself: pipelines and guidance terms ask
this module for a path (:func:`model_path`) or a loaded module (:func:`load_sd15`, ...).

Where models live
    ``$PORTRAITSPLAT_MODELS`` (default ``<repo>/.cache/models``), one folder per model:
    ``<root>/<name>/`` holds that repository's files in their own layout (``unet/``,
    ``vae/``, ...). insightface packs go where insightface looks for them:
    ``<root>/insightface/models/<pack>/*.onnx``.

Overrides (a model you already have somewhere else)
    1. ``PORTRAITSPLAT_MODEL_<NAME>=/path`` (name upper-cased), e.g. ``PORTRAITSPLAT_MODEL_SD15``;
    2. a TOML file, ``$PORTRAITSPLAT_MODELS_CONFIG`` or ``<root>/models.toml``::

           [paths]
           sd15 = "/data/stable-diffusion-v1-5"
           buffalo_l = "/data/insightface/models/buffalo_l"

    An override points at the same folder the default would (for insightface packs: the pack
    folder holding the ``.onnx`` files).

Getting them
    ``python -m backend models download [--only NAME ...]`` (huggingface_hub, with progress
    and resume; insightface packs from insightface's own release). ``HF_HUB_OFFLINE=1``
    disables downloads: the command then says so instead of trying.
    ``python -m backend models check`` prints what is present, sizes, licences and the fix.

Failing clearly
    A missing model raises :class:`backend.errors.ModelMissingError` naming the command that
    fetches it; a truncated or unreadable file raises :class:`ModelCorruptError`; a gated
    repository without access raises :class:`ModelGatedError` (how to accept the licence and
    set ``HF_TOKEN``); a full disk raises :class:`DiskFullError`. A pipeline checks its models
    at submit time (:func:`ensure_models`); nothing falls back silently to another pipeline.

Usage::

    from backend import models
    models.ensure_models("stylize")                     # raises if anything is missing
    sd = models.load_sd15(dtype=torch.float16, device="cuda")
    models.load_ip_adapter_faceid(sd.unet)
    controlnet = models.load_controlnet()
    app = models.load_insightface()
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from backend.errors import ModelMissingError, PortraitSplatError

if TYPE_CHECKING:  # heavy imports stay inside the loaders
    import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_ROOT = "PORTRAITSPLAT_MODELS"
ENV_CONFIG = "PORTRAITSPLAT_MODELS_CONFIG"
ENV_PREFIX = "PORTRAITSPLAT_MODEL_"
GB = 1000**3
MB = 1000**2


# --- errors --------------------------------------------------------------------------------


class ModelCorruptError(ModelMissingError):
    """A model's file is there but cannot be read (truncated download, wrong file)."""
    code = "model_corrupt"


class ModelGatedError(ModelMissingError):
    """The model's repository is gated and this account/token has no access."""
    code = "model_gated"


class DiskFullError(PortraitSplatError):
    code = "disk_full"
    hint = f"Free some space, or put the models on a larger disk: {ENV_ROOT}=/big/disk python -m backend models download"


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained model.

    ``source`` is ``"hf"`` (a Hugging Face repository, fetched with ``allow_patterns``) or
    ``"insightface"`` (a model pack from insightface's release, unzipped into the model root).
    ``required`` lists glob patterns, relative to the model folder, that must each match at
    least one file for the model to count as present. ``subfolder`` is where the loader looks
    inside the folder. ``pipelines`` names the pipelines that cannot run without it.
    """

    name: str
    repo: str
    purpose: str
    licence: str
    size_bytes: int
    source: str = "hf"
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    subfolder: str | None = None
    gated: bool = False
    pipelines: tuple[str, ...] = ()
    optional: bool = False
    url: str = ""

    @property
    def page(self) -> str:
        return self.url or (f"https://huggingface.co/{self.repo}" if self.source == "hf" else "")

    @property
    def download_command(self) -> str:
        return f"python -m backend models download --only {self.name}"


_SD15_FILES = (
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "tokenizer/*", "scheduler/*",
)

# Revisions are branch names until someone with hub access pins each to a commit hash.
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec(
        name="sd15", repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        purpose="Stable Diffusion 1.5 (fp16): SAS identity/style guidance",
        licence="CreativeML OpenRAIL-M", size_bytes=int(2.13 * GB),
        allow_patterns=_SD15_FILES,
        required=("model_index.json", "unet/config.json", "unet/*.safetensors", "vae/*.safetensors",
                  "text_encoder/*.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                  "scheduler/scheduler_config.json"),
        pipelines=("stylize",)),
    ModelSpec(
        name="ip_adapter_faceid", repo="h94/IP-Adapter-FaceID",
        purpose="IP-Adapter-FaceID for SD1.5: ArcFace identity -> decoupled cross-attention (+LoRA)",
        licence="research only (trained on insightface embeddings; see model card)", size_bytes=97 * MB,
        allow_patterns=("ip-adapter-faceid_sd15.bin",), required=("ip-adapter-faceid_sd15.bin",),
        pipelines=("stylize",)),
    ModelSpec(
        name="controlnet_face", repo="CrucibleAI/ControlNetMediaPipeFace",
        purpose="MediaPipe-face landmark ControlNet, SD1.5 subfolder only (the repo is ~31 GB)",
        licence="OpenRAIL", size_bytes=723 * MB, subfolder="diffusion_sd15",
        allow_patterns=("diffusion_sd15/config.json", "diffusion_sd15/*.safetensors"),
        required=("diffusion_sd15/config.json", "diffusion_sd15/*.safetensors"),
        pipelines=("stylize",)),
    ModelSpec(
        name="mvdream", repo="ashawkey/mvdream-sd2.1-diffusers",
        purpose="MVDream multi-view UNet (SD2.1 base, LDM keys) + SD2.1 text encoder/VAE: 3D SDS",
        licence="CreativeML OpenRAIL-M", size_bytes=int(2.6 * GB),
        allow_patterns=("model_index.json", "*/config.json", "unet/*.safetensors", "vae/*.safetensors",
                        "text_encoder/*.safetensors", "tokenizer/*", "scheduler/*"),
        required=("unet/config.json", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors",
                  "tokenizer/vocab.json", "scheduler/scheduler_config.json"),
        pipelines=("stylize",)),
    ModelSpec(
        name="sv3d_u", repo="stabilityai/sv3d",
        purpose="SV3D_u orbit-video model (no camera input; Instax3D generation stage)",
        licence="Stability AI Community License (non-commercial; gated)", size_bytes=int(9.36 * GB),
        allow_patterns=("sv3d_u.safetensors",), required=("sv3d_u.safetensors",), gated=True,
        pipelines=("instax",)),
    ModelSpec(
        name="sv3d_p", repo="stabilityai/sv3d",
        purpose="SV3D_p orbit-video model (camera path input; optional Instax3D variant)",
        licence="Stability AI Community License (non-commercial; gated)", size_bytes=int(9.37 * GB),
        allow_patterns=("sv3d_p.safetensors",), required=("sv3d_p.safetensors",), gated=True, optional=True),
    ModelSpec(
        name="buffalo_l", repo="buffalo_l", source="insightface",
        purpose="insightface pack: SCRFD detector, 106/68 landmarks, ArcFace w600k_r50 (FaceID's embedding)",
        licence="non-commercial research only (insightface models)", size_bytes=326 * MB,
        required=("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx"),
        url="https://github.com/deepinsight/insightface/tree/master/python-package",
        pipelines=("stylize",)),
    ModelSpec(
        name="antelopev2", repo="antelopev2", source="insightface",
        purpose="insightface pack: SCRFD-10G, landmarks, ArcFace glintr100 (InstantID's embedding)",
        licence="non-commercial research only (insightface models)", size_bytes=407 * MB,
        required=("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
        url="https://github.com/deepinsight/insightface/tree/master/python-package", optional=True),
    ModelSpec(
        name="taesd", repo="madebyollin/taesd",
        purpose="Tiny SD autoencoder: ~9x cheaper latent encode/decode (speed preset)",
        licence="MIT", size_bytes=int(9.8 * MB),
        allow_patterns=("config.json", "diffusion_pytorch_model.safetensors"),
        required=("config.json", "diffusion_pytorch_model.safetensors"),
        pipelines=("stylize",)),  # the stylize pipeline's default ("fast") preset encodes with it
    ModelSpec(
        name="auraface", repo="fal/AuraFace-v1",
        purpose="Apache-2.0 ArcFace-style recogniser (glintr100.onnx) for a permissive identity chain",
        licence="Apache-2.0 (recogniser only)", size_bytes=261 * MB,
        allow_patterns=("glintr100.onnx",), required=("glintr100.onnx",), optional=True),
    ModelSpec(
        name="sdxl", repo="stabilityai/stable-diffusion-xl-base-1.0",
        purpose="SDXL base (fp16): optional heavier InstantID backend",
        licence="CreativeML OpenRAIL++-M", size_bytes=int(6.9 * GB),
        allow_patterns=("model_index.json", "*/config.json", "unet/*.fp16.safetensors", "vae/*.fp16.safetensors",
                        "text_encoder/*.fp16.safetensors", "text_encoder_2/*.fp16.safetensors",
                        "tokenizer/*", "tokenizer_2/*", "scheduler/*"),
        required=("model_index.json", "unet/*.safetensors", "vae/*.safetensors", "text_encoder_2/*.safetensors"),
        optional=True),
    ModelSpec(
        name="instantid", repo="InstantX/InstantID",
        purpose="InstantID for SDXL: identity adapter + landmark ControlNet (optional backend)",
        licence="Apache-2.0 (needs antelopev2, non-commercial)", size_bytes=int(4.2 * GB),
        allow_patterns=("ip-adapter.bin", "ControlNetModel/config.json",
                        "ControlNetModel/diffusion_pytorch_model.safetensors"),
        required=("ip-adapter.bin", "ControlNetModel/config.json", "ControlNetModel/*.safetensors"),
        optional=True),
)}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def required_models(pipeline: str) -> list[str]:
    """Names of the models ``pipeline`` cannot run without (``[]`` for the weight-free ones).

    Composite names (``"instax+stylize"``) need the union of their parts.
    """
    parts = pipeline.split("+")
    return [s.name for s in REGISTRY.values() if any(p in s.pipelines for p in parts)]


# --- where they are --------------------------------------------------------------------------


def models_root() -> Path:
    """``$PORTRAITSPLAT_MODELS`` or ``<repo>/.cache/models`` (an ignored folder)."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "models"


def insightface_root(root: Path | None = None) -> Path:
    """The ``root`` argument insightface expects: it reads ``<this>/models/<pack>/``."""
    return Path(root or models_root()) / "insightface"


def _config_overrides(root: Path) -> dict[str, Path]:
    cfg = os.environ.get(ENV_CONFIG)
    path = Path(cfg).expanduser() if cfg else root / "models.toml"
    if not path.is_file():
        return {}
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise PortraitSplatError(f"The model config {path} could not be read: {exc}",
                                 hint="Fix the TOML syntax; it needs a [paths] table of name = \"/path\".",
                                 code="bad_model_config") from exc
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
    if not folder.is_dir():
        return list(spec.required) or ["(folder)"]
    return [pat for pat in spec.required if not any(p.is_file() for p in folder.glob(pat))]


def _missing_message(spec: ModelSpec, folder: Path, origin: str, missing: list[str]) -> ModelMissingError:
    where = {"env": f" (set by {ENV_PREFIX}{spec.name.upper()})", "config": " (set in the model config)"}.get(origin, "")
    what = "is not there" if missing == list(spec.required) or missing == ["(folder)"] else \
        f"is incomplete: no {', '.join(missing)}"
    hint = f"Run: {spec.download_command}"
    if spec.gated:
        hint += f" (gated: accept the licence at {spec.page} and set HF_TOKEN first)"
    return ModelMissingError(f"Model '{spec.name}' ({spec.repo}, {spec.purpose}) {what} at {folder}{where}.",
                             hint=hint)


def model_path(name: str, root: Path | None = None) -> Path:
    """The folder holding model ``name``; raises :class:`ModelMissingError` if it is absent
    or incomplete (the message names ``python -m backend models download --only NAME``)."""
    spec = get_spec(name)
    folder, origin = _resolve(name, root)
    missing = _missing_files(spec, folder)
    if missing:
        raise _missing_message(spec, folder, origin, missing)
    return folder


# --- integrity -----------------------------------------------------------------------------


def _corrupt(spec_name: str | None, path: Path, why: str) -> ModelCorruptError:
    fix = f"python -m backend models download --only {spec_name}" if spec_name else "download it again"
    return ModelCorruptError(f"The weight file {path} is damaged: {why}.",
                             hint=f"Delete it and fetch it again: rm '{path}' && {fix}")


def verify_safetensors(path: Path, name: str | None = None) -> None:
    """Cheap integrity check of a ``.safetensors`` file: the header parses and the file is as
    long as the header says (a truncated download fails here). Reads only the header."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise _corrupt(name, path, f"only {size} bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * MB):
                raise _corrupt(name, path, "its header is cut off or not a safetensors header")
            header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(name, path, f"unreadable header ({exc.__class__.__name__})") from exc
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise _corrupt(name, path, f"truncated: {size:,} bytes of {8 + n + end:,}")


def verify_folder(folder: Path, name: str | None = None) -> None:
    """:func:`verify_safetensors` on every ``.safetensors`` file below ``folder``; empty files fail."""
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or ".cache" in p.parts:
            continue
        if p.suffix == ".safetensors":
            verify_safetensors(p, name)
        elif p.suffix in (".bin", ".onnx", ".pth") and p.stat().st_size == 0:
            raise _corrupt(name, p, "the file is empty")


# --- check ---------------------------------------------------------------------------------


@dataclass
class ModelStatus:
    """What :func:`check` found for one model."""

    spec: ModelSpec
    path: Path
    present: bool
    origin: str                  # "default", "env" or "config"
    size_on_disk: int = 0        # bytes found in the folder
    problem: str = ""            # why it is not usable ("" when present and intact)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fix(self) -> str:
        if self.present:
            return ""
        cmd = self.spec.download_command
        return f"accept licence at {self.spec.page}, set HF_TOKEN, then {cmd}" if self.spec.gated else cmd


def _folder_size(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


def check(names: Iterable[str] | None = None, root: Path | None = None, *, verify: bool = True) -> list[ModelStatus]:
    """Status of every registered model (or of ``names``): present, intact, size, where."""
    out = []
    for name in (names or REGISTRY):
        spec = get_spec(name)
        folder, origin = _resolve(name, root)
        missing = _missing_files(spec, folder)
        problem = ""
        if missing:
            problem = "missing" if missing in (list(spec.required), ["(folder)"]) else f"incomplete: no {', '.join(missing)}"
        elif verify:
            try:
                verify_folder(folder, name)
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
    """Submit-time check: the folders of every model ``pipeline`` needs, or one
    :class:`ModelMissingError` listing all that are missing and the one command that fetches
    them. ``{}`` for the weight-free pipelines. ``names`` checks those models instead (a
    pipeline whose options need only some of its models, or an optional one)."""
    names = required_models(pipeline) if names is None else list(names)
    found, missing = {}, []
    for name in names:
        try:
            found[name] = model_path(name, root)
        except ModelMissingError:
            missing.append(name)
    if missing:
        gated = [n for n in missing if REGISTRY[n].gated]
        hint = f"Run: python -m backend models download --only {' '.join(missing)}"
        if gated:
            hint += (f" ({', '.join(gated)} gated: accept the licence at "
                     f"{', '.join(sorted({REGISTRY[n].page for n in gated}))} and set HF_TOKEN first)")
        raise ModelMissingError(
            f"The '{pipeline}' pipeline needs models that are not installed: {', '.join(missing)} "
            f"(looked in {Path(root) if root else models_root()}).", hint=hint)
    return found


# --- download ------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_space(spec: ModelSpec, folder: Path) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = max(0, spec.size_bytes - _folder_size(folder))
    if free < need * 1.05:
        raise DiskFullError(f"Not enough disk space for '{spec.name}': it needs about {_human(need)} more, "
                            f"and {probe} has {_human(free)} free.")


def _map_download_error(spec: ModelSpec, folder: Path, exc: BaseException) -> PortraitSplatError | None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFullError(f"The disk filled up while downloading '{spec.name}' into {folder}; the partial "
                             f"download is kept and resumes on the next try.")
    if isinstance(exc, GatedRepoError) or (spec.gated and isinstance(exc, RepositoryNotFoundError)):
        return ModelGatedError(
            f"'{spec.name}' comes from the gated repository {spec.repo} ({spec.licence}), and this "
            f"Hugging Face account or token has no access to it.",
            hint=(f"1. Log in at https://huggingface.co and accept the licence at {spec.page}; "
                  f"2. create a read token at https://huggingface.co/settings/tokens; "
                  f"3. run: HF_TOKEN=hf_... {spec.download_command}"))
    if isinstance(exc, RepositoryNotFoundError):
        return ModelMissingError(f"The repository {spec.repo} for '{spec.name}' was not found on the hub.",
                                 hint="Check for a newer PortraitSplat release, or put the files in place and "
                                      f"point {ENV_PREFIX}{spec.name.upper()} at them.")
    return None


def _download_hf(spec: ModelSpec, folder: Path, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=spec.repo, revision=spec.revision, local_dir=str(folder),
                      allow_patterns=list(spec.allow_patterns) or None, token=token)


def _download_insightface(spec: ModelSpec, folder: Path, token: str | None) -> None:
    from insightface.utils.storage import download as if_download

    if_download("models", spec.repo, root=str(folder.parent.parent))
    # Some packs (antelopev2) unzip into <pack>/<pack>/*.onnx: lift the files up one level.
    if not any(folder.glob("*.onnx")):
        for inner in folder.iterdir():
            if inner.is_dir() and any(inner.glob("*.onnx")):
                for f in inner.iterdir():
                    shutil.move(str(f), str(folder / f.name))
                inner.rmdir()
                break


_DOWNLOADERS: dict[str, Callable[[ModelSpec, Path, str | None], None]] = {
    "hf": _download_hf, "insightface": _download_insightface}


@dataclass
class DownloadResult:
    name: str
    path: Path
    ok: bool
    error: PortraitSplatError | None = None
    skipped: bool = False  # already present


def default_download_names() -> list[str]:
    """What ``models download`` fetches without ``--only``: every model a pipeline needs."""
    return [s.name for s in REGISTRY.values() if not s.optional]


def download(names: Iterable[str] | None = None, token: str | None = None, root: Path | None = None,
             *, force: bool = False) -> list[DownloadResult]:
    """Fetch models into the model root (or their override folders); returns one result per
    model and raises nothing for a single model's failure (see ``DownloadResult.error``).

    Present, intact models are skipped unless ``force``. Downloads resume: huggingface_hub
    keeps partial files under ``<folder>/.cache``. ``token`` defaults to ``$HF_TOKEN`` /
    the saved login. Raises :class:`ModelMissingError` at once if ``HF_HUB_OFFLINE`` is set.
    """
    names = list(names or default_download_names())
    for n in names:
        get_spec(n)
    if _offline():
        raise ModelMissingError(
            "Downloads are disabled: HF_HUB_OFFLINE is set in this environment.",
            hint=f"Run on a machine with internet: HF_HUB_OFFLINE=0 python -m backend models download --only {' '.join(names)}")
    results = []
    for name in names:
        spec = get_spec(name)
        folder, _ = _resolve(name, root)
        if not force and not _missing_files(spec, folder):
            try:
                verify_folder(folder, name)
                results.append(DownloadResult(name, folder, True, skipped=True))
                continue
            except ModelCorruptError:
                pass  # fetch again (huggingface_hub re-downloads files that changed or are partial)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _check_space(spec, folder)
            _DOWNLOADERS[spec.source](spec, folder, token)
            missing = _missing_files(spec, folder)
            if missing:
                raise ModelMissingError(f"The download of '{name}' finished but {', '.join(missing)} is not in {folder}.",
                                        hint=f"Check {spec.page}: the repository layout may have changed.")
            verify_folder(folder, name)
            results.append(DownloadResult(name, folder, True))
        except PortraitSplatError as exc:
            results.append(DownloadResult(name, folder, False, exc))
        except Exception as exc:  # noqa: BLE001 - mapped to a typed error or re-raised
            mapped = _map_download_error(spec, folder, exc)
            if mapped is None:
                raise
            results.append(DownloadResult(name, folder, False, mapped))
    return results


# --- loaders -------------------------------------------------------------------------------


def _path_for(name: str, path: Path | str | None) -> Path:
    return Path(path) if path is not None else model_path(name)


def _variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder holds ``*.fp16.safetensors`` (the variant we download)."""
    return "fp16" if any(Path(folder).glob("*.fp16.safetensors")) else None


def _load(name: str | None, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run a from_pretrained call, after an integrity check, turning read failures into
    :class:`ModelCorruptError` / :class:`ModelMissingError` naming the fix."""
    if not Path(folder).exists():
        spec = REGISTRY.get(name or "")
        hint = f"Run: {spec.download_command}" if spec else ""
        raise ModelMissingError(f"No model folder at {folder}.", hint=hint)
    verify_folder(folder, name)
    try:
        return fn()
    except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
        if isinstance(exc, PortraitSplatError):
            raise
        raise _corrupt(name, Path(folder), f"loading failed: {exc.__class__.__name__}: {str(exc)[:300]}") from exc


@dataclass
class SD15:
    """The parts of Stable Diffusion 1.5 our guidance uses (no pipeline object)."""

    unet: Any               # diffusers.UNet2DConditionModel
    vae: Any                # diffusers.AutoencoderKL
    text_encoder: Any       # transformers.CLIPTextModel
    tokenizer: Any          # transformers.CLIPTokenizer
    scheduler: Any          # diffusers.DDIMScheduler (SD1.5's betas)
    path: Path = field(default=Path())

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _dt(dtype) -> dict:
    """``from_pretrained`` keyword for a dtype (diffusers and transformers both take ``dtype=``):
    loading in the target dtype keeps the modules that must stay float32 in float32."""
    return {"dtype": dtype} if dtype is not None else {}


def load_sd15(path: Path | str | None = None, *, dtype: "torch.dtype | None" = None, device: str = "cpu",
              scheduler: str = "ddim", name: str = "sd15") -> SD15:
    """Load SD1.5's UNet, VAE, text encoder, tokenizer and a scheduler from a diffusers folder.

    ``path`` defaults to ``model_path("sd15")``. The fp16 variant files are picked when present.
    ``scheduler``: ``"ddim"`` or ``"ddpm"`` (same betas, read from ``scheduler/``). All modules
    are in eval mode with gradients off.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = _path_for(name, path)
    sched_cls = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[scheduler]

    def go():
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant=_variant(folder / "unet"), **_dt(dtype))
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype))
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", variant=_variant(folder / "text_encoder"), **_dt(dtype))
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        sch = sched_cls.from_pretrained(folder, subfolder="scheduler")
        return unet, vae, te, tok, sch

    unet, vae, te, tok, sch = _load(name, folder, go)
    for m in (unet, vae, te):
        m.eval().requires_grad_(False).to(device)
    return SD15(unet, vae, te, tok, sch, folder)


def load_ip_adapter_state_dict(path: Path | str) -> dict[str, dict[str, "torch.Tensor"]]:
    """Read an IP-Adapter(-FaceID) file: the ``.bin`` (torch pickle, loaded with
    ``weights_only=True``) or a ``.safetensors`` with ``image_proj.``/``ip_adapter.`` prefixes."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            verify_safetensors(path, "ip_adapter_faceid")
            from safetensors.torch import load_file

            flat = load_file(str(path))
            sd: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
            for k, v in flat.items():
                head, _, rest = k.partition(".")
                if head in sd:
                    sd[head][rest] = v
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except ModelCorruptError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad zip
        raise _corrupt("ip_adapter_faceid", path, f"{exc.__class__.__name__}: {str(exc)[:200]}") from exc
    if not isinstance(sd, dict) or not {"image_proj", "ip_adapter"} <= set(sd):
        raise _corrupt("ip_adapter_faceid", path, "it has no 'image_proj' and 'ip_adapter' entries")
    return sd


def load_ip_adapter_faceid(unet, path: Path | str | None = None, *, scale: float = 1.0,
                           lora_scale: float = 1.0, adapter_name: str = "faceid") -> Any:
    """Load IP-Adapter-FaceID into a diffusers ``UNet2DConditionModel`` in place; returns it.

    ``path``: the ``ip-adapter-faceid_sd15.bin`` file or the folder holding it (default:
    ``model_path("ip_adapter_faceid")``). Uses the same diffusers code as the pipeline-level
    ``load_ip_adapter``: the image projection becomes ``unet.encoder_hid_proj`` and the
    cross-attention processors get ``to_k_ip``/``to_v_ip``. The LoRA part is applied through
    PEFT (``unet.load_lora_adapter``); diffusers' pipeline loader would only *warn* and skip it
    without PEFT, so this raises instead.

    Call the UNet with ``added_cond_kwargs={"image_embeds": [E]}``, ``E: [B, 1, 512]`` (zeros for
    the unconditional half; note projected zeros are not zero tokens).
    """
    path = Path(path) if path is not None else model_path("ip_adapter_faceid")
    if path.is_dir():
        path = path / "ip-adapter-faceid_sd15.bin"
    if not path.is_file():
        raise ModelMissingError(f"No IP-Adapter-FaceID file at {path}.", hint=f"Run: {REGISTRY['ip_adapter_faceid'].download_command}")
    return apply_ip_adapter_faceid(unet, load_ip_adapter_state_dict(path), scale=scale, lora_scale=lora_scale,
                                   adapter_name=adapter_name, source=path)


def apply_ip_adapter_faceid(unet, sd: dict, *, scale: float = 1.0, lora_scale: float = 1.0,
                            adapter_name: str = "faceid", source: Path | str = "(in memory)") -> Any:
    """Load an IP-Adapter-FaceID state dict (``{"image_proj": ..., "ip_adapter": ...}``) into
    ``unet`` in place, as :func:`load_ip_adapter_faceid` does with a file (benches build one in
    memory with :func:`backend.testing.tiny_ip_adapter_state_dict`). ``source`` names it in errors."""
    path = Path(source)
    n_proc = len(unet.attn_processors)
    ids = {int(k.split(".")[0]) for k in sd["ip_adapter"]}
    if ids and (max(ids) + 1 != n_proc or "1.to_k_ip.weight" not in sd["ip_adapter"]):
        raise _corrupt("ip_adapter_faceid", path, f"it is for a UNet with {max(ids) + 1} attention processors, "
                                                  f"this UNet has {n_proc}")
    try:
        unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
        loras = unet._load_ip_adapter_loras([sd])
    except (KeyError, RuntimeError) as exc:
        raise _corrupt("ip_adapter_faceid", path, f"its tensors do not fit this UNet: {str(exc)[:200]}") from exc
    if loras:
        try:
            import peft  # noqa: F401
        except ImportError as exc:
            raise ModelMissingError("IP-Adapter-FaceID's LoRA needs the 'peft' package.",
                                    hint="pip install peft (it is in pyproject's dependencies)") from exc
        unet.load_lora_adapter(loras[0], prefix="unet", adapter_name=adapter_name)
        unet.set_adapters([adapter_name], weights=[lora_scale])
    set_ip_adapter_scale(unet, scale)
    unet.requires_grad_(False)
    return unet


def set_ip_adapter_scale(unet, scale: float) -> None:
    """Weight of the identity tokens in every decoupled cross-attention (0 switches it off)."""
    for proc in unet.attn_processors.values():
        if hasattr(proc, "scale") and hasattr(proc, "to_k_ip"):
            proc.scale = [scale] * len(proc.scale)


def load_controlnet(path: Path | str | None = None, *, dtype: "torch.dtype | None" = None, device: str = "cpu",
                    subfolder: str | None = "diffusion_sd15") -> Any:
    """The MediaPipe-face ControlNet for SD1.5 (``diffusers.ControlNetModel``) from the repo
    folder's ``diffusion_sd15/`` (default ``model_path("controlnet_face")``)."""
    from diffusers import ControlNetModel

    folder = _path_for("controlnet_face", path)
    sub = folder / subfolder if subfolder else folder
    net = _load("controlnet_face", sub, lambda: ControlNetModel.from_pretrained(sub, variant=_variant(sub), **_dt(dtype)))
    return net.eval().requires_grad_(False).to(device)


def load_taesd(path: Path | str | None = None, *, dtype: "torch.dtype | None" = None, device: str = "cpu") -> Any:
    """``diffusers.AutoencoderTiny`` (latents already in the UNet's scale)."""
    from diffusers import AutoencoderTiny

    folder = _path_for("taesd", path)
    vae = _load("taesd", folder, lambda: AutoencoderTiny.from_pretrained(folder, **_dt(dtype)))
    return vae.eval().requires_grad_(False).to(device)


@dataclass
class MVDreamParts:
    """MVDream's files, loaded. The UNet is not a diffusers class: its LDM-keyed state dict
    and config are handed to our own module (backend/guidance/mvdream.py)."""

    unet_config: dict
    unet_state_dict: dict
    text_encoder: Any
    tokenizer: Any
    vae: Any
    scheduler: Any
    path: Path


def load_mvdream(path: Path | str | None = None, *, dtype: "torch.dtype | None" = None,
                 device: str = "cpu") -> MVDreamParts:
    """Load ashawkey/mvdream-sd2.1-diffusers: config + state dict of the multi-view UNet, and
    the SD2.1 text encoder, tokenizer, VAE and DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = _path_for("mvdream", path)

    def go():
        cfg = json.loads((folder / "unet" / "config.json").read_text())
        files = sorted((folder / "unet").glob("*.safetensors"))
        if not files:
            raise OSError(f"no unet/*.safetensors in {folder}")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        te = CLIPTextModel.from_pretrained(folder / "text_encoder", variant=_variant(folder / "text_encoder"), **_dt(dtype))
        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype))
        sch = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        return cfg, state, te, tok, vae, sch

    cfg, state, te, tok, vae, sch = _load("mvdream", folder, go)
    if dtype is not None or device != "cpu":
        state = {k: (v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)) for k, v in state.items()}
    for m in (te, vae):
        m.eval().requires_grad_(False).to(device)
    return MVDreamParts(cfg, state, te, tok, vae, sch, folder)


@dataclass
class SV3DParts:
    """SV3D as diffusers building blocks."""

    unet: Any               # diffusers.UNetSpatioTemporalConditionModel
    vae: Any                # diffusers.AutoencoderKLTemporalDecoder
    image_encoder: Any      # transformers.CLIPVisionModelWithProjection
    feature_extractor: Any  # transformers.CLIPImageProcessor
    scheduler: Any          # diffusers.EulerDiscreteScheduler (EDM, v-prediction)
    path: Path


def load_sv3d(path: Path | str, *, dtype: "torch.dtype | None" = None, device: str = "cpu") -> SV3DParts:
    """SV3D from a folder in the diffusers layout (``unet/``, ``vae/``, ``image_encoder/``,
    ``feature_extractor/``, ``scheduler/``), e.g. the tiny one from
    :func:`backend.testing.save_tiny_sv3d` or a converted checkpoint.

    stabilityai/sv3d ships single-file SGM checkpoints (``sv3d_u.safetensors``); converting
    their keys to these blocks belongs to backend/guidance/sv3d.py. Given such a file, this
    raises with that pointer rather than guessing.
    """
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = Path(path)
    if folder.is_file() or not (folder / "unet").is_dir():
        raise ModelCorruptError(
            f"{folder} is not an SV3D folder in the diffusers layout (unet/, vae/, image_encoder/, ...).",
            hint="Single-file SGM checkpoints (sv3d_u.safetensors) need converting first; see backend/guidance/sv3d.py.")

    def go():
        unet = UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet", variant=_variant(folder / "unet"), **_dt(dtype))
        vae = AutoencoderKLTemporalDecoder.from_pretrained(folder, subfolder="vae", variant=_variant(folder / "vae"), **_dt(dtype))
        enc = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", **_dt(dtype))
        fe = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
        sch = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        return unet, vae, enc, fe, sch

    unet, vae, enc, fe, sch = _load(None, folder, go)
    for m in (unet, vae, enc):
        m.eval().requires_grad_(False).to(device)
    return SV3DParts(unet, vae, enc, fe, sch, folder)


def load_insightface(root: Path | str | None = None, name: str = "buffalo_l", *,
                     providers: list[str] | None = None, det_size: tuple[int, int] = (640, 640),
                     det_thresh: float = 0.5):
    """A prepared ``insightface.app.FaceAnalysis`` for pack ``name``.

    ``root``: an insightface root (holding ``models/<name>/``) or the pack folder itself;
    default: the registry's location (``<models root>/insightface``, or an override).
    ``providers`` default to CUDA when onnxruntime has it, else CPU. ``det_size`` is one
    detector resolution (insightface 2 otherwise runs two, 128 and 640).
    """
    import onnxruntime
    from insightface.app import FaceAnalysis

    if root is None:
        pack = model_path(name)
    else:
        root = Path(root)
        pack = root if any(root.glob("*.onnx")) else root / "models" / name
    spec = REGISTRY.get(name)
    if not any(pack.glob("*.onnx")):
        hint = f"Run: {spec.download_command}" if spec else ""
        raise ModelMissingError(f"No insightface pack '{name}' at {pack}.", hint=hint)
    verify_folder(pack, name if spec else None)
    if providers is None:
        avail = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    try:
        app = FaceAnalysis(name=str(pack), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise _corrupt(name if spec else None, pack, f"insightface could not open it: {exc.__class__.__name__}: {str(exc)[:200]}") from exc
    ctx = 0 if providers and providers[0] == "CUDAExecutionProvider" else -1
    app.prepare(ctx_id=ctx, det_size=det_size, det_thresh=det_thresh)
    return app


# --- CLI -----------------------------------------------------------------------------------


def add_models_parser(subparsers) -> None:
    """``python -m backend models check|download`` (wired in backend/cli.py)."""
    p = subparsers.add_parser("models", help="list, check and download pretrained models")
    sub = p.add_subparsers(dest="models_command", required=True)
    c = sub.add_parser("check", help="table of models: present/missing, size, licence, fix")
    c.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=list(REGISTRY))
    c.add_argument("--no-verify", action="store_true", help="skip the header check of weight files")
    c.set_defaults(func=_cli_check)
    d = sub.add_parser("download", help="fetch models (default: every model a pipeline needs)")
    d.add_argument("--only", nargs="+", action="extend", metavar="NAME", choices=list(REGISTRY),
                   help=f"models to fetch: {', '.join(REGISTRY)}")
    d.add_argument("--all", action="store_true", help="include the optional models")
    d.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN or saved login)")
    d.add_argument("--force", action="store_true", help="fetch again even if present")
    d.set_defaults(func=_cli_download)


def _cli_check(args) -> int:
    statuses = check(args.only, verify=not args.no_verify)
    print(f"model root: {models_root()}  (set {ENV_ROOT} to move it)")
    print(format_check(statuses))
    needed = {n for s in REGISTRY.values() if not s.optional for n in [s.name]}
    bad = [s.name for s in statuses if not s.present and s.name in needed]
    if bad:
        print(f"\nmissing for some pipelines: {', '.join(bad)}. Fetch them all with: "
              f"python -m backend models download --only {' '.join(bad)}")
    return 0


def _cli_download(args) -> int:
    names = args.only or ([*REGISTRY] if args.all else default_download_names())
    try:
        results = download(names, token=args.token or os.environ.get("HF_TOKEN"), force=args.force)
    except PortraitSplatError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    failed = 0
    for r in results:
        if r.ok:
            print(f"{r.name:18s} {'already present' if r.skipped else 'downloaded'}: {r.path}")
        else:
            failed += 1
            print(f"{r.name:18s} FAILED [{r.error.code}]: {r.error.message}", file=sys.stderr)
            if r.error.hint:
                print(f"{'':18s} hint: {r.error.hint}", file=sys.stderr)
    return 1 if failed else 0
