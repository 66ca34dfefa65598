"""The instax pipeline end to end with a tiny SV3D-shaped model (backend.testing): directly,
and through the real server (its worker subprocess loads the model via the registry)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import save_file

from backend.errors import ModelMissingError
from backend.pipelines import ModelCache, available, instax
from backend.pipelines.outputs import write_outputs
from backend.testing import save_tiny_sv3d
from blender_addon.core.splat_ply import read_ply

CARDS = 21 * 48 * 48  # the orbit preview: 21 picture cards of 48 x 48 Gaussians


@pytest.fixture(scope="module")
def tiny_sv3d(tmp_path_factory):
    """The tiny SV3D in the diffusers layout, plus an empty stand-in for the registry's
    ``sv3d_u.safetensors`` so that ``models.model_path('sv3d_u')`` accepts the folder."""
    folder = save_tiny_sv3d(tmp_path_factory.mktemp("models") / "sv3d_u")
    save_file({}, str(folder / "sv3d_u.safetensors"))
    return folder


@pytest.fixture
def use_tiny(tiny_sv3d, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_SV3D_U", str(tiny_sv3d))
    yield tiny_sv3d


class Recorder:
    def __init__(self):
        self.events, self.previews = [], []

    def progress(self, stage, step, total, message=""):
        self.events.append((stage, step, total))

    def preview(self, splats, step):
        splats.check_finite()
        self.previews.append((len(splats), step))

    def cancelled(self):
        return False


def test_instax_is_offered_without_models():
    assert "instax" in available()


def test_runs_end_to_end_streams_frames_and_previews_and_writes_a_ply(use_tiny, astronaut_image, tmp_path):
    rec = Recorder()
    result = instax.run(astronaut_image, preset="test", seed=0, reporter=rec)
    stages = [e[0] for e in rec.events]
    order = ["models", "face", "generate", "decode", "template", "construct", "turntable"]
    assert [s for s in dict.fromkeys(stages)] == order  # each stage once, in this order
    assert ("decode", 21, 21) in rec.events and ("generate", 2, 2) in rec.events
    # first the orbit as picture cards, then the bound Gaussians as they are fitted
    assert rec.previews[0] == (CARDS, 0)
    n_init = rec.previews[1][0]
    assert n_init == 4 * result.metrics["n_triangles"] and len(rec.previews) >= 3
    assert len(result.orbit_frames) == 21 and result.orbit_frames[0].shape == (64, 64, 3)
    assert len(result.turntable) == 4 and len(result.splats) == result.metrics["n_splats"]
    assert result.metrics["template_frames"] >= 1  # the reference always (its landmarks come from the photo)
    paths = write_outputs(tmp_path, result)
    back = read_ply(paths["ply"])
    assert len(back) == len(result.splats) and np.isfinite(back.means).all()
    # the head-frame splats sit around the head: within ~30 cm of its centre
    assert np.abs(result.splats.means).max() < 0.3


def test_missing_sv3d_fails_with_the_download_command(astronaut_image, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path))
    monkeypatch.delenv("PORTRAITSPLAT_MODEL_SV3D_U", raising=False)
    with pytest.raises(ModelMissingError) as err:
        instax.run(astronaut_image, preset="test")
    assert "python -m backend models download --only sv3d_u" in err.value.hint


def test_sv3d_stays_warm_in_the_cache_it_is_given(use_tiny):
    import torch

    cache, cpu = ModelCache(), torch.device("cpu")
    parts = instax.load_generator("sv3d_u", cpu, cache)
    assert instax.load_generator("sv3d_u", cpu, cache) is parts and cache.peek(instax.SV3D_SLOT) is parts
    assert instax.load_generator("sv3d_u", cpu) is not parts  # no cache given: a fresh load


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="fast"):
        instax._preset("nope", None)
    assert instax._preset("fast", {"steps": 7, "style": "ignored"}).steps == 7


@pytest.mark.timeout(300)
def test_through_the_real_server(use_tiny, tmp_path):
    from service_support import REPO, ServerProc, wait_ready

    from blender_addon.core import protocol as P

    srv = ServerProc(tmp_path, "--preview-hz", "50", pipelines="instax").start()
    try:
        with srv.client() as c:
            wait_ready(c)
            assert "instax" in c.connect().pipelines
            job = c.submit((REPO / "examples" / "astronaut.jpg").read_bytes(), "instax", preset="test")
            events = []
            final = c.wait(job, timeout=240, on_event=events.append)
            assert isinstance(final, P.JobDone), final
            stages = {e.stage for e in events if isinstance(e, P.Progress)}
            assert {"generate", "decode", "construct"} <= stages
            previews = [e for e in events if isinstance(e, P.Preview)]
            assert previews and len(previews[0].splats) == CARDS  # the orbit frames reach the client first
            assert any(len(p.splats) != CARDS for p in previews)  # then the Gaussian fit
            splats, ply = c.get_result(job)
            assert len(splats) == final.n_gaussians > 0 and len(read_ply(ply)) == len(splats)
    finally:
        srv.stop()
