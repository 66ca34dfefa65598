"""``models download``: huggingface_hub (progress, resume) and insightface packs into the
model root, with typed errors for offline, gated, full disk and failed transfers."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelMissingError, PortraitSplatError

from .registry import ENV_PREFIX, REGISTRY, DiskFullError, ModelCorruptError, ModelGatedError, ModelSpec, get_spec
from .store import _folder_size, _human, _missing_files, _resolve, verify_folder

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
        raise DiskFullError(
            f"Not enough disk space for '{spec.name}': it needs about {_human(need)} more, "
            f"and {probe} has {_human(free)} free."
        )


def _map_download_error(spec: ModelSpec, folder: Path, exc: BaseException) -> PortraitSplatError | None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskFullError(
            f"The disk filled up while downloading '{spec.name}' into {folder}; the partial "
            f"download is kept and resumes on the next try."
        )
    if isinstance(exc, GatedRepoError) or (spec.gated and isinstance(exc, RepositoryNotFoundError)):
        return ModelGatedError(
            f"'{spec.name}' comes from the gated repository {spec.repo} ({spec.licence}), and this "
            f"Hugging Face account or token has no access to it.",
            hint=(
                f"1. Log in at https://huggingface.co and accept the licence at {spec.page}; "
                f"2. create a read token at https://huggingface.co/settings/tokens; "
                f"3. run: HF_TOKEN=hf_... {spec.download_command}"
            ),
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelMissingError(
            f"The repository {spec.repo} for '{spec.name}' was not found on the hub.",
            hint="Check for a newer PortraitSplat release, or put the files in place and "
            f"point {ENV_PREFIX}{spec.name.upper()} at them.",
        )
    return None


def _download_hf(spec: ModelSpec, folder: Path, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=spec.repo,
        revision=spec.revision,
        local_dir=str(folder),
        allow_patterns=list(spec.allow_patterns) or None,
        token=token,
    )


def _download_insightface(spec: ModelSpec, folder: Path, token: str | None) -> None:
    from insightface.utils.storage import download as if_download

    if_download("models", spec.repo, root=str(folder.parent.parent))  # buffalo_l.zip unzips flat into <pack>/


_DOWNLOADERS: dict[str, Callable[[ModelSpec, Path, str | None], None]] = {
    "hf": _download_hf,
    "insightface": _download_insightface,
}


@dataclass
class DownloadResult:
    name: str
    path: Path
    ok: bool
    error: PortraitSplatError | None = None
    skipped: bool = False  # already present


def default_download_names(*, include_optional: bool = False) -> list[str]:
    """What ``models download`` fetches without ``--only``: every model a pipeline needs;
    ``include_optional`` (``--all``) adds the optional ones, each read by the consumer in its
    ``used_by`` (nothing in the registry is unread: tests/test_models.py)."""
    return [s.name for s in REGISTRY.values() if include_optional or not s.optional]


def download(
    names: Iterable[str] | None = None, token: str | None = None, root: Path | None = None, *, force: bool = False
) -> list[DownloadResult]:
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
            hint=f"Run on a machine with internet: HF_HUB_OFFLINE=0 python -m backend models download --only {' '.join(names)}",
        )
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
                raise ModelMissingError(
                    f"The download of '{name}' finished but {', '.join(missing)} is not in {folder}.",
                    hint=f"Check {spec.page}: the repository layout may have changed.",
                )
            verify_folder(folder, name)
            results.append(DownloadResult(name, folder, True))
        except PortraitSplatError as exc:
            results.append(DownloadResult(name, folder, False, exc))
        except Exception as exc:
            mapped = _map_download_error(spec, folder, exc)
            if mapped is None:
                raise
            results.append(DownloadResult(name, folder, False, mapped))
    return results
