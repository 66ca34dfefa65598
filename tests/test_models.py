"""backend.models: registry, paths and overrides, check/download errors, loaders on tiny models."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from backend import models
from backend.errors import ModelMissingError
from backend.models import fetch as downloads


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No override from the developer's shell leaks into these tests."""
    for key in list(os.environ):
        if key.startswith("PORTRAITSPLAT_MODEL"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# --- registry and paths ----------------------------------------------------------------------


def test_registry_covers_the_paper_models():
    r = models.REGISTRY
    assert r["sd15"].repo == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert r["ip_adapter_faceid"].allow_patterns == ("ip-adapter-faceid_sd15.bin",)
    cn = r["controlnet_face"]
    assert cn.subfolder == "diffusion_sd15" and all(p.startswith("diffusion_sd15/") for p in cn.allow_patterns)
    assert r["sv3d_u"].gated and r["sv3d_p"].gated and "non-commercial" in r["sv3d_u"].licence
    assert "non-commercial" in r["buffalo_l"].licence and r["buffalo_l"].source == "insightface"
    for spec in r.values():
        assert spec.licence and spec.purpose and spec.size_bytes > 0 and spec.required


def test_every_registry_entry_is_read_by_some_code(monkeypatch):
    """The registry is honest: each entry has a loader in backend.models, its name is read by
    code outside the registry, and a pipeline needs it or it is optional with named readers.
    ``models download --all`` fetches exactly these."""
    from backend.pipelines import available

    backend_dir = Path(models.__file__).resolve().parents[1]
    sources = {
        p: p.read_text()
        for p in backend_dir.rglob("*.py")
        if p.name != "registry.py" and "testing" not in p.relative_to(backend_dir).parts
    }
    pipelines = set(available())
    for name, spec in models.REGISTRY.items():
        assert spec.loader in models.__all__ and callable(getattr(models, spec.loader)), name
        assert any(f'"{name}"' in text for text in sources.values()), f"nothing outside the registry names {name}"
        needed_by = [p for p in pipelines if name in models.required_models(p)]
        if spec.optional:
            assert not needed_by and spec.used_by and set(spec.used_by) <= pipelines | {"eval"}, name
        else:
            assert needed_by and not spec.used_by, name
    assert models.default_download_names(include_optional=True) == list(models.REGISTRY)
    assert set(models.default_download_names()) == {n for p in pipelines for n in models.required_models(p)}
    assert not {"sdxl", "instantid", "antelopev2", "auraface"} & set(models.REGISTRY)  # issue 15: read by nothing
    from backend.cli import main
    from backend.cli import models as models_cli

    asked: list[list[str]] = []
    monkeypatch.setattr(models_cli, "download", lambda names, **kw: asked.append(list(names)) or [])
    assert main(["models", "download", "--all"]) == 0 and main(["models", "download"]) == 0
    assert asked == [list(models.REGISTRY), models.default_download_names()]


def test_required_models_per_pipeline():
    assert models.required_models("photo") == []
    assert models.required_models("synthetic") == []
    stylize = models.required_models("stylize")
    assert set(stylize) == {"sd15", "ip_adapter_faceid", "controlnet_face", "mvdream", "buffalo_l", "taesd"}
    assert models.required_models("instax") == ["sv3d_u"]
    assert set(models.required_models("instax+stylize")) == set(stylize) | {"sv3d_u"}
    assert models.ensure_models("photo", Path("/nonexistent")) == {}


def test_check_on_empty_root_lists_every_model_missing_with_its_fix(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path))
    assert main(["models", "check"]) == 0
    out = capsys.readouterr().out
    for name, spec in models.REGISTRY.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "MISSING" in line and f"python -m backend models download --only {name}" in line
        assert spec.licence in line
    assert "accept licence at https://huggingface.co/stabilityai/sv3d" in out
    statuses = models.check(root=tmp_path)
    assert [s.name for s in statuses] == list(models.REGISTRY) and not any(s.present for s in statuses)


def test_model_path_missing_names_the_download_command(tmp_path):
    with pytest.raises(ModelMissingError) as exc:
        models.model_path("controlnet_face", tmp_path)
    assert exc.value.code == "model_missing"
    assert "python -m backend models download --only controlnet_face" in exc.value.hint
    assert str(tmp_path / "controlnet_face") in exc.value.message
    with pytest.raises(ModelMissingError) as exc:
        models.model_path("sv3d_u", tmp_path)
    assert "HF_TOKEN" in exc.value.hint and "stabilityai/sv3d" in exc.value.hint


def test_env_and_config_overrides(tmp_path, monkeypatch):
    own = tmp_path / "elsewhere" / "taesd"
    own.mkdir(parents=True)
    (own / "config.json").write_text("{}")
    (own / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    root = tmp_path / "root"
    with pytest.raises(ModelMissingError):
        models.model_path("taesd", root)
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_TAESD", str(own))
    assert models.model_path("taesd", root) == own
    monkeypatch.delenv("PORTRAITSPLAT_MODEL_TAESD")
    root.mkdir()
    (root / "models.toml").write_text(f'[paths]\ntaesd = "{own}"\n')
    assert models.model_path("taesd", root) == own
    status = {s.name: s for s in models.check(["taesd"], root=root, verify=False)}["taesd"]
    assert status.present and status.origin == "config"


def test_ensure_models_one_message_for_all_missing(tmp_path):
    with pytest.raises(ModelMissingError) as exc:
        models.ensure_models("instax+stylize", tmp_path)
    msg, hint = exc.value.message, exc.value.hint
    assert "'instax+stylize'" in msg
    assert hint.startswith("Run: python -m backend models download --only sd15 ")
    for name in ("ip_adapter_faceid", "controlnet_face", "mvdream", "buffalo_l", "sv3d_u"):
        assert name in hint
    assert "HF_TOKEN" in hint


def test_ensure_models_passes_on_tiny_root(tiny_models_root):
    found = models.ensure_models("stylize", tiny_models_root)
    assert found["buffalo_l"] == tiny_models_root / "insightface" / "models" / "buffalo_l"
    assert all(p.is_dir() for p in found.values())


# --- download errors (no network: the fetchers are replaced) -----------------------------------


def _fake_response(status: int):
    import httpx2

    return httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/stabilityai/sv3d"))


def test_gated_repo_gives_licence_and_token_instructions(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def gated(spec, folder, token):
        raise GatedRepoError("403 Client Error: Cannot access gated repo", response=_fake_response(403))

    monkeypatch.setattr(downloads, "_check_space", lambda spec, folder: None)
    monkeypatch.setitem(downloads._DOWNLOADERS, "hf", gated)
    (result,) = models.download(["sv3d_u"], root=tmp_path)
    assert not result.ok and isinstance(result.error, models.ModelGatedError)
    assert result.error.code == "model_gated"
    assert "https://huggingface.co/stabilityai/sv3d" in result.error.hint
    assert "HF_TOKEN=" in result.error.hint and "--only sv3d_u" in result.error.hint


def test_disk_full_is_a_clear_error(tmp_path, monkeypatch):
    def full(spec, folder, token):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloads, "_check_space", lambda spec, folder: None)
    monkeypatch.setitem(downloads._DOWNLOADERS, "hf", full)
    (result,) = models.download(["taesd"], root=tmp_path)
    assert isinstance(result.error, models.DiskFullError) and "PORTRAITSPLAT_MODELS" in result.error.hint

    # and the space check before downloading
    monkeypatch.undo()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # undo() restored the CI environment's value
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 99, 1))
    (result,) = models.download(["sd15"], root=tmp_path)
    assert isinstance(result.error, models.DiskFullError) and "needs about" in result.error.message


def test_offline_refuses_to_download(tmp_path, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelMissingError, match="HF_HUB_OFFLINE"):
        models.download(["taesd"], root=tmp_path)
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path))
    assert main(["models", "download", "--only", "taesd"]) == 1
    assert "HF_HUB_OFFLINE=0 python -m backend models download --only taesd" in capsys.readouterr().err


def test_download_calls_hub_with_patterns_and_skips_present(tmp_path, monkeypatch, tiny_models_root):
    calls = []

    def fake_snapshot(**kw):
        calls.append(kw)
        shutil.copytree(tiny_models_root / "taesd", kw["local_dir"], dirs_exist_ok=True)
        return kw["local_dir"]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    (r,) = models.download(["taesd"], root=tmp_path, token="tok")
    assert r.ok and not r.skipped and r.path == tmp_path / "taesd"
    assert calls[0]["repo_id"] == "madebyollin/taesd" and calls[0]["token"] == "tok"
    assert calls[0]["allow_patterns"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    (r,) = models.download(["taesd"], root=tmp_path)
    assert r.ok and r.skipped and len(calls) == 1


def test_insightface_pack_lands_where_insightface_looks(tmp_path, monkeypatch, tiny_models_root):
    import insightface.utils.storage as storage

    def fake_download(sub_dir, name, force=False, root="~/.insightface"):
        shutil.copytree(
            tiny_models_root / "insightface" / "models" / name, Path(root) / sub_dir / name, dirs_exist_ok=True
        )
        return str(Path(root) / sub_dir / name)

    monkeypatch.setattr(storage, "download", fake_download)
    (r,) = models.download(["buffalo_l"], root=tmp_path)
    assert r.ok, r.error
    assert (tmp_path / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx").is_file()
    assert models.model_path("buffalo_l", tmp_path) == r.path


# --- corrupt files ---------------------------------------------------------------------------


def test_truncated_safetensors_names_the_fix(tmp_path, tiny_models_root):
    root = tmp_path / "root"
    shutil.copytree(tiny_models_root / "sd15", root / "sd15")
    weights = root / "sd15" / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(models.ModelCorruptError) as exc:
        models.load_sd15(root / "sd15")
    assert exc.value.code == "model_corrupt" and "truncated" in exc.value.message
    assert "python -m backend models download --only sd15" in exc.value.hint and str(weights) in exc.value.hint
    status = models.check(["sd15"], root=root)[0]
    assert not status.present and "truncated" in status.problem
    weights.write_bytes(b"\x00" * 3)
    with pytest.raises(models.ModelCorruptError, match="only 3 bytes"):
        models.verify_safetensors(weights, "sd15")


def test_corrupt_ip_adapter_file(tmp_path, tiny_models_root):
    good = tiny_models_root / "ip_adapter_faceid" / "ip-adapter-faceid_sd15.bin"
    bad = tmp_path / "ip-adapter-faceid_sd15.bin"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(models.ModelCorruptError, match="damaged") as exc:
        models.load_ip_adapter_state_dict(bad)
    assert "--only ip_adapter_faceid" in exc.value.hint


# --- loaders on tiny models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15(tiny_models_root):
    return models.load_sd15(tiny_models_root / "sd15")


def _text(sd, prompts):
    ids = sd.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return sd.text_encoder(ids)[0]  # [B, 77, C]


def test_load_sd15_parts_run(sd15):
    from diffusers import DDIMScheduler

    assert isinstance(sd15.scheduler, DDIMScheduler)
    assert sd15.scheduler.config.beta_schedule == "scaled_linear" and sd15.scheduler.config.beta_end == 0.012
    assert sd15.vae_scale_factor == 8 and not sd15.unet.training
    with torch.no_grad():
        emb = _text(sd15, ["a portrait photo", ""])
        assert emb.shape == (2, 77, sd15.unet.config.cross_attention_dim)
        lat = sd15.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
        assert lat.shape == (1, 4, 8, 8)
        eps = sd15.unet(lat.repeat(2, 1, 1, 1), 500, encoder_hidden_states=emb).sample
        assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
        assert sd15.vae.decode(lat).sample.shape == (1, 3, 64, 64)


def test_ip_adapter_identity_changes_the_unet_output(tiny_models_root):
    sd = models.load_sd15(tiny_models_root / "sd15")
    torch.manual_seed(0)
    lat, emb = torch.randn(1, 4, 8, 8), None
    with torch.no_grad():
        emb = _text(sd, ["a portrait photo"])
        before = sd.unet(lat, 300, encoder_hidden_states=emb).sample
    models.load_ip_adapter_faceid(sd.unet, tiny_models_root / "ip_adapter_faceid")
    # decoupled cross-attention on every cross-attention processor; LoRA on all of them
    procs = sd.unet.attn_processors
    ip_procs = [n for n, p in procs.items() if hasattr(p, "to_k_ip")]
    assert ip_procs == [n for n in procs if n.endswith("attn2.processor")] and len(ip_procs) == 4
    assert "faceid" in sd.unet.peft_config
    n_lora = sum(1 for n, _ in sd.unet.named_modules() if n.endswith("lora_A.faceid"))
    assert n_lora == 4 * len(procs)  # to_q, to_k, to_v, to_out of every attention

    ident = torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)

    def run(e):
        with torch.no_grad():
            return sd.unet(lat, 300, encoder_hidden_states=emb, added_cond_kwargs={"image_embeds": [e]}).sample

    a, b, zero = run(ident), run(other), run(torch.zeros_like(ident))
    assert (a - b).abs().max() > 1e-3 and (a - zero).abs().max() > 1e-3
    models.set_ip_adapter_scale(sd.unet, 0.0)
    a0, b0 = run(ident), run(other)
    torch.testing.assert_close(a0, b0)  # the embedding acts only through the IP branch
    assert (a0 - before).abs().max() > 1e-4  # ... and the LoRA is live on its own


def test_controlnet_residuals_change_the_output(sd15, tiny_models_root):
    net = models.load_controlnet(tiny_models_root / "controlnet_face")
    assert net.config.cross_attention_dim == sd15.unet.config.cross_attention_dim
    torch.manual_seed(1)
    lat = torch.randn(1, 4, 8, 8)
    cond = torch.zeros(1, 3, 64, 64)
    cond[:, 1, 20:40, 20:40] = 0.8  # a green patch, as the landmark drawing has
    with torch.no_grad():
        emb = _text(sd15, ["a portrait photo"])
        down, mid = net(
            lat, 300, encoder_hidden_states=emb, controlnet_cond=cond, conditioning_scale=1.0, return_dict=False
        )
        plain = sd15.unet(lat, 300, encoder_hidden_states=emb).sample
        ctrl = sd15.unet(
            lat, 300, encoder_hidden_states=emb, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        down0, mid0 = net(
            lat, 300, encoder_hidden_states=emb, controlnet_cond=cond, conditioning_scale=0.0, return_dict=False
        )
        off = sd15.unet(
            lat,
            300,
            encoder_hidden_states=emb,
            down_block_additional_residuals=down0,
            mid_block_additional_residual=mid0,
        ).sample
    assert len(down) == 4 and mid.shape == (1, 32, 4, 4)
    assert (ctrl - plain).abs().max() > 1e-3
    torch.testing.assert_close(off, plain)


def test_load_taesd_and_mvdream(tiny_models_root):
    taesd = models.load_taesd(tiny_models_root / "taesd")
    with torch.no_grad():
        z = taesd.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latents
    assert z.shape == (1, 4, 8, 8)
    mv = models.load_mvdream(tiny_models_root / "mvdream")
    assert mv.unet_config["_class_name"] == "MultiViewUNetModel" and mv.unet_config["camera_dim"] == 16
    E = 4 * mv.unet_config["model_channels"]
    assert mv.unet_state_dict["camera_embed.0.weight"].shape == (E, 16)
    assert mv.text_encoder.config.hidden_size == mv.unet_config["context_dim"]
    assert mv.scheduler.config.prediction_type == "epsilon"


def test_load_sv3d_forward(tiny_sv3d_path):
    sv = models.load_sv3d(tiny_sv3d_path)
    assert sv.unet.config.in_channels == 8 and sv.unet.config.out_channels == 4
    assert sv.scheduler.config.prediction_type == "v_prediction" and sv.scheduler.config.sigma_max == 700.0
    frames = 2  # the UNet takes any frame count; 21 is the real orbit but slow on a CPU
    with torch.no_grad():
        tok = sv.image_encoder(pixel_values=torch.rand(1, 3, 32, 32)).image_embeds[:, None]  # [1, 1, C]
        x = torch.randn(1, frames, 8, 8, 8)
        out = sv.unet(x, torch.tensor([0.7]), encoder_hidden_states=tok, added_time_ids=torch.tensor([[1e-5]])).sample
    assert out.shape == (1, frames, 4, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(models.ModelCorruptError, match="SV3D"):
        models.load_sv3d(tiny_sv3d_path / "unet" / "config.json")


def test_load_insightface_from_registry_layout(tiny_models_root, monkeypatch):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tiny_models_root))
    app = models.load_insightface()
    assert set(app.models) == {"detection", "recognition", "landmark_2d_106", "landmark_3d_68", "genderage"}


def test_loaders_load_in_the_requested_dtype(tiny_models_root):
    net = models.load_controlnet(tiny_models_root / "controlnet_face", dtype=torch.bfloat16)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    sd = models.load_sd15(tiny_models_root / "sd15", dtype=torch.bfloat16)
    assert sd.unet.dtype == sd.vae.dtype == sd.text_encoder.dtype == torch.bfloat16
    models.load_ip_adapter_faceid(sd.unet, tiny_models_root / "ip_adapter_faceid")
    proj = sd.unet.encoder_hid_proj.image_projection_layers[0]
    assert {p.dtype for p in proj.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = sd.unet(
            torch.randn(1, 4, 8, 8, dtype=torch.bfloat16),
            10,
            encoder_hidden_states=torch.randn(1, 77, 32, dtype=torch.bfloat16),
            added_cond_kwargs={"image_embeds": [torch.randn(1, 1, 512, dtype=torch.bfloat16)]},
        ).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_network_guard_blocks_remote_and_allows_loopback(no_network):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(RuntimeError, match="network access in a test"):
            s.connect(("203.0.113.7", 443))  # TEST-NET-3: refused before any packet leaves
    with pytest.raises(RuntimeError, match="name lookup"):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(no_network) == 2
    no_network.clear()  # the attempts above were deliberate; don't fail this test at teardown
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
