"""glTF 2.0 binary (GLB) with ``KHR_gaussian_splatting``: write and read. numpy + json only.

The extension (KhronosGroup/glTF, ``extensions/2.0/Khronos/KHR_gaussian_splatting``) stores
the splats as a POINTS primitive with these attributes, one accessor each:

    POSITION                                   VEC3 float   (with min/max, as glTF requires)
    KHR_gaussian_splatting:ROTATION            VEC4 float   unit quaternion, glTF's xyzw order
    KHR_gaussian_splatting:SCALE               VEC3 float   linear (not log)
    KHR_gaussian_splatting:OPACITY             SCALAR float linear in [0, 1] (not a logit)
    KHR_gaussian_splatting:SH_DEGREE_0_COEF_0  VEC3 float   the DC coefficient (rgb = 0.5 + C0 * it)
    KHR_gaussian_splatting:SH_DEGREE_l_COEF_m  VEC3 float   higher bands, m from -l to l; the
                                                            same real basis as INRIA 3DGS
    COLOR_0                                    VEC4 u8 normalised: the point-cloud fallback
                                               (linear RGB decoded from sRGB, alpha = opacity)

and the primitive's extension object ``{"kernel": "ellipse", "colorSpace":
"srgb_rec709_display", "projection": "perspective", "sortingMethod": "cameraDistance"}``.

Axes: glTF's, +Y up, metres, the asset's front toward +Z (its right hand toward -X): from
our head frame x' = x, y' = z, z' = -y. The reader also takes the spec's quantised
component types (normalised bytes and shorts), strided buffer views, and node transforms
(each splat primitive is baked into its node's world transform).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from ..frames import bake_splats, quat_to_matrix
from ..splat_arrays import SplatArrays, logit
from ._common import HEAD_TO_GLTF, read_source, turn, write_atomic, wxyz_to_xyzw, xyzw_to_wxyz

EXT = "KHR_gaussian_splatting"
FRAMES = ("gltf", "head")
_GLB_MAGIC = 0x46546C67
_JSON, _BIN = 0x4E4F534A, 0x004E4942
_N_COEF = {1: 3, 2: 5, 3: 7}
_COMPONENT = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_NORM_DIV = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


class GltfError(ValueError):
    """A file that is not a GLB holding KHR_gaussian_splatting splats."""


def _rot(frame: str) -> np.ndarray:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    return HEAD_TO_GLTF if frame == "gltf" else np.eye(3)


# ---------------------------------------------------------------- the container
def pack_glb(gltf: dict[str, Any], binary: bytes) -> bytes:
    """A GLB file: 12-byte header, the JSON chunk (space-padded), the BIN chunk (zero-padded)."""
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = binary + b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + (8 + len(binary) if binary else 0)
    out = [struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(js), _JSON), js]
    if binary:
        out += [struct.pack("<II", len(binary), _BIN), binary]
    return b"".join(out)


def unpack_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(JSON, BIN chunk) of a GLB file."""
    if len(data) < 20:
        raise GltfError("file too short to be a GLB")
    magic, version, _length = struct.unpack_from("<III", data)
    if magic != _GLB_MAGIC:
        raise GltfError("not a GLB file (bad magic); only binary glTF is read")
    if version != 2:
        raise GltfError(f"GLB version {version}; only glTF 2.0 is read")
    at, js, binary = 12, None, b""
    while at + 8 <= len(data):
        size, kind = struct.unpack_from("<II", data, at)
        chunk = data[at + 8 : at + 8 + size]
        if kind == _JSON and js is None:
            js = json.loads(chunk.decode("utf-8"))
        elif kind == _BIN and not binary:
            binary = chunk
        at += 8 + size
    if js is None:
        raise GltfError("GLB has no JSON chunk")
    return js, binary


class _Builder:
    """Collects accessors into one buffer, 4-byte aligned."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, array: np.ndarray, gl_type: str, *, normalized: bool = False, bounds: bool = False) -> int:
        a = np.ascontiguousarray(array)
        component = {np.dtype("float32"): 5126, np.dtype("uint8"): 5121}[a.dtype]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        self.views.append({"buffer": 0, "byteOffset": self.size, "byteLength": len(raw), "target": 34962})
        self.chunks.append(raw + b"\0" * (-len(raw) % 4))
        self.size += len(raw) + (-len(raw) % 4)
        acc: dict[str, Any] = {
            "bufferView": len(self.views) - 1,
            "componentType": component,
            "count": int(a.shape[0]),
            "type": gl_type,
        }
        if normalized:
            acc["normalized"] = True
        if bounds and len(a):
            acc["min"] = [float(v) for v in a.min(axis=0)]
            acc["max"] = [float(v) for v in a.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_glb_bytes(splats: SplatArrays, frame: str = "gltf", *, name: str = "splats") -> bytes:
    s = turn(splats, _rot(frame))
    b = _Builder()
    attributes = {"POSITION": b.add(s.means.astype(np.float32), "VEC3", bounds=True)}
    rgba = np.concatenate([_srgb_to_linear(s.rgb()), s.opacity()[:, None]], axis=1)
    attributes["COLOR_0"] = b.add(np.round(rgba * 255.0).astype(np.uint8), "VEC4", normalized=True)
    attributes[f"{EXT}:ROTATION"] = b.add(wxyz_to_xyzw(s.unit_quats()).astype(np.float32), "VEC4")
    attributes[f"{EXT}:SCALE"] = b.add(s.scales().astype(np.float32), "VEC3")
    attributes[f"{EXT}:OPACITY"] = b.add(s.opacity().astype(np.float32), "SCALAR")
    attributes[f"{EXT}:SH_DEGREE_0_COEF_0"] = b.add(s.sh0.astype(np.float32), "VEC3")
    k = 0
    for degree in range(1, s.sh_degree + 1):
        assert s.shN is not None
        for m in range(_N_COEF[degree]):
            attributes[f"{EXT}:SH_DEGREE_{degree}_COEF_{m}"] = b.add(s.shN[:, k].astype(np.float32), "VEC3")
            k += 1
    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "PortraitSplat"},
        "extensionsUsed": [EXT],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [
            {
                "name": name,
                "primitives": [
                    {
                        "attributes": attributes,
                        "mode": 0,
                        "extensions": {
                            EXT: {
                                "kernel": "ellipse",
                                "colorSpace": "srgb_rec709_display",
                                "projection": "perspective",
                                "sortingMethod": "cameraDistance",
                            }
                        },
                    }
                ],
            }
        ],
        "buffers": [{"byteLength": b.size}],
        "bufferViews": b.views,
        "accessors": b.accessors,
    }
    return pack_glb(gltf, b"".join(b.chunks))


def write_glb(path: str | os.PathLike[str], splats: SplatArrays, frame: str = "gltf", **kwargs: Any) -> None:
    write_atomic(path, to_glb_bytes(splats, frame, **kwargs))


# ------------------------------------------------------------------- reading
def read_accessor(gltf: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    """Accessor ``index`` as float32 [count, width] (normalised integers mapped to [0, 1] / [-1, 1])."""
    acc = gltf["accessors"][index]
    if "sparse" in acc:
        raise GltfError("sparse accessors are not supported")
    ctype, count, width = acc["componentType"], int(acc["count"]), _WIDTH[acc["type"]]
    dt = np.dtype(_COMPONENT[ctype])
    if "bufferView" not in acc:
        return np.zeros((count, width), np.float32)
    view = gltf["bufferViews"][acc["bufferView"]]
    if view.get("buffer", 0) != 0 or gltf["buffers"][0].get("uri") is not None:
        raise GltfError("only splats in the GLB's own binary chunk are read (no external buffers)")
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    stride = int(view.get("byteStride", 0)) or dt.itemsize * width
    need = start + stride * max(count - 1, 0) + dt.itemsize * width
    if count and need > len(binary):
        raise GltfError(f"accessor {index} reaches past the end of the binary chunk")
    arr = np.ndarray((count, width), dt, buffer=binary, offset=start, strides=(stride, dt.itemsize))
    out = arr.astype(np.float32)
    if acc.get("normalized") and ctype in _NORM_DIV:
        out = np.maximum(out / np.float32(_NORM_DIV[ctype]), np.float32(-1.0))
    return out


def _node_matrix(node: dict[str, Any]) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # column-major in glTF
    m = np.eye(4)
    x, y, z, w = node.get("rotation", (0.0, 0.0, 0.0, 1.0))
    m[:3, :3] = quat_to_matrix(np.array([w, x, y, z])) * np.asarray(node.get("scale", (1.0, 1.0, 1.0)))
    m[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return m


def _splat_primitive(gltf: dict[str, Any], binary: bytes, prim: dict[str, Any]) -> SplatArrays:
    attrs = prim["attributes"]
    need = ["POSITION", f"{EXT}:ROTATION", f"{EXT}:SCALE", f"{EXT}:OPACITY", f"{EXT}:SH_DEGREE_0_COEF_0"]
    missing = [a for a in need if a not in attrs]
    if missing:
        raise GltfError(f"{EXT} primitive lacks {', '.join(missing)}")

    def get(name: str) -> np.ndarray:
        return read_accessor(gltf, binary, attrs[name])

    q = xyzw_to_wxyz(get(f"{EXT}:ROTATION"))
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-12, q / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    scale = get(f"{EXT}:SCALE")
    bands = []
    for degree in (1, 2, 3):
        names = [f"{EXT}:SH_DEGREE_{degree}_COEF_{m}" for m in range(_N_COEF[degree])]
        if not all(n in attrs for n in names):
            break
        bands += [get(n) for n in names]
    shN = np.ascontiguousarray(np.stack(bands, axis=1)) if bands else None
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.maximum(scale, np.float32(1e-30))).astype(np.float32)
    return SplatArrays(
        get("POSITION"),
        q.astype(np.float32),
        log_scales,
        logit(get(f"{EXT}:OPACITY")[:, 0]),
        get(f"{EXT}:SH_DEGREE_0_COEF_0"),
        shN,
    )


def _concat(parts: list[SplatArrays]) -> SplatArrays:
    if len(parts) == 1:
        return parts[0]
    degree = min(p.sh_degree for p in parts)
    k = {0: 0, 1: 3, 2: 8, 3: 15}[degree]
    shN = None if k == 0 else np.concatenate([p.shN[:, :k] for p in parts if p.shN is not None])
    means, quats, log_scales, opacity_logits, sh0 = (
        np.concatenate([getattr(p, f) for p in parts])
        for f in ("means", "quats", "log_scales", "opacity_logits", "sh0")
    )
    return SplatArrays(means, quats, log_scales, opacity_logits, sh0, shN)


def from_glb_bytes(data: bytes, frame: str = "gltf") -> SplatArrays:
    """Every ``KHR_gaussian_splatting`` primitive of the default scene, each baked into its
    node's world transform, as one head-frame cloud."""
    gltf, binary = unpack_glb(data)
    nodes, meshes = gltf.get("nodes", []), gltf.get("meshes", [])
    scenes = gltf.get("scenes") or [{"nodes": list(range(len(nodes)))}]
    roots = scenes[gltf.get("scene", 0)].get("nodes", [])
    parts: list[SplatArrays] = []

    def visit(index: int, parent: np.ndarray) -> None:
        node = nodes[index]
        world = parent @ _node_matrix(node)
        if "mesh" in node:
            for prim in meshes[node["mesh"]].get("primitives", []):
                if EXT in prim.get("extensions", {}):
                    s = _splat_primitive(gltf, binary, prim)
                    parts.append(s if np.allclose(world, np.eye(4), atol=1e-9) else bake_splats(world, s))
        for child in node.get("children", []):
            visit(child, world)

    for root in roots:
        visit(root, np.eye(4))
    if not parts:
        raise GltfError(f"no {EXT} primitive in the GLB's scene (a mesh? import it with Blender's glTF importer)")
    return turn(_concat(parts), _rot(frame).T)


def read_glb(source: str | os.PathLike[str] | bytes, frame: str = "gltf") -> SplatArrays:
    return from_glb_bytes(read_source(source), frame)
