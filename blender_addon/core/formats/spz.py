"""Niantic SPZ: read versions 2 to 4, write version 3 (or 2). numpy only.

The layout (https://github.com/nianticlabs/spz, ``src/cc/load-spz.cc``): versions 1 to 3 are
one gzip stream holding a 16-byte header

    magic u32 0x5053474e ("NGSP"), version u32, numPoints u32, shDegree u8,
    fractionalBits u8, flags u8, reserved u8

then, attribute by attribute for every point: positions (3 x 24-bit signed fixed point with
``fractionalBits`` fraction bits), alphas (u8, sigmoid(opacity) * 255), colours (u8,
sh0 * 0.15 * 255 + 127.5), scales (u8, (log scale + 10) * 16), rotations and SH (u8,
round(x * 128) + 128, coefficient-major with the colour channel inner, the same order as our
``shN[N, K, 3]``). Rotations are xyzw quaternions: version 2 keeps x, y, z (w >= 0) at 8 bits;
version 3 keeps the index of the largest component (2 bits) and the other three as sign +
9-bit magnitude scaled by 1/sqrt(2). Version 4 holds the same six streams, each compressed on
its own with ZSTD after a 32-byte plaintext header and a table of contents; reading it needs
a zstd module (Python 3.14's ``compression.zstd`` or the ``zstandard`` package), so we write
version 3, which every reader takes.

Axes: SPZ stores RUB (x right, y up, z back: three.js / OpenGL), the spec's default. Some
tools store the PLY's RDF axes in SPZ instead (PlayCanvas splat-transform bakes to its PLY
space and writes with no conversion); ``frame="rdf"`` reads and writes those, ``frame="head"``
keeps our head frame, no conversion.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any

import numpy as np

from ..frames import HEAD_TO_PLY
from ..splat_arrays import SplatArrays, logit, sigmoid
from ._common import HEAD_TO_RUB, read_source, turn, write_atomic, wxyz_to_xyzw, xyzw_to_wxyz

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
FRACTIONAL_BITS = 12  # ~0.24 mm steps, +-2048 m range (what Niantic's writer uses)
FRAMES = ("rub", "rdf", "head")
_HEADER = struct.Struct("<IIIBBBB")  # legacy (v1-3) header, 16 bytes
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")  # 32 bytes
_SQRT1_2 = np.float32(np.sqrt(0.5))
_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}


class SpzError(ValueError):
    """Bytes that are not a readable SPZ file."""


def _head_to(frame: str) -> np.ndarray:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    return {"rub": HEAD_TO_RUB, "rdf": HEAD_TO_PLY, "head": np.eye(3)}[frame]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    """SPZ's SH quantiser: 8 bits, then the nearest multiple of 2^(8 - bits) (0 stays exact)."""
    bucket = 1 << (8 - bits)
    q = np.round(np.asarray(x, np.float32) * 128.0).astype(np.int32) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def pack_quat_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions [N, 4] -> [N, 4] bytes (version 3 and later)."""
    q = np.asarray(q_xyzw, np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    n = len(q)
    largest = np.argmax(np.abs(q), axis=1)
    negate = q[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum((np.float32(511.0) * (np.abs(q[:, i]) / _SQRT1_2) + np.float32(0.5)).astype(np.uint32), 511)
        comp = np.where(keep, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    out: np.ndarray = comp.astype("<u4").view(np.uint8).reshape(n, 4)
    return out


def unpack_quat_smallest_three(r: np.ndarray) -> np.ndarray:
    """[N, 4] bytes -> unit xyzw quaternions [N, 4]."""
    comp = np.ascontiguousarray(r, np.uint8).view("<u4").reshape(-1).astype(np.uint32)
    n = len(comp)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    q = np.zeros((n, 4), np.float32)
    for i in (3, 2, 1, 0):
        other = largest != i
        mag = (comp & np.uint32(511)).astype(np.float32)
        neg = ((comp >> np.uint32(9)) & np.uint32(1)).astype(bool)
        val = _SQRT1_2 * mag / np.float32(511.0)
        q[:, i] = np.where(other, np.where(neg, -val, val), 0.0)
        comp = np.where(other, comp >> np.uint32(10), comp)
    q[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(q * q, axis=1)))
    return q


def pack_quat_first_three(q_xyzw: np.ndarray) -> np.ndarray:
    """Version 2: x, y, z of the quaternion with w >= 0, 8 bits each."""
    q = np.asarray(q_xyzw, np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    q = q * np.where(q[:, 3:] < 0, -127.5, 127.5).astype(np.float32) + np.float32(127.5)
    return _u8(q[:, :3])


def unpack_quat_first_three(r: np.ndarray) -> np.ndarray:
    xyz = np.asarray(r, np.float32) / np.float32(127.5) - np.float32(1.0)
    w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1)))
    return np.concatenate([xyz, w[:, None]], axis=1).astype(np.float32)


def to_spz_bytes(
    splats: SplatArrays, frame: str = "rub", *, version: int = 3, sh1_bits: int = 5, sh_rest_bits: int = 4
) -> bytes:
    """Encode ``splats`` (head frame) as an SPZ file (gzip, version 3 or 2)."""
    if version not in (2, 3):
        raise ValueError(f"we write SPZ versions 2 and 3, not {version}")
    if not (1 <= sh1_bits <= 8 and 1 <= sh_rest_bits <= 8):
        raise ValueError("SH quantisation bits must be 1..8")
    s = turn(splats, _head_to(frame))
    n, degree = len(s), s.sh_degree
    fixed = np.round(s.means.astype(np.float64) * (1 << FRACTIONAL_BITS)).astype(np.int64)
    if n and np.abs(fixed).max() >= 1 << 23:
        raise SpzError(f"positions beyond +-{(1 << 23) >> FRACTIONAL_BITS} m do not fit SPZ's 24-bit fixed point")
    positions = fixed.astype("<i4").view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = _u8(sigmoid(s.opacity_logits) * np.float32(255.0))
    colors = _u8(s.sh0.astype(np.float32) * np.float32(COLOR_SCALE * 255.0) + np.float32(127.5))
    scales = _u8((s.log_scales.astype(np.float32) + np.float32(10.0)) * np.float32(16.0))
    q = wxyz_to_xyzw(s.quats)
    rotations = pack_quat_smallest_three(q) if version >= 3 else pack_quat_first_three(q)
    if degree:
        assert s.shN is not None
        sh = np.concatenate(
            [quantize_sh(s.shN[:, :3], sh1_bits), quantize_sh(s.shN[:, 3:], sh_rest_bits)], axis=1
        )  # [N, K, 3]: coefficient-major, channel inner, as SPZ orders it
    else:
        sh = np.zeros((n, 0), np.uint8)
    header = _HEADER.pack(MAGIC, version, n, degree, FRACTIONAL_BITS, 0, 0)
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(header + body, compresslevel=6, mtime=0)  # zlib's default: level 9 is 10x slower for 3% less


def write_spz(path: str | os.PathLike[str], splats: SplatArrays, frame: str = "rub", **kwargs: Any) -> None:
    write_atomic(path, to_spz_bytes(splats, frame, **kwargs))


def _zstd_decompress(data: bytes, size: int) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found, unused-ignore]  # Python 3.14+

        out: bytes = zstd.decompress(data)
        return out
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise SpzError(
            "this is an SPZ version 4 file (ZSTD streams); reading it needs the 'zstandard' package "
            "(pip install zstandard) or Python 3.14"
        ) from exc
    out = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    return out


def _split_streams(raw: bytes, n: int, degree: int, version: int) -> list[bytes]:
    """The six attribute streams of a legacy (v1-3) body, after its 16-byte header."""
    quat_bytes = 4 if version >= 3 else 3
    sizes = [n * 9, n, n * 3, n * 3, n * quat_bytes, n * _DIM[degree] * 3]
    out, at = [], _HEADER.size
    for size in sizes:
        out.append(raw[at : at + size])
        at += size
    if at > len(raw):
        raise SpzError(f"SPZ body is {len(raw)} bytes, too short for {n} points of SH degree {degree}")
    return out


def _v4_streams(data: bytes) -> tuple[int, int, int, int, list[bytes]]:
    if len(data) < _HEADER_V4.size:
        raise SpzError("SPZ file shorter than its header")
    magic, version, n, degree, frac, _flags, nstreams, toc = _HEADER_V4.unpack_from(data)
    if magic != MAGIC or version < 4:
        raise SpzError(f"not an SPZ version 4 header (magic {magic:#x}, version {version})")
    entries = [struct.unpack_from("<QQ", data, toc + 16 * i) for i in range(nstreams)]
    at, streams = toc + 16 * nstreams, []
    for csize, usize in entries:
        streams.append(_zstd_decompress(data[at : at + csize], usize))
        at += csize
    streams += [b""] * (6 - len(streams))  # a writer leaves out the SH stream at degree 0
    return version, n, degree, frac, streams[:6]


def from_spz_bytes(data: bytes, frame: str = "rub") -> SplatArrays:
    """Decode an SPZ file (versions 2 to 4) into head-frame arrays.

    SH degree 4 (version 3 and later) is cut to degree 3, the most our splats carry."""
    rot = _head_to(frame).T
    if data[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise SpzError(f"not a readable gzip stream: {exc}") from exc
        if len(raw) < _HEADER.size:
            raise SpzError("SPZ file shorter than its header")
        magic, version, n, degree, frac, _flags, _ = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise SpzError(f"bad SPZ magic {magic:#x}")
        if version not in (2, 3):
            raise SpzError(f"SPZ version {version} is not supported (2 to 4 are)")
        if degree not in _DIM:
            raise SpzError(f"SPZ SH degree {degree} is out of range")
        streams = _split_streams(raw, n, degree, version)
    elif data[:4] == b"NGSP":
        version, n, degree, frac, streams = _v4_streams(data)
        if degree not in _DIM:
            raise SpzError(f"SPZ SH degree {degree} is out of range")
    else:
        raise SpzError("not an SPZ file (neither gzip nor an NGSP header)")
    pos_b, alpha_b, color_b, scale_b, rot_b, sh_b = (np.frombuffer(s, np.uint8) for s in streams)
    k = _DIM[degree]
    expect = [n * 9, n, n * 3, n * 3, n * (4 if version >= 3 else 3), n * k * 3]
    if [len(a) for a in (pos_b, alpha_b, color_b, scale_b, rot_b, sh_b)] != expect:
        raise SpzError("SPZ attribute streams do not match the point count")
    p = pos_b.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = (fixed ^ 0x800000) - 0x800000  # sign-extend 24 bits
    means = (fixed.astype(np.float64) / (1 << frac)).astype(np.float32)
    opacity_logits = logit(alpha_b.astype(np.float32) / np.float32(255.0))
    sh0 = (color_b.reshape(n, 3).astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(COLOR_SCALE)
    log_scales = scale_b.reshape(n, 3).astype(np.float32) / np.float32(16.0) - np.float32(10.0)
    if version >= 3:
        q = unpack_quat_smallest_three(rot_b.reshape(n, 4))
    else:
        q = unpack_quat_first_three(rot_b.reshape(n, 3))
    shN = None
    if k:
        shN = (sh_b.reshape(n, k, 3).astype(np.float32) - np.float32(128.0)) / np.float32(128.0)
        shN = np.ascontiguousarray(shN[:, :15])
    s = SplatArrays(means, xyzw_to_wxyz(q), log_scales, opacity_logits, sh0.astype(np.float32), shN)
    return turn(s, rot)


def read_spz(source: str | os.PathLike[str] | bytes, frame: str = "rub") -> SplatArrays:
    return from_spz_bytes(read_source(source), frame)
