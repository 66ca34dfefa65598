"""Optional: use a user's own FLAME model instead of the built-in template.

FLAME may not be redistributed, so PortraitSplat never ships or downloads it. A user who
has accepted its licence can point us at a converted copy. Only ``.npz`` is read, with
``allow_pickle=False``: the official ``generic_model.pkl`` is a pickle (of chumpy objects),
and unpickling runs arbitrary code, so we refuse it with the one-line conversion.

FLAME's frame: metres, +Y up, the face looks toward +Z, +X is the subject's left. Ours
(head frame): +Z up, face toward -Y, +X the subject's left. So ``(x, y, z) -> (x, -z, y)``,
a proper rotation; the origin is then moved to roughly where the template's is (see
``mesh_from_flame_arrays``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .template import HeadMesh, anchors_by_rays, face_region_mask, vertex_normals

FLAME_TO_HEAD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

CONVERT_HINT = (
    "Convert it once, in an environment where you trust the file:\n"
    "  python -c \"import pickle, numpy as np; m = pickle.load(open('generic_model.pkl', 'rb'), "
    "encoding='latin1'); np.savez('flame_template.npz', v_template=np.array(m['v_template']), "
    "f=np.array(m['f']))\"\n"
    "then pass flame_template.npz."
)


def load_flame(path: str | Path) -> HeadMesh:
    """A FLAME template mesh (``v_template`` [5023, 3], ``f`` [9976, 3]) in our head frame.

    Anchors are found by casting the template's anchor rays scaled to FLAME's head depth,
    so they are approximate; ``params`` is None.
    """
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        raise ValueError(
            f"{path.name} is a pickle, which PortraitSplat does not load (it can run code). {CONVERT_HINT}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no FLAME file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            v = np.asarray(data["v_template"], dtype=np.float64)
            f = np.asarray(data["f"], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"{path.name} lacks the array {err}; expected 'v_template' and 'f'. {CONVERT_HINT}") from None
    except ValueError as err:  # object arrays need pickle
        raise ValueError(f"{path.name} could not be read without unpickling ({err}). {CONVERT_HINT}") from None
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"{path.name}: v_template {v.shape} / f {f.shape} do not describe a triangle mesh")
    return mesh_from_flame_arrays(v, f)


def mesh_from_flame_arrays(v_template: np.ndarray, faces: np.ndarray) -> HeadMesh:
    """Rotate FLAME's frame into ours, put the origin where ours is, and find the anchors.

    FLAME's neck is not ours, so the origin is placed from the parts both heads share: x
    midway across, y and z at the template's offsets from the nose tip (most -Y point) and
    the crown (top), scaled by the nose-to-back depth. Approximate, a few millimetres.
    """
    from .template import HeadShapeParams, _anchor_rays, build_head

    v = np.asarray(v_template, dtype=np.float64) @ FLAME_TO_HEAD.T
    lo, hi = v.min(axis=0), v.max(axis=0)
    ref_lo, ref_hi = (b.astype(np.float64) for b in build_head().bounds())
    k = (hi[1] - lo[1]) / (ref_hi[1] - ref_lo[1])
    origin = np.array([0.5 * (lo[0] + hi[0]), lo[1] - k * ref_lo[1], hi[2] - k * ref_hi[2]])
    v = v - origin
    f = np.asarray(faces, dtype=np.int32)
    rays = {n: (inside * k, d) for n, (inside, d) in _anchor_rays(HeadShapeParams()).items()}
    anchors = anchors_by_rays(v, f, rays)
    normals = vertex_normals(v, f)
    return HeadMesh(v.astype(np.float32), f, anchors, face_region_mask(v, normals, anchors), None)
