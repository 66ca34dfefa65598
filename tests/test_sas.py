"""SAS (METHOD A.4, Eq. 9–14): the landmark ControlNet's condition image and the SAS term on
the tiny SD1.5 + IP-Adapter-FaceID + ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import models
from backend.gaussians.cameras import look_at, orbit_cameras
from backend.gaussians.render import RenderOutput
from backend.guidance.landmark_control import PART_COLOURS, PUPIL_COLOURS, control_images, project
from backend.guidance.sd_identity import SASSettings, SDIdentityGuidance
from backend.guidance.style_stats import StyleStats

RES = 64  # the tiny UNet's 8x8 latents

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def landmarks(astronaut_image) -> np.ndarray:
    """The demo photo's 478 landmarks lifted onto its fitted template (head frame)."""
    from backend.face import analyse_face
    from backend.prior.fit import fit_head
    from backend.prior.lift import lift_landmarks

    face = analyse_face(astronaut_image)
    h, w = astronaut_image.shape[:2]
    fit = fit_head(face.landmarks2d, (w, h), landmarks3d=face.landmarks3d)
    return lift_landmarks(fit, face.landmarks2d, face.landmarks3d)


def _front(size=RES):
    return orbit_cameras(1, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=size, height=size)


# --- the condition image ------------------------------------------------------------------------


def test_control_image_follows_the_camera(landmarks):
    cams = orbit_cameras(8, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=128, height=128)  # az 0, 45, ..., 315
    img = control_images(landmarks, cams)
    assert img.shape == (8, 3, 128, 128) and img.dtype == torch.float32
    on = img.amax(1) > 0  # [C, H, W]
    # front view: many pixels, all near the projected face
    uv, _ = project(torch.as_tensor(landmarks), cams[0])
    lo, hi = (uv[0].min(0).values * 128).floor().long() - 3, (uv[0].max(0).values * 128).ceil().long() + 3
    ys, xs = torch.nonzero(on[0], as_tuple=True)
    assert len(xs) > 300
    assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]
    # 45 deg is drawn differently; 135, 180, 225 (behind) are all zero
    assert on[1].sum() > 100 and (on[0] != on[1]).sum() > 100
    assert not img[3:6].any()
    # only the ControlNet's palette is used, the pupils included
    palette = {(0, 0, 0), *PART_COLOURS.values(), *PUPIL_COLOURS.values()}
    used = {tuple(c) for c in (img[0].permute(1, 2, 0).reshape(-1, 3) * 255).round().int().tolist()}
    assert used <= palette and set(PUPIL_COLOURS.values()) <= used and set(PART_COLOURS.values()) <= used


def test_control_image_pupils_and_sides(landmarks):
    cams = orbit_cameras(1, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=128, height=128)
    img = (control_images(landmarks, cams)[0].permute(1, 2, 0) * 255).round().int()
    uv, _ = project(torch.as_tensor(landmarks), cams)
    for k, rgb in PUPIL_COLOURS.items():
        x, y = (uv[0, k] * 128).floor().long().tolist()
        assert tuple(img[y, x].tolist()) == rgb
    # unmirrored front view: the subject's right eye (468) is on the image's left
    assert uv[0, 468, 0] < uv[0, 473, 0]


def test_no_control_when_the_face_is_behind_the_camera(landmarks):
    from backend.gaussians.cameras import Cameras, intrinsics_from_fov

    # in front of the face but looking away from it: every landmark is behind the camera
    view = look_at(torch.tensor([0.0, -0.6, 0.0]), torch.tensor([0.0, -2.0, 0.0]))[None]
    cams = Cameras(viewmats=view, Ks=intrinsics_from_fov(30.0, RES, RES)[None], width=RES, height=RES)
    assert not control_images(landmarks, cams).any()
    with pytest.raises(ValueError, match="478"):
        control_images(landmarks[:100], cams)


# --- the SAS term ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts(tiny_models_root):
    sd = models.load_sd15(tiny_models_root / "sd15")
    models.load_ip_adapter_faceid(sd.unet, tiny_models_root / "ip_adapter_faceid")
    return sd, models.load_controlnet(tiny_models_root / "controlnet_face")


STYLE = StyleStats(
    mean=torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64),
    cov=torch.diag(torch.tensor([0.5, 0.4, 0.6, 0.3], dtype=torch.float64)),
    n_images=20,
    prompt="a watercolour portrait",
    key="test",
)
IDENTITY = np.random.default_rng(0).standard_normal(512).astype(np.float32)
IDENTITY /= np.linalg.norm(IDENTITY)


def _term(parts, **kw) -> SDIdentityGuidance:
    sd, controlnet = parts
    args = dict(
        prompt="a watercolour portrait", style=STYLE, controlnet=controlnet, settings=SASSettings(resolution=RES)
    )
    return SDIdentityGuidance(sd, **(args | kw))


def _render(seed: int = 0, size: int = RES) -> torch.Tensor:
    return torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(seed))


def _grad(term, rgb, cams, step=3) -> torch.Tensor:
    rgb = rgb.clone().requires_grad_(True)
    out = RenderOutput(rgb=rgb, alpha=torch.ones_like(rgb[..., :1]), depth=torch.ones_like(rgb[..., :1]), info={})
    loss = term(out, cams, step)["loss_sas"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().max() > 0
    return rgb.grad


def test_one_step_lowers_the_distance_to_the_style_mapped_estimate(parts, landmarks):
    term = _term(parts, identity=IDENTITY, landmarks=landmarks)
    cams = orbit_cameras(2, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=RES, height=RES)
    g = torch.Generator().manual_seed(0)
    z = (0.8 * torch.randn(2, 4, 8, 8, generator=g)).requires_grad_(True)
    t, noise = torch.tensor([500, 500]), torch.randn(2, 4, 8, 8, generator=g)
    before = (z - term.target(z, cams, 0, t=t, noise=noise)[0]).norm()
    opt = torch.optim.SGD([z], lr=2.0)  # lr = batch: the step is w(t)(z - z'_m) (Eq. 14)
    term.latent_loss(z, cams, 0, t=t, noise=noise)["loss_sas"].backward()
    torch.testing.assert_close(term.last["grad_norm"], z.grad.norm() * 2)  # diagnostics: |w(t)(z - z'_m)|
    opt.step()
    after = (z - term.target(z, cams, 0, t=t, noise=noise)[0]).norm()
    assert after < 0.8 * before, (float(before), float(after))
    assert term.last["visible"].tolist() == [True, False]  # az 0 sees the face, az 180 does not


def test_identity_and_control_change_the_gradient(parts, landmarks):
    cams, rgb = _front(), _render()
    full = _grad(_term(parts, identity=IDENTITY, landmarks=landmarks), rgb, cams)
    torch.testing.assert_close(_grad(_term(parts, identity=IDENTITY, landmarks=landmarks), rgb, cams), full)  # seeded
    other = np.roll(IDENTITY, 7)
    for changed in (
        _term(parts, identity=other, landmarks=landmarks),
        _term(parts, identity=None, landmarks=landmarks),
        _term(parts, identity=IDENTITY, landmarks=None, controlnet=None),
        _term(parts, identity=IDENTITY, landmarks=landmarks, settings=SASSettings(resolution=RES, control_scale=0.0)),
    ):
        assert (_grad(changed, rgb, cams) - full).abs().max() > 1e-3 * full.abs().max()


def test_a_hidden_face_gets_zero_controlnet_residuals(parts, landmarks):
    """METHOD A.4: zero control where the face is hidden. A black condition image is not zero
    control (the ControlNet's residuals on it are not zero): the view's scale is 0."""
    term = _term(parts, identity=IDENTITY, landmarks=landmarks)
    cams = orbit_cameras(2, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=RES, height=RES)  # az 0, 180
    cond, scales = term.control(cams)
    assert scales.tolist() == [1.0, 0.0] and cond[0].any() and not cond[1].any()
    g = torch.Generator().manual_seed(3)
    latent, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 500])
    text = term.text[1:].expand(2, -1, -1)
    down, mid = term.control_residuals(latent, t, text, cond, scales)
    for r in [*down, mid]:
        assert r[0].abs().amax() > 0 and not r[1].any()  # frontal: control; back of the head: none
    # the ControlNet itself answers a black image with non-zero residuals: the scale is what zeroes them
    raw_down, raw_mid = term.controlnet(
        latent, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=1.0, return_dict=False
    )
    assert raw_mid[1].abs().amax() > 0 and all(d[1].abs().amax() > 0 for d in raw_down)
    torch.testing.assert_close(mid[0], raw_mid[0])
    # the frontal view's residuals follow settings.control_scale; a batch with no face skips the ControlNet
    half = _term(parts, identity=IDENTITY, landmarks=landmarks, settings=SASSettings(resolution=RES, control_scale=0.5))
    torch.testing.assert_close(half.control_residuals(latent, t, text, cond, half.control(cams)[1])[1], mid * 0.5)
    assert term.control_residuals(latent, t, text, cond, torch.zeros(2)) is None
    # the SAS step with the back view alone equals the step without any ControlNet
    back = orbit_cameras(2, radius=0.6, elevation_deg=0.0, fov_deg=30.0, width=RES, height=RES)[1:]
    z = torch.randn(1, 4, 8, 8, generator=g)
    with_cn = term.target(z, back, 4)[0]
    assert term.last["control_scale"].tolist() == [0.0]
    no_cn = _term(parts, identity=IDENTITY, landmarks=None, controlnet=None).target(z, back, 4)[0]
    torch.testing.assert_close(with_cn, no_cn)


def test_text_only_term_is_plain_sd15(parts, tiny_models_root, landmarks):
    plain = models.load_sd15(tiny_models_root / "sd15")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cams = _front()
    with_adapter = _term(parts, identity=None, landmarks=landmarks).target(z, cams, 5)[0]
    without = _term((plain, parts[1]), identity=None, landmarks=landmarks).target(z, cams, 5)[0]
    torch.testing.assert_close(with_adapter, without, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="IP-Adapter"):
        _term((plain, parts[1]), identity=IDENTITY)


def test_taesd_encoder_and_resizing(parts, tiny_models_root, landmarks):
    taesd = models.load_taesd(tiny_models_root / "taesd")
    term = _term(
        parts,
        identity=IDENTITY,
        landmarks=landmarks,
        taesd=taesd,
        settings=SASSettings(resolution=RES, encoder="taesd"),
    )
    cams = _front(96)  # renders at 96 px are resized to the SAS resolution
    assert term.control_image(cams).shape == (1, 3, RES, RES)
    _grad(term, _render(size=96), cams)
    with pytest.raises(ValueError, match="taesd"):
        _term(parts, settings=SASSettings(encoder="taesd"))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sas_on_cuda_in_half_precision(tiny_models_root, dtype):
    # landmarks spread over the front of the head (no MediaPipe inference needed on the GPU box)
    rng = np.random.default_rng(0)
    landmarks = np.stack(
        [rng.uniform(-0.06, 0.06, 478), rng.uniform(-0.11, -0.08, 478), rng.uniform(-0.08, 0.06, 478)], axis=1
    ).astype(np.float32)
    sd = models.load_sd15(tiny_models_root / "sd15", dtype=dtype, device="cuda")
    models.load_ip_adapter_faceid(sd.unet, tiny_models_root / "ip_adapter_faceid")
    sd.unet.to(device="cuda", dtype=dtype)
    controlnet = models.load_controlnet(tiny_models_root / "controlnet_face", dtype=dtype, device="cuda")
    taesd = models.load_taesd(tiny_models_root / "taesd", dtype=dtype, device="cuda")
    for encoder in ("vae", "taesd"):
        term = SDIdentityGuidance(
            sd,
            prompt="a watercolour portrait",
            style=STYLE,
            controlnet=controlnet,
            identity=IDENTITY,
            landmarks=landmarks,
            taesd=taesd,
            device="cuda",
            dtype=dtype,
            settings=SASSettings(resolution=RES, encoder=encoder),
        )
        assert term.control_image(_front().to("cuda")).any()
        _grad(term, _render().cuda(), _front().to("cuda"))
