"""The photo head's shape and colour mechanisms (issue 17), on synthetic data with known answers:
the 478-landmark deformation recovers a known face shape, the hair shell follows a known
outline, the unseen back of the head gets hair colour and never skin; and the region split on
a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from backend.face.regions import ColourModel, PhotoRegions, to_lab
from backend.prior.colours import HAIR, SKIN, fill_colours
from backend.prior.deform import MAX_DISP_M, deform_to_landmarks
from backend.prior.fit import HeadFit, intrinsics_from_fov, look_at_head, pose_from_euler
from backend.prior.hair import N_BINS, _bins, _polar, hair_shell, hair_weight, head_axes_px
from backend.prior.template import build_head

W = H = 512


def _fit(yaw: float = 0.0, distance: float = 0.9) -> HeadFit:
    fx, fy, cx, cy = intrinsics_from_fov(W, H)
    mesh = build_head()
    r = pose_from_euler(yaw, 0.0, 0.0)
    return HeadFit(
        params=mesh.params,
        scale=1.0,
        proportions=(1.0, 1.0),
        head_rotation=r,
        world_to_camera=look_at_head(r, distance),
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        width=W,
        height=H,
        reprojection_error_px=0.0,
        residuals_px=np.zeros((0, 2)),
        names=(),
    )


def _known_face_field(v: np.ndarray) -> np.ndarray:
    """A person whose nose stands 7 mm further out and whose chin juts 5 mm: smooth bumps."""
    head = build_head()
    nose, chin = head.anchors["nose_tip"], head.anchors["chin"]
    field = np.zeros_like(v, dtype=np.float64)
    field[:, 1] -= 0.007 * np.exp(-np.sum((v - nose) ** 2, 1) / (2 * 0.012**2))
    field[:, 1] -= 0.005 * np.exp(-np.sum((v - chin) ** 2, 1) / (2 * 0.015**2))
    return field


def _landmarks_of(fit: HeadFit, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe-like landmarks of head-frame points: pixels, and z = relative depth in px."""
    uv, depth = fit.project(points)
    z = (depth - depth.mean()) * fit.fx / depth.mean()
    return uv, np.column_stack([uv, z])


@pytest.mark.parametrize("yaw", [0.0, 20.0])
def test_deformation_recovers_a_known_face_shape_from_its_landmarks(yaw):
    head = build_head()
    v = head.vertices.astype(np.float64)
    truth = _known_face_field(v)
    face = np.flatnonzero(head.face_mask)
    marks = np.random.default_rng(0).choice(face, 478, replace=False)  # 478 points spread over the face
    fit = _fit(yaw)
    uv, lm3 = _landmarks_of(fit, v[marks] + truth[marks])
    # the hidden side of a turned face is what MediaPipe would still report
    deformed, field = deform_to_landmarks(fit, head, uv, lm3)
    region = face[np.linalg.norm(truth[face], axis=1) > 0.001]  # where the person differs
    before = np.sqrt(np.mean(np.sum(truth[region] ** 2, 1)))
    after = np.sqrt(np.mean(np.sum((field[region] - truth[region]) ** 2, 1)))
    assert before > 0.002
    assert after < 0.4 * before, (before, after)
    nose = np.argmin(np.linalg.norm(v - head.anchors["nose_tip"], axis=1))
    assert -0.009 < field[nose, 1] < -0.004, (field[nose], truth[nose])  # 7 mm further out, of which 3 landmarks tell
    # the cranium and the back of the head stay where they were
    far = v[:, 1] > 0.02
    assert np.abs(field[far]).max() < 0.0015
    assert np.linalg.norm(field, axis=1).max() <= MAX_DISP_M + 1e-9
    np.testing.assert_array_equal(deformed.faces, head.faces)


def test_deformation_of_the_template_itself_is_nearly_nothing():
    head = build_head()
    v = head.vertices.astype(np.float64)
    marks = np.random.default_rng(1).choice(np.flatnonzero(head.face_mask), 478, replace=False)
    fit = _fit()
    uv, lm3 = _landmarks_of(fit, v[marks])
    _, field = deform_to_landmarks(fit, head, uv, lm3)
    assert np.linalg.norm(field, axis=1).max() < 0.0015


def _outline_mask(fit: HeadFit, factor_up: float) -> np.ndarray:
    """The template's projected outline, grown by ``factor_up`` on the upper half only."""
    head = build_head()
    centre, up = head_axes_px(fit, head)
    uv, _ = fit.project(head.vertices)
    ang, rad = _polar(uv, centre, up)
    tpl = np.zeros(N_BINS)
    np.maximum.at(tpl, _bins(ang), rad)
    ys, xs = np.mgrid[0:H, 0:W]
    pix = np.column_stack([xs.ravel() + 0.5, ys.ravel() + 0.5])
    a, r = _polar(pix, centre, up)
    limit = tpl[_bins(a)] * np.where(np.abs(a) <= 90.0, factor_up, 1.0)
    return (r <= limit).reshape(H, W)


def test_hair_shell_follows_a_known_outline():
    head = build_head()
    fit = _fit()
    mask = _outline_mask(fit, 1.25)
    weight = hair_weight(head)
    field = hair_shell(fit, head, mask, weight)
    centre, up = head_axes_px(fit, head)

    def radii(vertices):
        uv, _ = fit.project(vertices)
        ang, rad = _polar(uv, centre, up)
        out = np.zeros(N_BINS)
        np.maximum.at(out, _bins(ang), rad)
        return out

    before, after = radii(head.vertices), radii(head.vertices + field)
    mid = (np.arange(N_BINS) + 0.5) / N_BINS * 360.0 - 180.0
    top = np.abs(mid) < 30.0  # the crown: all scalp
    np.testing.assert_allclose(after[top] / before[top], 1.25, atol=0.05)
    temples = (np.abs(mid) > 30.0) & (np.abs(mid) < 60.0)  # part scalp, part forehead
    assert (after[temples] / before[temples] > 1.1).all()
    low = np.abs(mid) > 135.0  # chin and neck: the outline there was not grown
    np.testing.assert_allclose(after[low] / before[low], 1.0, atol=0.02)
    # the face does not move; the back of the head (unseen) grows with the outline in front of it
    assert np.linalg.norm(field[head.face_mask], axis=1).max() < 1e-4
    back = (head.vertices[:, 1] > 0.08) & (head.vertices[:, 2] > 0.05)
    assert np.linalg.norm(field[back], axis=1).mean() > 0.01


def test_hair_shell_leaves_a_bald_outline_alone():
    head = build_head()
    fit = _fit()
    field = hair_shell(fit, head, _outline_mask(fit, 1.0))
    assert np.linalg.norm(field, axis=1).max() < 0.004  # within a few px of rounding


def _regions(h=64, w=64) -> PhotoRegions:
    rgb_hair, rgb_skin = np.array([0.35, 0.2, 0.1], np.float32), np.array([0.85, 0.65, 0.55], np.float32)
    hair = np.zeros((h, w), bool)
    hair[:20] = True
    skin = np.zeros((h, w), bool)
    skin[20:50] = True
    rng = np.random.default_rng(0)

    def model(rgb):
        samples = np.clip(rgb + rng.normal(0, 0.03, (500, 3)), 0, 1).astype(np.float32)
        lab = to_lab(samples)
        return ColourModel(lab.mean(0), np.cov(lab.T) + np.eye(3), samples)

    return PhotoRegions(
        person=hair | skin,
        face=skin,
        skin=skin,
        hair=hair,
        clothes=np.zeros((h, w), bool),
        skin_model=model(rgb_skin),
        hair_model=model(rgb_hair),
        clothes_model=None,
    )


def test_back_of_the_head_gets_hair_colour_never_skin():
    head = build_head()
    regions = _regions()
    pts = head.vertices.astype(np.float64)
    weight = hair_weight(head)
    front = pts[:, 1] < -0.04
    uv = np.column_stack([np.full(len(pts), 32.0), np.where(pts[:, 2] > 0.06, 10.0, 35.0)])  # face rows: skin
    image = np.zeros((64, 64, 3), np.uint8)
    image[:20] = (89, 51, 25)
    image[20:50] = (217, 166, 140)
    rgb, cls, photo = fill_colours(pts, uv, front, weight, image, regions, rng=0)
    back = (pts[:, 1] > 0.03) & (pts[:, 2] > -0.02)  # behind the ears, above the nape
    assert not photo[back].any()
    assert (cls[back] == HAIR).mean() > 0.97
    lab = to_lab(rgb[back])
    d_skin, d_hair = regions.skin_model.distance(lab), regions.hair_model.distance(lab)
    assert (d_hair < d_skin).mean() > 0.99
    assert (d_skin > 3.0).mean() > 0.99  # nothing skin-coloured at the back
    # colours vary (a texture from the hair's pixels), around the hair's median
    assert 0.002 < rgb[back].std(0).mean() < 0.05
    np.testing.assert_allclose(np.median(rgb[back], 0), regions.hair_model.rgb, atol=0.03)
    # the face the photo sees keeps the photo's colour
    assert (cls[front & (uv[:, 1] > 20)] == SKIN).all()


def test_regions_of_a_real_portrait():
    from backend.face import analyse_face
    from backend.face.regions import photo_regions

    img = np.ascontiguousarray(skimage.data.astronaut())
    face = analyse_face(img)
    r = photo_regions(img, face.landmarks2d)
    lm = face.landmarks2d
    masks = [r.hair, r.skin, r.clothes]
    for i, a in enumerate(masks):  # disjoint
        for b in masks[i + 1 :]:
            assert not (a & b).any()
    forehead, chin = lm[10], lm[152]
    x = int(forehead[0])
    above = int(forehead[1] - 0.25 * (chin[1] - forehead[1]))  # a quarter face above mid-forehead: hair
    assert r.hair[above - 5 : above + 5, x - 5 : x + 5].mean() > 0.8
    cheek = ((lm[50] + lm[280]) / 2).astype(int)  # between the cheekbones: skin
    assert r.skin[cheek[1], cheek[0]]
    assert not r.person[5:20, 5:20].any()  # the top-left corner is flag, not person
    # the hair is light brown, the skin lighter and redder
    assert r.hair_model is not None
    hair_l, skin_l = to_lab(r.hair_model.rgb)[0], to_lab(r.skin_model.rgb)[0]
    assert hair_l < skin_l


def test_lifted_landmark_that_grazes_the_chin_keeps_its_depth_not_the_necks():
    """A landmark just under the template's chin: its pixel ray passes the chin and hits the
    neck far behind; MediaPipe's depth says it is on the chin, and the lift believes that."""
    from backend.prior.lift import lift_landmarks
    from backend.prior.template import ray_mesh_hits

    head = build_head()
    v = head.vertices.astype(np.float64)
    fit = _fit()
    marks = np.random.default_rng(2).choice(np.flatnonzero(head.face_mask), 200, replace=False)
    chin = np.asarray(head.anchors["chin"], np.float64)
    under = chin + np.array([0.0, -0.004, -0.006])  # in front of and below the template's chin
    points = np.vstack([v[marks], under])
    uv, lm3 = _landmarks_of(fit, points)
    R, t = fit.world_to_camera[:3, :3], fit.world_to_camera[:3, 3]
    origin = -R.T @ t
    ray = np.array([(uv[-1, 0] - fit.cx) / fit.fx, (uv[-1, 1] - fit.cy) / fit.fy, 1.0]) @ R
    (neck_t,) = ray_mesh_hits(origin[None], ray[None], head.vertices, head.faces)
    _, true_depth = fit.project(under[None])
    assert neck_t - true_depth[0] > 0.02, (neck_t, true_depth)  # the plain ray hit is the neck behind
    lifted = lift_landmarks(fit, uv, lm3, mesh=head)
    assert np.linalg.norm(lifted[-1] - under) < 0.003, (lifted[-1], under)
    # the landmarks the camera sees on the surface stay where they are
    _, depth = fit.project(points[:-1])
    rays = np.column_stack([(uv[:-1, 0] - fit.cx) / fit.fx, (uv[:-1, 1] - fit.cy) / fit.fy, np.ones(len(uv) - 1)]) @ R
    seen = np.abs(ray_mesh_hits(np.broadcast_to(origin, rays.shape), rays, head.vertices, head.faces) - depth) < 1e-3
    assert seen.mean() > 0.8
    assert np.abs(lifted[:-1][seen] - points[:-1][seen]).max() < 1e-3


def test_person_core_drops_the_mask_edge_outside_the_face_only():
    """The fit's pixels: the person mask less a ring at its edge, where the segmentation runs
    into the background, except on the face (its outline is the face's own)."""
    from backend.face.regions import PhotoRegions
    from backend.pipelines.photo_views import person_core

    ys, xs = np.mgrid[0:400, 0:400]
    person = (xs - 200) ** 2 + (ys - 200) ** 2 < 150**2
    face = person & (xs > 250)  # the face reaches the person's outline on the right
    regions = PhotoRegions(person, face, face, np.zeros_like(person), np.zeros_like(person), None, None, None)
    landmarks = np.array([[200.0, 100.0], [200.0, 300.0]])  # a face 200 px high: a 3 px ring at 0.015
    core = person_core(regions, landmarks, 0.015)
    assert core.sum() < person.sum() and not (core & ~person).any()
    assert person[200, 52] and not core[200, 52] and core[200, 56]  # the left edge's ring is gone
    assert core[200, 349]  # the face's own edge stays
    np.testing.assert_array_equal(person_core(regions, landmarks, 0.0), person)
