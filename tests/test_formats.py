"""SPZ, .splat and glTF KHR_gaussian_splatting codecs: round trips within each format's
quantisation, the axes each file is written in (both ways), quantisers, bad files."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from formats_support import random_splats

from blender_addon.core import formats as F
from blender_addon.core.formats import dotsplat, gltf, spz
from blender_addon.core.frames import HEAD_TO_PLY, quat_to_matrix
from blender_addon.core.sh import sh_basis_terms
from blender_addon.core.splat_arrays import SH_C0, SplatArrays


def _splats(n=400, k=15, seed=0) -> SplatArrays:
    return random_splats(n, k, seed)


def _rot_err(a: SplatArrays, b: SplatArrays) -> np.ndarray:
    """Angle (radians) between each pair of orientations."""
    d = np.abs(np.sum(a.unit_quats().astype(np.float64) * b.unit_quats(), axis=1))
    return 2 * np.arccos(np.clip(d, 0.0, 1.0))


def _colour(s: SplatArrays, dirs: np.ndarray) -> np.ndarray:
    """View-dependent colour of every splat seen along each unit direction: [D, N, 3]."""
    out = []
    for d in dirs:
        terms = sh_basis_terms(d[0], d[1], d[2], s.sh_degree)
        c = 0.5 + SH_C0 * s.sh0.astype(np.float64)
        if s.shN is not None:
            c = c + np.einsum("k,nkc->nc", np.asarray(terms, np.float64), s.shN.astype(np.float64))
        out.append(c)
    return np.stack(out)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("k", [0, 3, 8, 15])
@pytest.mark.parametrize("version", [2, 3])
def test_spz_round_trip_within_quantisation(k, version):
    s = _splats(k=k)
    data = spz.to_spz_bytes(s, frame="head", version=version)  # no turn: the file's own steps
    assert data[:2] == b"\x1f\x8b"
    t = spz.from_spz_bytes(data, frame="head")
    assert len(t) == len(s) and t.sh_degree == s.sh_degree
    pos = np.abs(t.means - s.means).max()
    assert 0 < pos <= 0.5 / 4096 + 1e-6  # 12 fraction bits
    assert np.abs(t.log_scales - s.log_scales).max() <= 1 / 32 + 1e-5
    assert np.abs(t.opacity() - s.opacity()).max() <= 0.5 / 255 + 1e-6
    assert np.abs(t.sh0 - s.sh0).max() <= 0.5 / 255 / 0.15 + 1e-5
    rot = _rot_err(s, t).max()
    assert rot < (0.007 if version == 3 else 0.25), rot  # v2 derives w from 8-bit x, y, z: coarse near w = 0
    if k:
        err = np.abs(t.shN - s.shN)
        assert err[:, :3].max() <= 4.5 / 128 + 1e-6  # 5 bits for band 1
        if k > 3:
            assert err[:, 3:].max() <= 8.5 / 128 + 1e-6  # 4 bits for bands 2 and 3
            assert err[:, 3:].max() > 4.5 / 128  # and those really are coarser


@pytest.mark.parametrize("k", [3, 15])
def test_spz_rub_round_trip_within_quantisation(k):
    # quantised in RUB axes, turned back: each band's error vector keeps its length
    s = _splats(k=k)
    t = spz.from_spz_bytes(spz.to_spz_bytes(s))
    assert np.abs(t.means - s.means).max() <= 0.5 / 4096 + 1e-6
    assert _rot_err(s, t).max() < 0.007
    err = t.shN - s.shN
    for band, (lo, hi, step) in enumerate([(0, 3, 4.5 / 128), (3, 8, 8.5 / 128), (8, 15, 8.5 / 128)]):
        if hi <= k:
            norm = np.linalg.norm(err[:, lo:hi], axis=1).max()
            assert norm <= step * np.sqrt(hi - lo) + 1e-6, (band, norm)


def test_spz_clips_sh_outside_unit_range():
    s = _splats(n=3, k=3)
    s.shN[:] = 0.0
    s.shN[0, 1, 0] = 1.7  # band 1, m = 0 (z in the head frame, y in RUB): stays one coefficient
    t = spz.from_spz_bytes(spz.to_spz_bytes(s))
    assert 127 / 128 - 1e-6 <= float(t.shN[0, 1, 0]) <= 1.0 + 1e-6  # clipped to the last step


def test_spz_smallest_three_is_finer_than_first_three():
    s = _splats(k=0)
    e3 = _rot_err(s, spz.from_spz_bytes(spz.to_spz_bytes(s, version=3))).mean()
    e2 = _rot_err(s, spz.from_spz_bytes(spz.to_spz_bytes(s, version=2))).mean()
    assert e3 < e2 / 3


def test_spz_header_fields():
    s = _splats(n=7, k=8)
    raw = gzip.decompress(spz.to_spz_bytes(s))
    magic, version, n, degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, frac, flags) == (0x5053474E, 3, 7, 2, 12, 0)
    assert raw[:4] == b"NGSP"
    assert len(raw) == 16 + 7 * (9 + 1 + 3 + 3 + 4 + 8 * 3)


def test_spz_quantisers_follow_the_reference():
    # quantizeSH(x, bucket) = clamp(((round(x*128)+128) + bucket/2) / bucket * bucket, 0, 255)
    x = np.float32([0.0, 0.1, -0.1, 0.99, -1.0, 2.0, -2.0])
    assert spz.quantize_sh(x, 8).tolist() == [128, 141, 115, 255, 0, 255, 0]
    assert spz.quantize_sh(x, 5).tolist() == [128, 144, 112, 255, 0, 255, 0]
    assert spz.quantize_sh(x, 4).tolist() == [128, 144, 112, 255, 0, 255, 0]
    # smallest three: identity quaternion (x, y, z, w) = (0, 0, 0, 1) -> index 3, all magnitudes 0
    assert spz.pack_quat_smallest_three(np.float32([[0, 0, 0, 1]])).tolist() == [[0, 0, 0, 0xC0]]
    q = np.float32([[0.5, -0.5, 0.5, -0.5]])  # ties: the first largest (x) is kept, sign folded in
    packed = spz.pack_quat_smallest_three(q)
    assert int(packed.view("<u4")[0, 0]) >> 30 == 0
    back = spz.unpack_quat_smallest_three(packed)[0]
    assert abs(abs(float(np.dot(back, q[0]))) - 1) < 1e-5


def test_spz_version_4_is_read_when_zstd_is_there():
    zstandard = pytest.importorskip("zstandard", reason="SPZ v4 needs the zstandard package")
    s = _splats(n=50, k=3)
    raw = gzip.decompress(spz.to_spz_bytes(s))
    n = 50
    sizes = [n * 9, n, n * 3, n * 3, n * 4, n * 9]
    streams, at = [], 16
    for size in sizes:
        streams.append(raw[at : at + size])
        at += size
    packed = [zstandard.ZstdCompressor().compress(x) for x in streams]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, n, 1, 12, 0, 6, 32)
    toc = b"".join(struct.pack("<QQ", len(c), len(u)) for c, u in zip(packed, streams))
    v4 = spz.from_spz_bytes(header + toc + b"".join(packed))
    v3 = spz.from_spz_bytes(spz.to_spz_bytes(s))
    for name, arr in v3.as_dict().items():
        np.testing.assert_array_equal(arr, v4.as_dict()[name], err_msg=name)


def test_dotsplat_round_trip_within_quantisation():
    s = _splats(k=15)
    data = dotsplat.to_splat_bytes(s)
    assert len(data) == 32 * len(s)
    t = dotsplat.from_splat_bytes(data)
    assert t.shN is None  # .splat has no view-dependent bands
    np.testing.assert_allclose(t.means, s.means, atol=1e-6)
    np.testing.assert_allclose(t.log_scales, s.log_scales, atol=1e-5)
    assert np.abs(t.opacity() - s.opacity()).max() <= 0.5 / 255 + 1e-6
    assert 0 < np.abs(t.rgb() - s.rgb()).max() <= 0.5 / 255 + 1e-6
    assert _rot_err(s, t).max() < 0.05


def test_dotsplat_clips_colour_outside_unit_range():
    s = _splats(n=2, k=0)
    s.sh0[:] = np.float32([[3.0, -3.0, 0.0], [0.0, 0.0, 0.0]])  # rgb 1.35, -0.35, 0.5
    t = dotsplat.from_splat_bytes(dotsplat.to_splat_bytes(s))
    np.testing.assert_allclose(t.rgb()[0], [1.0, 0.0, 0.5], atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("k", [0, 3, 8, 15])
def test_glb_round_trip_is_float_exact(k):
    s = _splats(k=k)
    t = gltf.from_glb_bytes(gltf.to_glb_bytes(s))
    np.testing.assert_allclose(t.means, s.means, atol=2e-7)
    np.testing.assert_allclose(t.log_scales, s.log_scales, atol=1e-5)
    np.testing.assert_allclose(t.opacity_logits, s.opacity_logits, atol=2e-4)  # via float32 sigmoid
    np.testing.assert_allclose(t.sh0, s.sh0, atol=1e-6)
    assert _rot_err(s, t).max() < 2e-3  # float32 rounding seen through arccos
    if k:
        np.testing.assert_allclose(t.shN, s.shN, atol=1e-6)  # bands turn to glTF axes and back
    else:
        assert t.shN is None


def test_glb_json_follows_the_extension():
    s = _splats(n=9, k=8)
    js, binary = gltf.unpack_glb(gltf.to_glb_bytes(s))
    assert js["asset"]["version"] == "2.0" and js["extensionsUsed"] == ["KHR_gaussian_splatting"]
    prim = js["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0
    ext = prim["extensions"]["KHR_gaussian_splatting"]
    assert ext["kernel"] == "ellipse" and ext["colorSpace"] == "srgb_rec709_display"
    names = set(prim["attributes"])
    expect = {"POSITION", "COLOR_0"} | {
        f"KHR_gaussian_splatting:{a}" for a in ("ROTATION", "SCALE", "OPACITY", "SH_DEGREE_0_COEF_0")
    }
    expect |= {f"KHR_gaussian_splatting:SH_DEGREE_1_COEF_{m}" for m in range(3)}
    expect |= {f"KHR_gaussian_splatting:SH_DEGREE_2_COEF_{m}" for m in range(5)}
    assert names == expect
    acc = js["accessors"]
    pos = acc[prim["attributes"]["POSITION"]]
    p = gltf.read_accessor(js, binary, prim["attributes"]["POSITION"])
    np.testing.assert_allclose(pos["min"], p.min(0)) and np.testing.assert_allclose(pos["max"], p.max(0))
    assert acc[prim["attributes"]["KHR_gaussian_splatting:OPACITY"]]["type"] == "SCALAR"
    scale = gltf.read_accessor(js, binary, prim["attributes"]["KHR_gaussian_splatting:SCALE"])
    np.testing.assert_allclose(scale, np.exp(s.log_scales)[:, [0, 1, 2]], rtol=1e-6)  # linear, axes kept
    op = gltf.read_accessor(js, binary, prim["attributes"]["KHR_gaussian_splatting:OPACITY"])[:, 0]
    np.testing.assert_allclose(op, s.opacity(), atol=1e-7)  # linear, not a logit
    # GLB chunks are 4-byte aligned and the header length is the file length
    data = gltf.to_glb_bytes(s)
    assert struct.unpack_from("<I", data, 8)[0] == len(data) and len(data) % 4 == 0


def test_glb_reader_takes_quantised_strided_accessors_and_node_transforms():
    s = _splats(n=20, k=0)
    js, binary = gltf.unpack_glb(gltf.to_glb_bytes(s))
    prim = js["meshes"][0]["primitives"][0]
    # opacity as normalised unsigned bytes, rotation as normalised shorts interleaved with padding
    op = np.round(s.opacity() * 255).astype(np.uint8)
    q = gltf.read_accessor(js, binary, prim["attributes"]["KHR_gaussian_splatting:ROTATION"])
    q16 = np.round(q * 32767).astype("<i2")
    inter = np.zeros((20, 6), "<i2")
    inter[:, :4] = q16
    extra = op.tobytes() + b"\0" * (-len(op) % 4)
    base = len(binary)
    binary = binary + extra + inter.tobytes()
    js["bufferViews"] += [
        {"buffer": 0, "byteOffset": base, "byteLength": len(op)},
        {"buffer": 0, "byteOffset": base + len(extra), "byteLength": inter.nbytes, "byteStride": 12},
    ]
    nv = len(js["bufferViews"])
    js["accessors"] += [
        {"bufferView": nv - 2, "componentType": 5121, "normalized": True, "count": 20, "type": "SCALAR"},
        {"bufferView": nv - 1, "componentType": 5122, "normalized": True, "count": 20, "type": "VEC4"},
    ]
    na = len(js["accessors"])
    prim["attributes"]["KHR_gaussian_splatting:OPACITY"] = na - 2
    prim["attributes"]["KHR_gaussian_splatting:ROTATION"] = na - 1
    js["buffers"][0]["byteLength"] = len(binary)
    # the splat node sits under a parent moved 1 m along glTF +X
    js["nodes"] = [{"children": [1], "translation": [1.0, 0.0, 0.0]}, {"mesh": 0}]
    js["scenes"] = [{"nodes": [0]}]
    t = gltf.from_glb_bytes(gltf.pack_glb(js, binary))
    np.testing.assert_allclose(t.means, s.means + np.float32([1.0, 0, 0]), atol=1e-6)  # glTF +X is head +X
    assert np.abs(t.opacity() - s.opacity()).max() <= 0.5 / 255 + 1e-6
    assert _rot_err(s, t).max() < 1e-3


# ------------------------------------------------------------------------ axes
def _one_splat() -> SplatArrays:
    """A splat at the nose tip (head -Y), long along head +X, leaning 30 degrees about head Y."""
    c, sn = np.cos(np.pi / 12), np.sin(np.pi / 12)
    return SplatArrays(
        np.float32([[0.01, -0.1, 0.02]]),
        np.float32([[c, 0.0, sn, 0.0]]),
        np.log(np.float32([[0.03, 0.01, 0.005]])),
        np.float32([2.0]),
        np.float32([[0.2, -0.1, 0.3]]),
        np.random.default_rng(3).uniform(-0.5, 0.5, (1, 15, 3)).astype(np.float32),
    )


def _covariance(s: SplatArrays) -> np.ndarray:
    r = quat_to_matrix(s.unit_quats()[0])
    return r @ np.diag(np.exp(2.0 * s.log_scales[0].astype(np.float64))) @ r.T


HEAD_TO_GLTF = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # x' = x, y' = z (up), z' = -y (front)


@pytest.mark.parametrize(
    ("encode", "decode_raw", "rot"),
    [
        (lambda s: gltf.to_glb_bytes(s), lambda b: gltf.from_glb_bytes(b, frame="head"), HEAD_TO_GLTF),
        (lambda s: spz.to_spz_bytes(s), lambda b: spz.from_spz_bytes(b, frame="head"), HEAD_TO_GLTF),  # RUB
        (lambda s: spz.to_spz_bytes(s, frame="rdf"), lambda b: spz.from_spz_bytes(b, frame="head"), HEAD_TO_PLY),
        (lambda s: dotsplat.to_splat_bytes(s), lambda b: dotsplat.from_splat_bytes(b, frame="head"), HEAD_TO_PLY),
    ],
    ids=["glb-gltf", "spz-rub", "spz-rdf", "splat-rdf"],
)
def test_each_file_holds_its_own_axes(encode, decode_raw, rot):
    s = _one_splat()
    raw = decode_raw(encode(s))  # the file's values, not turned back
    np.testing.assert_allclose(raw.means[0], rot @ s.means[0], atol=2.5e-4)
    np.testing.assert_allclose(_covariance(raw), rot @ _covariance(s) @ rot.T, rtol=0.08, atol=1e-6)
    if raw.shN is not None:  # the colour seen along R d in the file is the head's seen along d
        dirs = np.random.default_rng(1).normal(size=(12, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        np.testing.assert_allclose(_colour(raw, dirs @ rot.T), _colour(s, dirs), atol=0.12)


def test_glb_face_looks_toward_plus_z_and_up_is_plus_y():
    s = _one_splat()
    s.means[0] = [0.0, -0.1, 0.0]  # nose tip
    raw = gltf.from_glb_bytes(gltf.to_glb_bytes(s), frame="head")
    np.testing.assert_allclose(raw.means[0], [0, 0, 0.1], atol=1e-7)
    s.means[0] = [0.0, 0.0, 0.1]  # crown
    raw = gltf.from_glb_bytes(gltf.to_glb_bytes(s), frame="head")
    np.testing.assert_allclose(raw.means[0], [0, 0.1, 0], atol=1e-7)


@pytest.mark.parametrize("fmt", ["spz", "splat", "glb"])
def test_file_to_head_and_back_is_stable(fmt):
    # head -> file -> head -> file: the second file equals the first byte for byte
    s = _splats(k=0 if fmt == "splat" else 15)
    a = F.from_bytes(F.to_bytes(s, fmt), fmt)
    b = F.from_bytes(F.to_bytes(a, fmt), fmt)  # a second pass moves nothing a quantum
    np.testing.assert_allclose(b.means, a.means, atol=1e-6)
    np.testing.assert_allclose(b.log_scales, a.log_scales, atol=1e-5)
    np.testing.assert_allclose(b.opacity(), a.opacity(), atol=1e-6)
    np.testing.assert_allclose(b.sh0, a.sh0, atol=1e-5)
    assert _rot_err(a, b).max() < (0.02 if fmt == "splat" else 2e-3)  # .splat: 8-bit wxyz
    if a.shN is not None:
        np.testing.assert_allclose(b.shN, a.shN, atol=1e-5)


# --------------------------------------------------------------- dispatch, errors
def test_dispatch_by_name_and_header(tmp_path):
    s = _splats(n=30, k=3)
    for fmt in F.FORMATS:
        path = tmp_path / f"a.{fmt}"
        F.write_splats(path, s)
        t = F.read_splats(path)
        assert len(t) == 30
        np.testing.assert_allclose(t.means, s.means, atol=2.5e-4)
        if fmt != "splat":
            assert F.sniff(path.read_bytes()) == fmt
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(F.FormatError, match="unknown splat file type"):
        F.format_of("head.obj")


def test_bad_files_raise_typed_errors():
    good = spz.to_spz_bytes(_splats(n=10, k=3))
    with pytest.raises(spz.SpzError, match="too short"):
        spz.from_spz_bytes(gzip.compress(gzip.decompress(good)[:-5]))
    with pytest.raises(spz.SpzError, match="magic"):
        spz.from_spz_bytes(gzip.compress(b"XXXX" + gzip.decompress(good)[4:]))
    with pytest.raises(spz.SpzError, match="version 9"):
        raw = bytearray(gzip.decompress(good))
        raw[4] = 9
        spz.from_spz_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(spz.SpzError, match="neither gzip"):
        spz.from_spz_bytes(b"hello world")
    with pytest.raises(dotsplat.DotSplatError, match="32-byte"):
        dotsplat.from_splat_bytes(b"\0" * 33)
    with pytest.raises(gltf.GltfError, match="not a GLB"):
        gltf.from_glb_bytes(b"\0" * 40)
    js = {"asset": {"version": "2.0"}, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}]}
    js["meshes"] = [{"primitives": [{"attributes": {}, "mode": 4}]}]
    with pytest.raises(gltf.GltfError, match="no KHR_gaussian_splatting primitive"):
        gltf.from_glb_bytes(gltf.pack_glb(js, b""))
    with pytest.raises(spz.SpzError, match="24-bit"):
        far = _splats(n=2, k=0)
        far.means[0, 0] = 3000.0
        spz.to_spz_bytes(far)
    assert json.loads(json.dumps({"ok": 1}))  # json import used


def test_glb_reader_joins_every_splat_primitive_of_the_scene():
    a, b = _splats(n=10, k=8, seed=1), _splats(n=6, k=3, seed=2)
    ja, ba = gltf.unpack_glb(gltf.to_glb_bytes(a))
    jb, bb = gltf.unpack_glb(gltf.to_glb_bytes(b))
    # b's buffer views shifted behind a's in one buffer; b's mesh on a node turned 90 deg about glTF +Y
    shift = len(ba)
    views = ja["bufferViews"] + [dict(v, byteOffset=v["byteOffset"] + shift) for v in jb["bufferViews"]]
    nv, na = len(ja["bufferViews"]), len(ja["accessors"])
    accessors = ja["accessors"] + [dict(x, bufferView=x["bufferView"] + nv) for x in jb["accessors"]]
    prim_b = jb["meshes"][0]["primitives"][0]
    prim_b["attributes"] = {k: v + na for k, v in prim_b["attributes"].items()}
    js = dict(ja, bufferViews=views, accessors=accessors, buffers=[{"byteLength": len(ba) + len(bb)}])
    js["meshes"] = ja["meshes"] + jb["meshes"]
    s = np.sqrt(0.5)
    js["nodes"] = [{"mesh": 0}, {"mesh": 1, "rotation": [0.0, s, 0.0, s]}]
    js["scenes"] = [{"nodes": [0, 1]}]
    t = gltf.from_glb_bytes(gltf.pack_glb(js, ba + bb))
    assert len(t) == 16 and t.sh_degree == 1  # the lowest degree both carry
    np.testing.assert_allclose(t.means[:10], a.means, atol=1e-6)
    # +90 deg about glTF +Y (up) is +90 deg about head +Z: (x, y) -> (-y, x)
    expect = np.stack([-b.means[:, 1], b.means[:, 0], b.means[:, 2]], axis=1)
    np.testing.assert_allclose(t.means[10:], expect, atol=1e-6)
