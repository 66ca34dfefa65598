"""backend/prior: the head template, its fit to landmarks, surface sampling, colours, FLAME."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from backend.prior import (
    ANCHOR_NAMES,
    MEDIAPIPE_INDEX,
    HeadMesh,
    HeadShapeParams,
    build_head,
    euler_from_pose,
    fit_head,
    init_gaussians,
    intrinsics_from_fov,
    look_at_head,
    pose_from_euler,
    project_colors,
    project_points,
    sample_surface,
)
from backend.prior.template import head_sdf
from blender_addon.core.splat_arrays import sh0_to_rgb, sigmoid


@pytest.fixture(scope="module")
def head() -> HeadMesh:
    return build_head()


# ------------------------------------------------------------------ helpers


def _point_mesh_distance(points: np.ndarray, mesh: HeadMesh, candidates: int = 12) -> np.ndarray:
    """Exact distance [N] from points to the mesh, checking the nearest `candidates` triangles."""
    v = mesh.vertices.astype(np.float64)
    tri = v[mesh.faces]
    _, idx = cKDTree(tri.mean(axis=1)).query(points, k=candidates)
    t = tri[idx]  # [N, C, 3, 3]
    p = np.asarray(points, np.float64)[:, None, :]
    a, b, c = t[:, :, 0], t[:, :, 1], t[:, :, 2]
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    h = np.einsum("ncd,ncd->nc", p - a, n)
    q = p - h[..., None] * n  # projection onto the plane
    inside = np.ones(h.shape, bool)
    for e0, e1 in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("ncd,ncd->nc", np.cross(e1 - e0, q - e0), n) >= 0
    best = np.where(inside, np.abs(h), np.inf)
    for e0, e1 in ((a, b), (b, c), (c, a)):
        d = e1 - e0
        s = np.clip(np.einsum("ncd,ncd->nc", p - e0, d) / np.einsum("ncd,ncd->nc", d, d), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (e0 + s[..., None] * d), axis=-1))
    return best.min(axis=1)


def _synthetic_landmarks(mesh, r_head, distance, size=(768, 1024), fov=30.0, noise=0.0, seed=0, offset=(0.02, -0.015)):
    fx, fy, cx, cy = intrinsics_from_fov(*size, fov)
    w2c = look_at_head(r_head, distance, offset)
    names = list(MEDIAPIPE_INDEX)
    uv, _ = project_points(mesh.anchor_array(names), w2c, fx, fy, cx, cy)
    lm = np.full((478, 2), np.nan)
    lm[[MEDIAPIPE_INDEX[n] for n in names]] = uv + np.random.default_rng(seed).normal(0.0, noise, uv.shape)
    return lm, w2c


# ----------------------------------------------------------------- template


def test_template_has_adult_head_dimensions(head):
    lo, hi = head.bounds()
    ear_to_ear = hi[0] - lo[0]
    a = head.anchors
    assert 0.145 <= ear_to_ear <= 0.170, ear_to_ear
    assert 0.140 <= a["left_cheek"][0] - a["right_cheek"][0] <= 0.155  # face width in front of the ears
    assert 0.190 <= a["back_of_head"][1] - a["nose_tip"][1] <= 0.230  # nose tip to back of head
    assert 0.215 <= a["crown"][2] - a["chin"][2] <= 0.245  # chin to crown
    assert 0.055 <= a["left_eye_outer"][0] - a["right_eye_outer"][0] <= 0.105
    # The origin is the head centre: crown and chin equidistant, ears symmetric.
    assert abs(a["crown"][2] + a["chin"][2]) < 0.005
    assert abs(hi[0] + lo[0]) < 1e-4


def test_template_is_closed_with_outward_winding(head):
    f = head.faces
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    # Consistent winding on a closed surface: each directed edge once, its reverse once.
    assert len(np.unique(directed, axis=0)) == len(directed)
    _, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    assert np.all(counts == 2)
    assert len(head.vertices) - len(counts) + len(f) == 2  # Euler characteristic of a sphere
    assert 0.004 < head.signed_volume() < 0.007  # m^3: a head and a neck stub, and positive
    nose = np.argmin(np.linalg.norm(head.vertices - head.anchors["nose_tip"], axis=1))
    assert head.vertex_normals()[nose, 1] < -0.8
    crown = np.argmin(np.linalg.norm(head.vertices - head.anchors["crown"], axis=1))
    assert head.vertex_normals()[crown, 2] > 0.9


def test_template_size_and_dtypes(head):
    assert head.vertices.dtype == np.float32 and head.faces.dtype == np.int32
    assert 5_000 <= len(head.faces) <= 25_000
    assert not head.vertices.flags.writeable  # shared through the cache
    assert build_head() is head


def test_anchors_lie_on_the_surface_and_make_sense(head):
    pts = head.anchor_array(ANCHOR_NAMES)
    assert set(head.anchors) == set(ANCHOR_NAMES)
    assert _point_mesh_distance(pts, head).max() < 1e-4
    a = head.anchors
    # The nose tip is the most forward point of the whole head.
    assert a["nose_tip"][1] <= head.vertices[:, 1].min() + 1e-3
    # Subject's right is -X.
    for side, sign in (("right", -1), ("left", 1)):
        for part in ("eye_outer", "eye_inner", "cheek", "ear"):
            assert np.sign(a[f"{side}_{part}"][0]) == sign, f"{side}_{part}"
        assert np.sign(a[f"mouth_{side}"][0]) == sign
    assert abs(a["right_eye_outer"][0]) > abs(a["right_eye_inner"][0])
    assert (
        a["chin"][2] < a["mouth_left"][2] < a["nose_tip"][2] < a["left_eye_inner"][2] < a["forehead"][2] < a["crown"][2]
    )


def test_face_mask_covers_the_face_only(head):
    tree = cKDTree(head.vertices)
    for name in ("nose_tip", "left_eye_inner", "right_eye_outer", "mouth_left", "chin", "forehead"):
        assert head.face_mask[tree.query(head.anchors[name])[1]], name
    for name in ("back_of_head", "crown", "left_ear", "right_ear"):
        assert not head.face_mask[tree.query(head.anchors[name])[1]], name
    assert 0.1 < head.face_mask.mean() < 0.4


def test_scaled_params_scale_the_mesh_exactly(head):
    k = np.array([1.1, 0.9, 1.05])
    other = build_head(HeadShapeParams().scaled(*k))
    np.testing.assert_allclose(other.vertices, head.vertices * k, atol=1e-6)
    np.testing.assert_allclose(other.anchors["nose_tip"], head.anchors["nose_tip"] * k, atol=1e-6)


def test_shape_params_move_the_features():
    narrow = build_head(HeadShapeParams(eye_spacing=0.055, nose_depth=0.028))
    base = build_head()

    def d_eyes(m):
        return m.anchors["left_eye_inner"][0] - m.anchors["right_eye_inner"][0]

    assert d_eyes(narrow) < d_eyes(base) - 0.006
    assert narrow.anchors["nose_tip"][1] < base.anchors["nose_tip"][1] - 0.006
    with pytest.raises(ValueError, match="positive"):
        HeadShapeParams(width=-1.0)


# ----------------------------------------------------------------- sampling


def test_samples_lie_on_the_surface_with_outward_normals(head):
    pts, nrm, fid = sample_surface(head, 10_000, np.random.default_rng(3))
    assert pts.shape == (10_000, 3) and nrm.shape == (10_000, 3) and fid.shape == (10_000,)
    assert _point_mesh_distance(pts, head).max() < 1e-3
    # ... and on the shape the mesh approximates (its implicit function), within 1 mm.
    assert np.abs(head_sdf(pts.astype(np.float64))).max() < 1e-3
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", nrm, head.face_normals()[fid]) > 0.3)


def test_sampling_is_uniform_by_area_not_by_triangle():
    # Two unit squares side by side: one of 2 triangles, one of 200. Half the points each.
    coarse_v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    coarse_f = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    g = np.linspace(0, 1, 11)
    xx, yy = np.meshgrid(g + 1.0, g, indexing="ij")
    fine_v = np.column_stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)]).astype(np.float32)
    fine_f = []
    for i in range(10):
        for j in range(10):
            a, b, c, d = i * 11 + j, (i + 1) * 11 + j, (i + 1) * 11 + j + 1, i * 11 + j + 1
            fine_f += [[a, b, c], [a, c, d]]
    v = np.concatenate([coarse_v, fine_v])
    f = np.concatenate([coarse_f, np.asarray(fine_f, np.int32) + 4])
    mesh = HeadMesh(v, f, {}, np.zeros(len(v), bool))
    pts, _, fid = sample_surface(mesh, 20_000, 0)
    share_fine = np.mean(fid >= 2)
    assert abs(share_fine - 0.5) < 0.02  # per-triangle sampling would give ~0.99
    assert np.all((pts[:, 0] >= 0) & (pts[:, 0] <= 2) & (pts[:, 1] >= 0) & (pts[:, 1] <= 1))
    # Uniform inside the triangles too: left and right halves of the coarse square.
    coarse = pts[fid < 2]
    assert abs(np.mean(coarse[:, 0] < 0.5) - 0.5) < 0.03


def test_sampling_density_matches_area_on_the_head(head):
    _, _, fid = sample_surface(head, 10_000, 7)
    area = head.face_areas()
    upper = head.vertices[head.faces].mean(axis=1)[:, 2] > 0.0
    expected = area[upper].sum() / area.sum()
    assert abs(np.mean(upper[fid]) - expected) < 0.02


def test_sampling_is_deterministic_per_seed(head):
    a = sample_surface(head, 500, 11)[0]
    b = sample_surface(head, 500, np.random.default_rng(11))[0]
    c = sample_surface(head, 500, 12)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_init_gaussians_match_method_a1(head):
    s = init_gaussians(head, rng=0)
    assert len(s) == 10_000
    np.testing.assert_allclose(sigmoid(s.opacity_logits), 0.2, atol=1e-6)
    np.testing.assert_allclose(s.scales(), 0.02 * 0.23, rtol=1e-6)  # 0.02 head units; 1 unit = 0.23 m
    np.testing.assert_array_equal(s.quats, np.tile([1.0, 0.0, 0.0, 0.0], (10_000, 1)))
    np.testing.assert_array_equal(s.sh0, 0.0)
    assert s.shN is None
    assert np.abs(head_sdf(s.means.astype(np.float64))).max() < 1e-3
    colours = np.random.default_rng(1).random((10_000, 3)).astype(np.float32)
    painted = init_gaussians(head, rng=0, colors=colours)
    np.testing.assert_allclose(sh0_to_rgb(painted.sh0), colours, atol=1e-5)
    np.testing.assert_array_equal(painted.means, s.means)
    big = init_gaussians(build_head(HeadShapeParams().scaled(1.2)), n=100, rng=0)
    np.testing.assert_allclose(big.scales(), 0.02 * 0.23 * 1.2, rtol=1e-5)


# ------------------------------------------------------------------ fitting


def test_surfel_quats_turn_z_onto_the_normal_everywhere():
    import torch

    from backend.gaussians.render import quat_to_rotmat
    from backend.prior.sample import surfel_quats

    n = np.random.default_rng(0).normal(size=(5000, 3))
    n[:50] = [0.0, 0.0, -1.0]  # straight down, and within a hair of it: the shortest arc cancels there
    n[50:100, :2] = np.random.default_rng(1).normal(size=(50, 2)) * 1e-4
    n[50:100, 2] = -1.0
    n[100] = [0.0, 0.0, 1.0]
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    q = surfel_quats(n.astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    z_axis = quat_to_rotmat(torch.from_numpy(q)).numpy()[:, :, 2]
    np.testing.assert_allclose(z_axis, n, atol=1e-5)


def test_pose_conventions():
    np.testing.assert_allclose(euler_from_pose(pose_from_euler(20.0, -10.0, 5.0)), (20.0, -10.0, 5.0), atol=1e-9)
    head = build_head()
    fx, fy, cx, cy = intrinsics_from_fov(640, 640)
    front = look_at_head(np.eye(3), 0.6)
    uv0, z0 = project_points(head.anchors["nose_tip"][None], front, fx, fy, cx, cy)
    assert abs(uv0[0, 0] - cx) < 1e-6 and z0[0] < 0.6  # nose on the axis, nearer than the centre
    uv_l, _ = project_points(head.anchors["left_eye_outer"][None], front, fx, fy, cx, cy)
    assert uv_l[0, 0] > cx  # the subject's left eye is on the image's right
    uv_c, _ = project_points(head.anchors["chin"][None], front, fx, fy, cx, cy)
    assert uv_c[0, 1] > cy  # chin below the centre (image y down)
    uv_yaw, _ = project_points(
        head.anchors["nose_tip"][None], look_at_head(pose_from_euler(20, 0, 0), 0.6), fx, fy, cx, cy
    )
    assert uv_yaw[0, 0] > cx + 10  # yaw > 0: the face turns toward the image's right
    uv_pitch, _ = project_points(
        head.anchors["nose_tip"][None], look_at_head(pose_from_euler(0, 15, 0), 0.6), fx, fy, cx, cy
    )
    assert uv_pitch[0, 1] < uv0[0, 1] - 10  # pitch > 0: looking up, the nose rises in the image
    uv_roll, _ = project_points(
        head.anchors["crown"][None], look_at_head(pose_from_euler(0, 0, 15), 0.6), fx, fy, cx, cy
    )
    assert uv_roll[0, 0] > cx + 10  # roll > 0: leaning to their left shoulder, the crown goes right


def test_fit_recovers_pose_and_apparent_size():
    truth = build_head(HeadShapeParams().scaled(1.1))
    lm, w2c = _synthetic_landmarks(truth, pose_from_euler(20.0, -10.0, 0.0), 0.7, noise=0.5)
    fit = fit_head(lm, (768, 1024))
    yaw, pitch, roll = fit.yaw_pitch_roll
    assert abs(yaw - 20.0) < 3 and abs(pitch + 10.0) < 3 and abs(roll) < 3
    # Size and distance trade off exactly in a pinhole image: only their ratio is known.
    apparent = fit.scale / np.linalg.norm(fit.world_to_camera[:3, 3])
    assert abs(apparent / (1.1 / np.linalg.norm(w2c[:3, 3])) - 1.0) < 0.05
    assert fit.scale == 1.0
    assert fit.reprojection_error_px < 1.5
    sx, sz = fit.proportions
    assert abs(sx - 1) < 0.05 and abs(sz - 1) < 0.05
    # The returned camera reproduces the landmarks with the returned shape.
    uv, _ = fit.project(fit.mesh().anchors["nose_tip"][None])
    assert np.linalg.norm(uv[0] - lm[MEDIAPIPE_INDEX["nose_tip"]]) < 2.0
    assert fit.camera_position[1] < -0.5  # the camera is in front of the face
    np.testing.assert_allclose(fit.world_to_camera[:3, :3] @ fit.world_to_camera[:3, :3].T, np.eye(3), atol=1e-9)


def test_fit_recovers_scale_when_the_distance_is_known():
    truth = build_head(HeadShapeParams().scaled(1.1))
    lm, w2c = _synthetic_landmarks(truth, pose_from_euler(20.0, -10.0, 0.0), 0.7, noise=0.5, seed=1)
    fit = fit_head(lm, (768, 1024), camera_distance=float(np.linalg.norm(w2c[:3, 3])))
    assert abs(fit.scale / 1.1 - 1.0) < 0.05
    assert abs(fit.params.height / (0.23 * 1.1) - 1.0) < 0.06
    yaw, pitch, _ = fit.yaw_pitch_roll
    assert abs(yaw - 20.0) < 3 and abs(pitch + 10.0) < 3


def test_fit_recovers_a_strong_turn_and_tilt():
    lm, _ = _synthetic_landmarks(build_head(), pose_from_euler(-50.0, 15.0, 12.0), 0.5, noise=1.0, seed=2)
    yaw, pitch, roll = fit_head(lm, (768, 1024)).yaw_pitch_roll
    assert abs(yaw + 50.0) < 4 and abs(pitch - 15.0) < 4 and abs(roll - 12.0) < 4


def test_fit_uses_consistent_landmark_depths():
    # MediaPipe-style depths: pixels, smaller = nearer; only differences matter.
    head = build_head()
    lm, w2c = _synthetic_landmarks(head, pose_from_euler(-25.0, 12.0, 0.0), 0.6, noise=0.5, seed=4)
    fx = intrinsics_from_fov(768, 1024)[0]
    z = project_points(head.anchor_array(list(MEDIAPIPE_INDEX)), w2c, fx, fx, 0.0, 0.0)[1]
    lm3 = np.zeros((478, 3))
    lm3[:, :2] = lm
    lm3[[MEDIAPIPE_INDEX[n] for n in MEDIAPIPE_INDEX], 2] = fx * (z - z.mean()) / z.mean() + 123.0
    yaw, pitch, roll = fit_head(lm, (768, 1024), landmarks3d=lm3).yaw_pitch_roll
    assert abs(yaw + 25.0) < 3 and abs(pitch - 12.0) < 3 and abs(roll) < 3
    # Depths with the wrong sign, weighted heavily, pull the pose away: the term is used.
    flipped = lm3.copy()
    flipped[:, 2] *= -1
    yaw_f, _, _ = fit_head(lm, (768, 1024), landmarks3d=flipped, depth_weight=3.0).yaw_pitch_roll
    assert abs(yaw_f + 25.0) > 3


def test_fit_rejects_bad_landmarks():
    with pytest.raises(ValueError, match="478"):
        fit_head(np.zeros((10, 2)), (512, 512))
    with pytest.raises(ValueError, match="NaN"):
        fit_head(np.full((478, 2), np.nan), (512, 512))


# ------------------------------------------------------------------ colours


def test_project_colors_left_red_right_blue_back_hidden(head):
    w, h = 512, 640
    lm, _ = _synthetic_landmarks(head, np.eye(3), 0.6, size=(w, h), offset=(0.0, 0.0))
    fit = fit_head(lm, (w, h))
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (255, 0, 0)
    image[:, w // 2 :] = (0, 0, 255)
    pts, nrm, _ = sample_surface(head, 10_000, 5)
    rgb, visible = project_colors(pts, nrm, image, fit)
    uv, _ = fit.project(pts)
    front = (pts[:, 1] < -0.06) & (np.abs(pts[:, 2]) < 0.09)
    assert visible[front].mean() > 0.95
    left = visible & (uv[:, 0] < w / 2 - 2)
    right = visible & (uv[:, 0] > w / 2 + 2)
    assert left.sum() > 500 and right.sum() > 500
    np.testing.assert_allclose(rgb[left], np.tile([1.0, 0.0, 0.0], (left.sum(), 1)), atol=1e-6)
    np.testing.assert_allclose(rgb[right], np.tile([0.0, 0.0, 1.0], (right.sum(), 1)), atol=1e-6)
    assert np.all(pts[left, 0] < 0.005) and np.all(pts[right, 0] > -0.005)  # image left = subject's right
    assert not visible[pts[:, 1] > 0.03].any()  # the back of the head is never seen
    np.testing.assert_array_equal(rgb[~visible], 0.5)


def test_project_colors_respects_occlusion(head):
    # Yaw 70 deg: the face turns toward +X, so the camera sees the subject's RIGHT cheek (-X).
    w, h = 512, 640
    lm, _ = _synthetic_landmarks(head, pose_from_euler(70.0, 0.0, 0.0), 0.6, size=(w, h))
    fit = fit_head(lm, (w, h))
    tree = cKDTree(head.vertices)
    right_cheek = head.vertices[tree.query([-0.045, -0.07, -0.02])[1]]
    left_cheek = head.vertices[tree.query([0.045, -0.07, -0.02])[1]]
    cam = fit.camera_position
    behind = (-0.15 * cam / np.linalg.norm(cam)).astype(np.float32)  # in the air behind the head
    pts = np.stack([right_cheek, left_cheek, behind])
    # Normals turned toward the camera: only the depth test can hide these points.
    to_cam = fit.camera_position - pts
    nrm = to_cam / np.linalg.norm(to_cam, axis=1, keepdims=True)
    _, visible = project_colors(pts, nrm, np.full((h, w, 3), 128, np.uint8), fit)
    np.testing.assert_array_equal(visible, [True, False, False])


# -------------------------------------------------------------------- FLAME


def test_flame_npz_is_read_into_the_head_frame(tmp_path, head):
    from backend.prior.flame import FLAME_TO_HEAD, load_flame

    v_flame = head.vertices.astype(np.float64) @ FLAME_TO_HEAD  # head -> FLAME (+Y up, face +Z)
    assert v_flame[np.argmin(head.vertices[:, 1]), 2] == v_flame[:, 2].max()  # the nose is most +Z
    path = tmp_path / "flame_template.npz"
    # Shifted away: the origin is recovered from the nose, the crown, the back and the sides.
    np.savez(path, v_template=v_flame + [0.01, -0.3, 0.2], f=head.faces)
    mesh = load_flame(path)
    assert mesh.params is None
    np.testing.assert_allclose(mesh.vertices, head.vertices, atol=1e-5)
    assert mesh.signed_volume() > 0
    for name in ANCHOR_NAMES:
        np.testing.assert_allclose(mesh.anchors[name], head.anchors[name], atol=1e-5, err_msg=name)


def test_flame_pickle_and_object_arrays_are_refused(tmp_path):
    from backend.prior.flame import load_flame

    pkl = tmp_path / "generic_model.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(ValueError, match="np.savez"):
        load_flame(pkl)
    bad = tmp_path / "obj.npz"
    np.savez(bad, v_template=np.array([object()], dtype=object), f=np.zeros((1, 3), int))
    with pytest.raises(ValueError, match="unpickling"):
        load_flame(bad)
