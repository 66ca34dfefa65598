"""The stylize pipeline (METHOD A) with tiny random models (backend.testing): typed errors
first, then end to end in-process (all terms, no-MVDream, text-only), then through the real
server (its worker subprocess finds the tiny models through PORTRAITSPLAT_MODELS)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backend.errors import InvalidOptionError, ModelMissingError, PortraitSplatError, UnknownPresetError
from backend.pipelines import ModelCache, available, instax, photo, stylize
from backend.pipelines.outputs import write_outputs
from blender_addon.core.splat_ply import read_ply

REPO = Path(__file__).resolve().parent.parent
STYLE = "a watercolor portrait"


class Recorder:
    def __init__(self, cancel_after: int | None = None):
        self.events: list[tuple[str, int, int]] = []
        self.previews: list[tuple[int, int]] = []
        self.cancel_after = cancel_after

    def progress(self, stage, step, total, message=""):
        self.events.append((stage, step, total))

    def preview(self, splats, step):
        splats.check_finite()
        self.previews.append((len(splats), step))

    def cancelled(self):
        return self.cancel_after is not None and sum(e[0] == "stylize" for e in self.events) >= self.cancel_after


def _clear_overrides(monkeypatch):
    for key in [k for k in os.environ if k.startswith("PORTRAITSPLAT_MODEL_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def tiny(tiny_models_root, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tiny_models_root))
    _clear_overrides(monkeypatch)
    yield tiny_models_root


def test_both_pipelines_are_registered():
    found = available()
    assert found["stylize"] is stylize.run and found["instax+stylize"] is stylize.run_instax


def test_missing_models_fail_before_any_work(astronaut_image, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path / "empty"))
    _clear_overrides(monkeypatch)
    rec = Recorder()
    with pytest.raises(ModelMissingError) as err:
        stylize.run(astronaut_image, preset="test", options={"style": STYLE}, reporter=rec)
    assert err.value.code == "model_missing" and "python -m backend models download --only" in err.value.hint
    assert "sd15" in err.value.hint and "mvdream" in err.value.hint
    assert rec.events == [] and rec.previews == []  # nothing ran
    # text-only without MVDream needs neither insightface, the adapter nor MVDream
    with pytest.raises(ModelMissingError) as err:
        stylize.run(astronaut_image, preset="test", options={"identity": False, "mvdream": False, "encoder": "vae"})
    assert "buffalo_l" not in err.value.hint and "mvdream" not in err.value.hint and "sd15" in err.value.hint


@pytest.mark.parametrize(
    "options, error",
    [
        ({"encoder": "jpeg"}, InvalidOptionError),
        ({"init": "sphere"}, InvalidOptionError),
        ({"mvdream": "no"}, InvalidOptionError),
        ({"steps": 0}, InvalidOptionError),
        ({"colour": "red"}, InvalidOptionError),
    ],
)
def test_bad_options_are_typed(options, error):
    with pytest.raises(error) as err:
        stylize.settings("test", options)
    assert err.value.code == "bad_option"


def test_unknown_presets_are_typed_in_every_pipeline():
    for check in (
        lambda: stylize.settings("nope", None),
        lambda: photo._preset("nope", None),
        lambda: instax._preset("nope", None),
    ):
        with pytest.raises(UnknownPresetError) as err:
            check()
        assert isinstance(err.value, PortraitSplatError) and err.value.code == "unknown_preset"
        assert "default" in err.value.hint


@pytest.mark.parametrize("run", [photo.run, instax.run, stylize.run], ids=["photo", "instax", "stylize"])
@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"stpes": 10}, "no option 'stpes'"),
        ({"steps": "many"}, "steps"),
        ({"steps": True}, "steps"),
    ],
)
def test_bad_options_fail_before_any_work_in_every_pipeline(run, options, fragment):
    """A misspelt or mistyped option is a typed error at the start, never silently dropped."""
    rec = Recorder()
    image = np.zeros((8, 8, 3), np.uint8)  # never reached: the options are checked first
    with pytest.raises(InvalidOptionError) as err:
        run(image, preset="default", options={"style": STYLE, **options}, reporter=rec)
    assert err.value.code == "bad_option" and fragment in str(err.value) and rec.events == []


def test_options_override_preset_fields():
    from backend.pipelines.presets import choose_preset

    cfg = choose_preset("instax", instax.PRESETS, "fast", {"steps": 50, "grow_grad2d": 1, "style": "x"})
    assert (cfg.steps, cfg.grow_grad2d, cfg.fit_res) == (50, 1, instax.PRESETS["fast"].fit_res)
    assert choose_preset("photo", photo.PRESETS, "default", {"style": "ignored"}) is photo.PRESETS["default"]


def test_presets_follow_method_a():
    paper = stylize.PRESETS["paper"]
    assert (paper.steps, paper.n_points, paper.init_opacity, paper.init_scale) == (3000, 10_000, 0.2, 0.02)
    assert (paper.sas_guidance_scale, paper.mvdream_guidance_scale, paper.mvdream_resolution) == (50.0, 10.0, 256)
    assert (paper.style_images, paper.style_steps, paper.style_guidance_scale) == (20, 20, 7.5)
    assert stylize.schedule(paper).switch_step == 1000 and stylize.make_densifier(paper).refine_every == 100
    assert stylize.PRESETS["default"] is stylize.PRESETS["fast"] and stylize.PRESETS["fast"].encoder == "taesd"
    cfg, style = stylize.settings("paper", {"steps": 300, "style": " ink "})
    assert cfg.steps == 300 and style == "ink" and stylize.schedule(cfg).switch_step == 100


def test_densifier_thresholds_are_in_head_units(astronaut_image):
    """Issue 15: the loop runs SAS's densifier with scene_scale = the fitted head's height, so
    its clone/split threshold (0.01, A.3) is in the units of the initial scale (0.02, A.1)."""
    from dataclasses import replace

    from backend.face import analyse_face
    from backend.prior.fit import fit_head
    from backend.prior.sample import head_unit

    face = analyse_face(astronaut_image)
    h, w = astronaut_image.shape[:2]
    fit = fit_head(face.landmarks2d, (w, h), landmarks3d=face.landmarks3d)
    cfg = stylize.PRESETS["paper"]
    loop = stylize.loop_config(cfg, fit)
    assert loop.scene_scale == pytest.approx(head_unit(fit.mesh()), rel=1e-6) and 0.15 < loop.scene_scale < 0.35
    assert loop.weights == {"loss_sas": 1.0, "loss_mvdream": 0.05} and loop.steps == 3000
    threshold_m = stylize.make_densifier(cfg).grow_scale3d * loop.scene_scale
    assert threshold_m == pytest.approx(0.01 * loop.scene_scale)  # 0.01 head units, not 0.01 m
    init = stylize.template_splats(fit, replace(cfg, n_points=50), seed=0)
    std = np.exp(init.log_scales).max(-1)
    np.testing.assert_allclose(std, 0.02 * loop.scene_scale, rtol=1e-5)
    assert (std > threshold_m).all()  # the A.1 init is "large": split first (3DGS order, A.3)


def test_model_cache_keeps_one_model_per_slot():
    cache, built = ModelCache(), []

    def build(name):
        built.append(name)
        return object()

    a = cache.get("unet", ("a", "cpu"), lambda: build("a"))
    assert cache.get("unet", ("a", "cpu"), lambda: build("again")) is a and built == ["a"]  # warm
    b = cache.get("unet", ("b", "cpu"), lambda: build("b"))  # a new key replaces the slot's model
    assert b is not a and cache.peek("unet") is b and built == ["a", "b"]
    cache.get("vae", "k", lambda: build("vae"))
    assert len(cache) == 2 and "vae" in cache
    cache.clear()
    assert len(cache) == 0 and cache.peek("unet") is None


def test_runs_end_to_end_with_both_terms(tiny, astronaut_image, tmp_path):
    rec = Recorder()
    result = stylize.run(astronaut_image, preset="test", seed=0, options={"style": STYLE}, reporter=rec)
    m = result.metrics
    stages = list(dict.fromkeys(e[0] for e in rec.events))
    assert stages == ["models", "face", "init", "style", "stylize", "turntable"]
    assert ("stylize", 12, 12) in rec.events
    assert np.isfinite(m["loss_sas"]) and m["loss_sas"] > 0 and np.isfinite(m["loss_mvdream"]) and m["loss_mvdream"] > 0
    assert m["identity"] is True and m["mvdream"] is True and m["style"] == STYLE
    assert m["n_init"] == 400 and len(result.splats) == m["n_splats"] >= 400  # densified at most up
    assert rec.previews[0] == (400, 0) and len(rec.previews) >= 4  # init + every 4 steps
    # the guidance moved the grey init: colours are no longer all SH 0
    assert np.abs(result.splats.sh0).max() > 1e-4
    assert len(result.turntable) == 3 and result.turntable[0].shape == (32, 32, 3)
    back = read_ply(write_outputs(tmp_path, result)["ply"])
    assert len(back) == len(result.splats) and np.isfinite(back.means).all()
    assert np.abs(result.splats.means).max() < 0.3  # still a head around the origin
    # the style set was cached beside the models: a second job does not regenerate it
    assert list((tiny / ".cache" / "style_stats").glob("style_*.safetensors"))


def test_ablations_text_only_and_no_mvdream(tiny, astronaut_image, monkeypatch):
    rec, cache = Recorder(), ModelCache()  # the worker's one cache, handed to every job
    stylize.run(astronaut_image, preset="test", options={"steps": 2, "style": STYLE}, reporter=rec, model_cache=cache)
    controlnet = cache.peek("controlnet")
    assert controlnet is not None
    # text only: neither insightface nor the adapter is needed (their folders may be absent)
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_BUFFALO_L", str(tiny / "nowhere"))
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_IP_ADAPTER_FACEID", str(tiny / "nowhere"))
    rec = Recorder()
    result = stylize.run(
        astronaut_image,
        preset="test",
        options={"identity": False, "mvdream": False, "steps": 4, "style": STYLE},
        reporter=rec,
        model_cache=cache,
    )
    m = result.metrics
    assert "loss_mvdream" not in m and np.isfinite(m["loss_sas"]) and m["identity"] is False
    assert ("stylize", 4, 4) in rec.events and "style" not in [e[0] for e in rec.events]  # style set cached
    assert cache.peek("controlnet") is controlnet  # warm between jobs
    assert not any(  # identity off: SD1.5 reloaded without the adapter
        getattr(p, "to_k_ip", None) is not None for p in cache.peek("sd15").unet.attn_processors.values()
    )


def test_taesd_encodes_for_both_terms(tiny):
    """encoder=taesd swaps the render encoder of the MVDream term too (SD2.1 shares SD1.5's
    latent space); encoder=vae keeps MVDream's own SD2.1 VAE. Same views, same draws: the
    loss and the gradient reaching the render differ only by the encoder."""
    from dataclasses import replace
    from types import SimpleNamespace

    import torch

    cpu = torch.device("cpu")
    rgb = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    got = {}
    for encoder in ("taesd", "vae"):
        cfg = replace(stylize.PRESETS["test"], encoder=encoder)
        m = stylize.load_models(cfg, cpu, torch.float32)
        x = rgb.clone().requires_grad_(True)
        term = stylize.mvdream_term(
            m, cfg, STYLE, lambda cams: SimpleNamespace(rgb=x), device=cpu, dtype=torch.float32, seed=0
        )
        assert term.vae is (m.taesd if encoder == "taesd" else m.mvdream_parts.vae)
        loss = term(None, None, 7)["loss_mvdream"]
        loss.backward()
        got[encoder] = (float(loss), x.grad.clone())
    assert np.isfinite(got["taesd"][0]) and got["taesd"][0] != pytest.approx(got["vae"][0], rel=1e-3)
    assert got["taesd"][1].abs().sum() > 0 and not torch.allclose(got["taesd"][1], got["vae"][1])


def test_photo_init_and_cancel(tiny, astronaut_image):
    from backend.errors import CancelledError

    rec = Recorder(cancel_after=3)
    with pytest.raises(CancelledError):
        stylize.run(
            astronaut_image, preset="test", options={"init": "photo", "style": STYLE, "steps": 50}, reporter=rec
        )
    stages = [e[0] for e in rec.events]
    assert "optimise" in stages  # the photo pipeline's fit ran first
    assert sum(s == "stylize" for s in stages) == 3  # stopped at the next step


def test_instax_then_stylize(tiny, astronaut_image, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from backend.testing import save_tiny_sv3d

    sv3d = save_tiny_sv3d(tmp_path / "sv3d_u")
    save_file({}, str(sv3d / "sv3d_u.safetensors"))  # what the registry looks for
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_SV3D_U", str(sv3d))
    rec, cache = Recorder(), ModelCache()
    result = stylize.run_instax(
        astronaut_image, preset="test", options={"steps": 3, "style": STYLE}, reporter=rec, model_cache=cache
    )
    assert cache.peek(instax.SV3D_SLOT) is not None  # SV3D joined SD1.5 & co. in the one cache
    stages = list(dict.fromkeys(e[0] for e in rec.events))
    assert stages.index("generate") < stages.index("construct") < stages.index("stylize") < stages.index("turntable")
    m = result.metrics
    # SAS starts from the instax reconstruction (bound Gaussians, densified), not the 400-point template
    assert m["n_init"] == m["instax_n_splats"] >= 4 * m["instax_n_triangles"] and np.isfinite(m["loss_sas"])
    assert rec.previews[0][0] == 21 * 48 * 48  # instax's orbit cards came first
    assert ("stylize", 3, 3) in rec.events and len(result.splats) == m["n_splats"]


# ------------------------------------------------------------------ through the server


@pytest.mark.slow  # minutes on a busy 2-core machine: runs in CI's slow set
@pytest.mark.timeout(1200)
def test_through_the_real_server_with_cancel(tiny, tmp_path):
    from service_support import ServerProc, process_alive, wait_for, wait_ready

    from blender_addon.core import protocol as P

    # a long grace: on a busy machine one tiny-model step may take seconds, and this test is
    # about the pipeline noticing the cancel, not about the kill that follows an ignored one
    srv = ServerProc(tmp_path, "--preview-hz", "50", "--cancel-grace", "30", pipelines="stylize").start()
    try:
        with srv.client() as c:
            wait_ready(c, timeout=300)
            assert "stylize" in c.connect().pipelines
            photo_bytes = (REPO / "examples" / "astronaut.jpg").read_bytes()
            job = c.submit(
                photo_bytes, "stylize", preset="test", style_prompt=STYLE, options={"steps": 30, "preview_every": 5}
            )
            events: list = []
            final = c.wait(job, timeout=600, on_event=events.append)
            assert isinstance(final, P.JobDone), final
            steps = [e.step for e in events if isinstance(e, P.Progress) and e.stage == "stylize"]
            assert steps and steps[-1] == 30
            previews = [e for e in events if isinstance(e, P.Preview)]
            assert len(previews) >= 2 and all(np.isfinite(p.splats.means).all() for p in previews)
            assert final.metrics["style"] == STYLE and np.isfinite(final.metrics["loss_mvdream"])
            splats, ply = c.get_result(job)
            assert len(splats) == final.n_gaussians == len(read_ply(ply)) > 0

            job = c.submit(photo_bytes, "stylize", preset="test", style_prompt=STYLE, options={"steps": 100_000})
            wait_for(c, job, lambda m: isinstance(m, P.Progress) and m.stage == "stylize" and m.step >= 2, timeout=300)
            worker = c.connect().worker_pid
            c.cancel(job)
            final = c.wait(job, timeout=60)
            assert isinstance(final, P.JobFailed) and final.code == "cancelled", final
            # the worker stopped the job on its own (a cancel it ignored would have killed it):
            # same worker process, alive, and the worker's own message, not the server's kill
            assert final.message == "The job was cancelled.", final.message
            assert c.connect().worker_pid == worker and process_alive(worker)
            assert c.job(job)["state"] == "cancelled"
    finally:
        srv.stop()
