"""``models link``: find the models a user already has (A1111, ComfyUI) and point our config at them.

This module's one job is :func:`link`: walk a folder tree (``~/ComfyUI/models``,
``stable-diffusion-webui/models``), recognise each weight file or model folder **by its key
layout** (safetensors header / weights-only pickle, :mod:`.header`; the same probes the loaders
run, :mod:`.probe`), and write the matches into the ``[paths]`` table of the model config
(``$PORTRAITSPLAT_MODELS_CONFIG`` or ``<models root>/models.toml``). Every file it looked at is
reported: linked, or skipped and why.

A file name is never enough: it only decides between files whose layouts are identical, i.e.
which SD1.5 ControlNet is the MediaPipe-face one (every SD1.5 ControlNet has the same keys),
and which of several SD1.5 checkpoints is the base model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import probe as probes
from .header import WEIGHT_SUFFIXES, HeaderError, NotWeightsOnly, TensorInfo, tensor_index
from .registry import ENV_PREFIX, ModelCorruptError
from .store import _resolve, config_path, models_root, probe_model

#: Which of several layout-identical candidates to prefer, by file or folder name.
_PREFER = {
    "sd15": re.compile(r"(v1[-_.]?5|sd[-_]?1[-_.]?5|stable[-_]diffusion[-_]v1)", re.I),
    "controlnet_face": re.compile(r"sd[-_]?15|v1[-_.]?5", re.I),
    "ip_adapter_faceid": re.compile(r"^ip-adapter-faceid_sd15\.", re.I),
}
#: An SD1.5 ControlNet is the MediaPipe-face one only by its name (CrucibleAI ships
#: ``control_v2p_sd15_mediapipe_face.safetensors`` and ``diffusion_sd15/``).
_FACE_CONTROLNET = re.compile(r"mediapipe|face", re.I)
_MAX_DEPTH = 6


@dataclass
class Found:
    """One file or folder looked at: the model it serves (``name``), or why not (``reason``)."""

    path: Path
    name: str | None = None
    what: str = ""
    reason: str = ""


@dataclass
class LinkResult:
    config: Path
    linked: dict[str, Found] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # name -> why the current one stays
    notes: list[str] = field(default_factory=list)
    skipped: list[Found] = field(default_factory=list)
    written: bool = False


# --- recognising one file ----------------------------------------------------------------------


def _first(keys: Iterable[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _why(exc: ModelCorruptError) -> str:
    msg = exc.message
    return msg.split(": ", 1)[1].rstrip(".") if ": " in msg else msg


def identify_file(path: Path) -> Found:
    """What model a single weight file is, from its keys."""
    found = Found(path)
    try:
        index = tensor_index(path)
    except NotWeightsOnly as exc:
        found.reason = f"a pickle that needs more than tensors ({exc}); not read"
        return found
    except (HeaderError, OSError) as exc:
        found.reason = f"unreadable ({exc})"
        return found
    keys = list(index)
    if not keys:
        found.reason = "no tensors in it"
        return found
    if _first(keys, "model.diffusion_model."):
        return _identify_checkpoint(found, index)
    if probes.controlnet_prefix(keys) is not None:
        try:
            probes.probe_controlnet_file(path, index=index)
        except ModelCorruptError as exc:
            found.reason = f"a ControlNet, but not for SD1.5 ({_why(exc)})"
            return found
        if not _FACE_CONTROLNET.search(path.name):
            found.reason = (
                "an SD1.5 ControlNet, but its name does not say MediaPipe face (every SD1.5 ControlNet "
                "has the same keys; set controlnet_face in the config by hand if it is that one)"
            )
            return found
        found.name, found.what = "controlnet_face", "SD1.5 MediaPipe-face ControlNet (single file)"
        return found
    if _first(keys, "image_proj.") and _first(keys, "ip_adapter."):
        try:
            probes.probe_ip_adapter(path)
        except ModelCorruptError as exc:
            found.reason = f"an IP-Adapter, but not IP-Adapter-FaceID for SD1.5 ({_why(exc)})"
            return found
        found.name, found.what = "ip_adapter_faceid", "IP-Adapter-FaceID for SD1.5"
        return found
    if any("lora_" in k or ".lora_A." in k or ".lora_down." in k for k in keys[:50]):
        found.reason = "a LoRA, not a base model"
    elif _first(keys, "encoder.down.") or _first(keys, "decoder.up.") or _first(keys, "first_stage_model."):
        found.reason = "a VAE on its own (we use the VAE inside the SD1.5 checkpoint)"
    elif "1.conv.0.weight" in index and index.get("0.weight", TensorInfo((), "")).shape[:2] in ((64, 3), (64, 4)):
        found.reason = (
            "one half of a TAESD in taesd.py's format: its folder is linked when it holds "
            "taesd_encoder and taesd_decoder for SD (not SDXL/SD3/FLUX)"
        )
    else:
        found.reason = f"not a model we use ({len(keys)} tensors, e.g. {keys[0]})"
    return found


def _identify_checkpoint(found: Found, index: Mapping[str, TensorInfo]) -> Found:
    keys = list(index)
    if _first(keys, "conditioner.embedders."):
        video = any("time_stack" in k or "time_mixer" in k for k in keys)
        if not video:
            found.reason = "an SDXL-style checkpoint (conditioner.embedders), not SD1.5"
            return found
        label = index.get("model.diffusion_model.label_emb.0.0.weight")
        variant = {256: "sv3d_u", 1280: "sv3d_p"}.get(label.shape[1] if label and len(label.shape) == 2 else -1)
        if variant is None:
            found.reason = "a video model (SVD-style), but not SV3D (its vector input is not 256 or 1280 wide)"
            return found
        try:
            probes.probe(variant, found.path)
        except ModelCorruptError as exc:
            found.reason = f"looks like {variant}, but its probe refuses it ({_why(exc)})"
            return found
        found.name, found.what = variant, f"SV3D ({variant}, single file)"
        return found
    if _first(keys, "cond_stage_model.model."):
        found.reason = "an SD2.x checkpoint (OpenCLIP text encoder), not SD1.5"
        return found
    try:
        probes.probe_sd15_file(found.path, index=index)
    except ModelCorruptError as exc:
        found.reason = f"a Stable Diffusion checkpoint, but not an SD1.5 base layout ({_why(exc)})"
        return found
    found.name, found.what = "sd15", "SD1.5 checkpoint (single file)"
    return found


def identify_folder(folder: Path) -> Found | None:
    """A model folder in the diffusers layout (None when ``folder`` is not one)."""
    found = Found(folder)
    index_file, config_file = folder / "model_index.json", folder / "config.json"
    try:
        if index_file.is_file():
            cls = str(json.loads(index_file.read_text()).get("_class_name", ""))
            name = {"StableDiffusionPipeline": "sd15", "MVDreamPipeline": "mvdream"}.get(cls)
            if name is None:
                found.reason = f"a diffusers pipeline we do not use ({cls or 'no _class_name'})"
                return found
        elif probes.taesd_py_files(folder) is not None and not config_file.is_file():
            try:
                probes.probe_taesd_py(folder)
            except ModelCorruptError as exc:
                found.reason = f"taesd.py files, but not SD's TAESD ({_why(exc)})"
                return found
            found.name, found.what = "taesd", "TAESD (taesd.py encoder + decoder files)"
            return found
        elif config_file.is_file():
            cls = str(json.loads(config_file.read_text()).get("_class_name", ""))
            name = {"ControlNetModel": "controlnet_face", "AutoencoderTiny": "taesd"}.get(cls)
            if name is None:
                return None
            if name == "controlnet_face" and not _FACE_CONTROLNET.search(str(folder)):
                found.reason = "a diffusers ControlNet whose path does not say MediaPipe face"
                return found
        else:
            return None
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        found.reason = f"unreadable config ({exc.__class__.__name__})"
        return found
    try:
        probes.probe(name, folder)
    except ModelCorruptError as exc:
        found.reason = f"a {name} folder its loader would refuse ({_why(exc)})"
        return found
    found.name, found.what = name, f"{name} (diffusers folder)"
    return found


def scan(root: Path) -> list[Found]:
    """Every weight file and model folder under ``root``, identified (sorted by path)."""
    root = Path(root).expanduser()
    out: list[Found] = []
    if root.is_file():
        return [identify_file(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.relative_to(root).parts) >= _MAX_DEPTH:
            dirnames[:] = []
        folder = identify_folder(here)
        if folder is not None:
            out.append(folder)
            dirnames[:] = []  # a model folder's files belong to it
            continue
        for f in sorted(filenames):
            if Path(f).suffix in WEIGHT_SUFFIXES:
                out.append(identify_file(here / f))
    return sorted(out, key=lambda f: str(f.path))


# --- choosing and writing ---------------------------------------------------------------------


def _choose(name: str, candidates: list[Found]) -> Found:
    pref = _PREFER.get(name)
    return sorted(candidates, key=lambda f: (not (pref and pref.search(f.path.name)), str(f.path)))[0]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


def write_config(path: Path, paths: Mapping[str, str]) -> None:
    """Write ``[paths]`` into the TOML file at ``path``, keeping its other tables and keys."""
    import tomllib

    data: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    merged = dict(data.get("paths", {}))
    merged.update(paths)
    data["paths"] = merged
    lines = ["# PortraitSplat model locations (python -m backend models link writes [paths])"]
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"]
            lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def link(
    sources: Iterable[Path], root: Path | None = None, *, dry_run: bool = False, replace: bool = False
) -> LinkResult:
    """Scan ``sources``, pick one match per model, and write them into the model config.

    A model that already works where it is now (a download, an earlier link) is kept unless
    ``replace``. ``dry_run`` reports without writing."""
    root = Path(root) if root is not None else models_root()
    result = LinkResult(config_path(root))
    found: list[Found] = []
    for src in sources:
        found += scan(Path(src))
    by_name: dict[str, list[Found]] = {}
    for f in found:
        if f.name:
            by_name.setdefault(f.name, []).append(f)
        else:
            result.skipped.append(f)
    for name, candidates in sorted(by_name.items()):
        chosen = _choose(name, candidates)
        for other in candidates:
            if other is not chosen:
                other.reason = f"also fits {name}; {chosen.path.name} was chosen"
                result.skipped.append(other)
        current, origin = _resolve(name, root)
        if not replace and current.exists() and current.resolve() != chosen.path.resolve():
            try:
                probe_model(name, current, root)
                result.kept[name] = f"already works at {current} ({origin}); --replace links {chosen.path}"
                continue
            except ModelCorruptError:
                pass
        if origin == "env":
            result.notes.append(
                f"{ENV_PREFIX}{name.upper()} is set and wins over the config: unset it to use {chosen.path}"
            )
        result.linked[name] = chosen
    if result.linked and not dry_run:
        write_config(result.config, {n: str(f.path.resolve()) for n, f in result.linked.items()})
        result.written = True
    return result
