"""SV3D orbit generation (METHOD B.1) on a tiny SV3D-shaped model: conditioning, sampler, loading."""

import math

import numpy as np
import pytest
import torch

from backend.errors import CancelledError, ModelMissingError
from backend.guidance import sv3d
from backend.testing import save_tiny_sv3d


@pytest.fixture(scope="module")
def tiny_sv3d_dir(tmp_path_factory):
    return save_tiny_sv3d(tmp_path_factory.mktemp("models") / "sv3d_u")


@pytest.fixture(scope="module")
def parts(tiny_sv3d_dir):
    return sv3d.load_sv3d("sv3d_u", path=tiny_sv3d_dir)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    img = np.full((80, 80, 3), 255, np.uint8)
    img[20:60, 25:55] = rng.integers(0, 255, (40, 30, 3))
    return img


SMALL = sv3d.SV3DSettings(resolution=64, steps=3)


def test_schedule_guidance_and_orbit_constants():
    s = sv3d.edm_sigmas(50)
    assert (
        len(s) == 51
        and float(s[0]) == pytest.approx(700.0)
        and float(s[-2]) == pytest.approx(0.002)
        and float(s[-1]) == 0
    )
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())
    w = sv3d.triangle_cfg(21)
    assert float(w[0]) == float(w[-1]) == pytest.approx(1.0) and float(w[10]) == pytest.approx(2.5)
    assert torch.allclose(w, w.flip(0))
    az = sv3d.orbit_azimuths(21)
    assert az[-1] == 0.0 and np.allclose(np.diff(az[:-1]), 360 / 21) and az[0] == pytest.approx(360 / 21)


def test_sinusoidal_matches_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    x = torch.tensor([1e-5, 0.3, 1.2, 700.0])
    for dim in (256, 512):
        assert torch.allclose(sv3d.sinusoidal(x, dim), Timesteps(dim, True, downscale_freq_shift=0)(x), atol=1e-5)


def test_vector_condition_widths_and_camera_path():
    u = sv3d.vector_condition("sv3d_u", 21, 1e-5)
    p = sv3d.vector_condition("sv3d_p", 21, 1e-5, elevation_deg=10.0)
    assert u.shape == (21, 256) and p.shape == (21, 1280)
    assert torch.allclose(p[:, :256], u)  # cond_aug first
    assert torch.allclose(
        p[:, 256:768], sv3d.sinusoidal(torch.full((21,), math.radians(80.0)), 512)
    )  # polar = 90 - elevation
    assert torch.allclose(p[-1, 768:], sv3d.sinusoidal(torch.zeros(1), 512)[0])  # last frame: azimuth 0
    assert not torch.allclose(p[0, 768:], p[1, 768:])


def test_unet_forward_equals_diffusers_forward_for_sv3d_u(parts):
    unet = parts.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 21, 8, 8, 8, generator=g)
    t = torch.tensor([0.25 * math.log(80.0), 0.25 * math.log(0.5)])
    ctx = torch.randn(2, 1, unet.config.cross_attention_dim, generator=g)
    vec = sv3d.vector_condition("sv3d_u", 21, 1e-5)[None].expand(2, -1, -1)
    with torch.no_grad():
        ours = sv3d.unet_forward(unet, x, t, ctx, vec)
        theirs = unet(x, t, ctx, added_time_ids=torch.full((2, 1), 1e-5)).sample
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


class Recorder:
    def __init__(self, cancel_after=None):
        self.events, self.cancel_after = [], cancel_after

    def progress(self, stage, step, total, message=""):
        self.events.append((stage, step, total))

    def preview(self, splats, step):
        pass

    def cancelled(self):
        return self.cancel_after is not None and len(self.events) >= self.cancel_after


def test_generate_orbit_frames_progress_and_seed(parts, photo):
    rec = Recorder()
    a = sv3d.generate_orbit(parts, photo, SMALL, seed=0, reporter=rec)
    assert a.frames.shape == (21, 64, 64, 3) and a.frames.dtype == np.uint8
    assert np.allclose(a.azimuth_deg, sv3d.orbit_azimuths(21)) and a.elevation_deg == 10.0
    assert [e for e in rec.events if e[0] == "generate"] == [("generate", i, 3) for i in (1, 2, 3)]
    decode = [e for e in rec.events if e[0] == "decode"]
    assert decode[-1] == ("decode", 21, 21) and len(decode) == 3  # 7 frames per VAE call
    b = sv3d.generate_orbit(parts, photo, SMALL, seed=0)
    c = sv3d.generate_orbit(parts, photo, SMALL, seed=1)
    assert np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, c.frames)


def test_unconditional_branch_zeroes_image_conditions_and_cfg_is_triangular(parts, photo, monkeypatch):
    calls = []
    real = sv3d.unet_forward

    def spy(unet, sample, timestep, context, vector):
        calls.append((sample.clone(), context.clone(), vector.clone()))
        return real(unet, sample, timestep, context, vector)

    monkeypatch.setattr(sv3d, "unet_forward", spy)
    sv3d.generate_orbit(parts, photo, sv3d.SV3DSettings(resolution=64, steps=2), seed=0)
    sample, context, vector = calls[0]
    assert sample.shape == (2, 21, 8, 8, 8)
    assert float(sample[0, :, 4:].abs().max()) == 0.0 and float(context[0].abs().max()) == 0.0  # uncond: zeros
    assert float(sample[1, :, 4:].abs().max()) > 0 and float(context[1].abs().max()) > 0
    assert torch.equal(sample[1, 0, 4:], sample[1, 20, 4:])  # the same image latent in every frame
    assert torch.equal(vector[0], vector[1])  # the vector (cond_aug) is kept in both branches
    # the noisy half is c_in * x with x ~ N(0, 1 + 700^2): unit scale after c_in
    assert 0.8 < float(sample[0, :, :4].std()) < 1.2


def test_sv3d_p_conditions_each_frame_on_its_camera(tmp_path, photo):
    from diffusers import UNetSpatioTemporalConditionModel

    folder = save_tiny_sv3d(tmp_path / "sv3d_p")
    cfg = dict(UNetSpatioTemporalConditionModel.load_config(folder / "unet"))
    cfg["projection_class_embeddings_input_dim"] = 1280
    torch.manual_seed(0)
    UNetSpatioTemporalConditionModel.from_config(cfg).save_pretrained(folder / "unet")
    with pytest.raises(ModelMissingError, match="1280"):
        sv3d.load_sv3d("sv3d_u", path=folder)  # a 1280-d UNet is not sv3d_u
    parts_p = sv3d.load_sv3d("sv3d_p", path=folder)
    unet = parts_p.unet
    x = torch.zeros(1, 21, 8, 8, 8)
    ctx = torch.zeros(1, 1, unet.config.cross_attention_dim)
    vec = sv3d.vector_condition("sv3d_p", 21, 1e-5)
    moved = vec.clone()
    moved[5] = vec[0]  # frame 5 told it sits where frame 0 does
    with torch.no_grad():
        out = sv3d.unet_forward(unet, x, torch.zeros(1), ctx, vec[None])
        out_moved = sv3d.unet_forward(unet, x, torch.zeros(1), ctx, moved[None])
    assert float((out[0, 5] - out_moved[0, 5]).abs().max()) > 1e-4  # each frame reads its own camera
    video = sv3d.generate_orbit(parts_p, photo, replace_variant(SMALL, "sv3d_p"), seed=0)
    assert video.frames.shape == (21, 64, 64, 3)


def replace_variant(settings, variant):
    from dataclasses import replace

    return replace(settings, variant=variant)


def test_cancel_stops_sampling(parts, photo):
    with pytest.raises(CancelledError):
        sv3d.generate_orbit(parts, photo, SMALL, reporter=Recorder(cancel_after=1))


def test_missing_model_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path))
    monkeypatch.delenv("PORTRAITSPLAT_MODEL_SV3D_U", raising=False)
    with pytest.raises(ModelMissingError) as err:
        sv3d.load_sv3d("sv3d_u")
    assert "python -m backend models download --only sv3d_u" in err.value.hint


def test_a_damaged_single_file_checkpoint_is_refused_with_a_clear_error(tmp_path):
    # the single file itself loads (tests/test_sv3d_checkpoint.py); an empty one is damaged
    (tmp_path / "sv3d_u.safetensors").write_bytes(b"")
    with pytest.raises(ModelMissingError, match="not a usable SV3D checkpoint") as err:
        sv3d.load_sv3d("sv3d_u", path=tmp_path)
    assert "python -m backend models download --only sv3d_u" in err.value.hint
