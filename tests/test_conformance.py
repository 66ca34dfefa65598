"""Conformance: our loaders accept checkpoints laid out by the *reference* implementations, strictly.

Every layout function in backend/models/layouts.py is held against the reference code's own
modules (diffusers, transformers, the original ``ldm`` package, tencent-ailab's IP-Adapter), at
full size on the meta device (the real key counts) and at tiny width on disk through the
loaders. Where no reference is installable (lllyasviel's cldm, madebyollin's taesd.py), the
layout is checked against what the test records from reading the source, with the line cited.

Real key counts and sizes recorded here (full-size modules, fp16 bytes = 2 x parameters):

=====================================  ======  =====================================================
checkpoint                             keys    source / cross-check
=====================================  ======  =====================================================
SD1.5 unet (diffusers)                 686     UNet2DConditionModel(shipped unet/config.json)
SD1.5 vae (diffusers)                  248     AutoencoderKL(shipped vae/config.json)
SD1.5 text_encoder                     196     CLIPTextModel (+ ``position_ids`` in older files)
SD1.5 single file                      1130    ldm UNetModel 686 + ldm AE 248 + CLIP 196 (+extras)
ControlNet SD1.5 (both layouts)        340     ControlNetModel / cldm; 361M params = 723 MB fp16
IP-Adapter-FaceID SD1.5                294     6 image_proj + 32x8 LoRA + 16x2 ip; 96.7 MB fp16
MVDream unet (LDM keys + camera)       690     ldm UNetModel(SD2.1) 686 + camera_embed 4; 1.74 GB
TAESD (diffusers AutoencoderTiny)      134     taesd.py Encoder/Decoder; encoder 1,222,532 params
=====================================  ======  =====================================================

WEIGHTS.md gives 97 MB (FaceID), 723 MB (ControlNet), 1.74 GB (MVDream unet) and 1.2M (TAESD
encoder): the counts above reproduce each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from backend import models
from backend.models import layouts as L
from backend.models import probe as probes
from backend.testing import reference as ref

CONFIGS = probes.CONFIG_DIR


def _cfg(rel: str) -> dict:
    return json.loads((CONFIGS / rel).read_text())


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _assert_same(found: dict, expected: dict) -> None:
    diff = L.compare(found, expected)
    assert diff.ok, diff.describe(limit=8)


def _params(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


# --- full-size layouts against the reference modules (meta device: no memory, ~1 s) ------------


def test_diffusers_layouts_match_diffusers_and_transformers_classes():
    from diffusers import AutoencoderKL, AutoencoderTiny, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, cn_cfg = (
        _cfg("sd15/unet/config.json"),
        _cfg("sd15/vae/config.json"),
        _cfg("controlnet_sd15/config.json"),
    )
    # madebyollin/taesd config.json (the AutoencoderTiny defaults it was saved with)
    taesd_cfg = dict(
        encoder_block_out_channels=[64] * 4,
        decoder_block_out_channels=[64] * 4,
        num_encoder_blocks=[1, 3, 3, 3],
        num_decoder_blocks=[3, 3, 3, 1],
        latent_channels=4,
        act_fn="relu",
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        _assert_same(_shapes(unet), L.unet2d_shapes(unet_cfg))
        assert [n for n, _, _ in L.unet_attn_processors(unet_cfg)] == list(unet.attn_processors)
        _assert_same(_shapes(ControlNetModel.from_config(cn_cfg)), L.controlnet_shapes(cn_cfg))
        _assert_same(_shapes(AutoencoderKL.from_config(vae_cfg)), L.autoencoder_kl_shapes(vae_cfg))
        _assert_same(_shapes(AutoencoderTiny(**taesd_cfg)), L.autoencoder_tiny_shapes(taesd_cfg))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "sd15" / "text_encoder"))
        _assert_same(ref.text_model_keys(_shapes(te)), L.clip_text_shapes(_cfg("sd15/text_encoder/config.json")))
    counts = {
        "unet": len(L.unet2d_shapes(unet_cfg)),
        "vae": len(L.autoencoder_kl_shapes(vae_cfg)),
        "controlnet": len(L.controlnet_shapes(cn_cfg)),
        "taesd": len(L.autoencoder_tiny_shapes(taesd_cfg)),
    }
    assert counts == {"unet": 686, "vae": 248, "controlnet": 340, "taesd": 134}
    assert round(_params(L.controlnet_shapes(cn_cfg)) * 2 / 1e6) == 723  # WEIGHTS.md: 723 MB fp16
    assert (
        _params({k: v for k, v in L.autoencoder_tiny_shapes(taesd_cfg).items() if k.startswith("encoder")}) == 1_222_532
    )


def test_ldm_layouts_match_the_original_ldm_modules():
    """SD1.5 settings (v1-inference.yaml: 320, [1,2,4,4], heads 8, context 768) and SD2.1 /
    MVDream settings (linear projections, 64-channel heads, context 1024)."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd15 = dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2)
    sd15.update(channel_mult=[1, 2, 4, 4], use_spatial_transformer=True, transformer_depth=1, legacy=False)
    with torch.device("meta"):
        v1 = UNetModel(image_size=32, num_heads=8, context_dim=768, **sd15)
        v2 = UNetModel(image_size=32, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True, **sd15)
        ae = ref.LdmAutoencoder(128, (1, 2, 4, 4), 2, 4, 4)
    _assert_same(_shapes(v1), L.ldm_unet_shapes(L.LdmUNet.from_diffusers(_cfg("sd15/unet/config.json"))))
    mv_cfg = {  # bytedance/MVDream configs/sd-v2-base.yaml unet_config.params, as ashawkey's unet/config.json keeps them
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64,
        "transformer_depth": 1,
        "context_dim": 1024,
        "use_checkpoint": False,
        "camera_dim": 16,
    }
    mv = L.ldm_unet_shapes(L.LdmUNet.from_ldm(mv_cfg))
    plain = {k: v for k, v in mv.items() if not k.startswith("camera_embed.")}
    _assert_same(_shapes(v2), plain)
    assert {k: v for k, v in mv.items() if k.startswith("camera_embed.")} == {
        "camera_embed.0.weight": (1280, 16),
        "camera_embed.0.bias": (1280,),
        "camera_embed.2.weight": (1280, 1280),
        "camera_embed.2.bias": (1280,),
    }
    assert len(mv) == 690 and round(_params(mv) * 2 / 1e9, 2) == 1.74  # WEIGHTS.md: 1.74 GB fp16
    _assert_same(_shapes(ae), L.ldm_vae_shapes(L.LdmVae.from_diffusers(_cfg("sd15/vae/config.json"))))
    full = probes.sd15_single_file_expected()
    assert len(full) == 1130 and full["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert full["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert full["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)


def test_cldm_controlnet_layout_as_read_from_lllyasviel_source():
    """cldm/cldm.py (lllyasviel/ControlNet): ``input_hint_block`` is conv_nd(hint, 16) ... 16,16 /
    16,32 s2 / 32,32 / 32,96 s2 / 96,96 / 96,256 s2 / zero conv 256 -> model_channels at Sequential
    indices 0..14 (lines 147-163); ``zero_convs`` are 1x1 convs, one per input block (lines 145,
    212, 237, make_zero_conv line 281); ``middle_block_out`` one more (line 278). The rest is the
    UNet's encoder half, built by the same code as ldm's UNetModel: compared with it here."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(
            image_size=32,
            in_channels=4,
            out_channels=4,
            model_channels=320,
            attention_resolutions=[4, 2, 1],
            num_res_blocks=2,
            channel_mult=[1, 2, 4, 4],
            num_heads=8,
            use_spatial_transformer=True,
            transformer_depth=1,
            context_dim=768,
            legacy=False,
        )
    cn = L.ldm_controlnet_shapes(L.LdmUNet.from_diffusers(_cfg("controlnet_sd15/config.json")))
    encoder = {
        k: v for k, v in _shapes(unet).items() if k.split(".")[0] in ("time_embed", "input_blocks", "middle_block")
    }
    assert {k: v for k, v in cn.items() if k.split(".")[0] in ("time_embed", "input_blocks", "middle_block")} == encoder
    assert len(cn) == 340 and len([k for k in cn if k.startswith("zero_convs.")]) == 24
    assert [k for k in cn if k.startswith("input_hint_block.") and k.endswith(".weight")] == [
        f"input_hint_block.{i}.weight" for i in range(0, 16, 2)
    ]
    assert cn["input_hint_block.0.weight"] == (16, 3, 3, 3) and cn["input_hint_block.14.weight"] == (320, 256, 3, 3)
    assert cn["zero_convs.11.0.weight"] == (1280, 1280, 1, 1) and cn["middle_block_out.0.weight"] == (1280, 1280, 1, 1)
    # the same parameter count as the diffusers ControlNet of that config (the 723 MB file)
    assert _params(cn) == _params(L.controlnet_shapes(_cfg("controlnet_sd15/config.json")))


def test_taesd_layout_as_read_from_madebyollin_source():
    """taesd.py (madebyollin/taesd) lines 30-47: Encoder = conv(3,64), Block, [conv s2 no bias,
    3 Blocks] x3, conv(64,4); Decoder = Clamp, conv(4,64), ReLU, [3 Blocks, Upsample, conv no
    bias] x3, Block, conv(64,3); Block = conv.{0,2,4} (+1x1 ``skip`` only when widths differ).
    diffusers' AutoencoderTiny (the layout of the hub's diffusion_pytorch_model.safetensors)
    keeps the encoder indices and has no Clamp layer (it clamps in forward), so every decoder
    index is taesd.py's minus one."""
    expected = {}
    for part, (keys, shift) in _taesd_py_layout().items():
        for k, shape in keys.items():
            idx, _, tail = k.partition(".")
            expected[f"{part}.layers.{int(idx) + shift}.{tail}"] = shape
    _assert_same(L.autoencoder_tiny_shapes({}), expected)


def _taesd_py_layout() -> dict[str, tuple[dict[str, tuple[int, ...]], int]]:
    """taesd.py's ``taesd_encoder``/``taesd_decoder`` state-dict keys (its own Sequential indices),
    as read from madebyollin/taesd taesd.py lines 30-47, with the index shift to diffusers'."""
    enc_layers = ["conv3"] + ["block"] + (["conv_nb"] + ["block"] * 3) * 3 + ["conv_out"]
    dec_layers = ["clamp", "conv_in", "relu"] + (["block"] * 3 + ["up", "conv_nb"]) * 3 + ["block", "conv_final"]
    out = {}
    for part, layers, shift in (("encoder", enc_layers, 0), ("decoder", dec_layers, -1)):
        keys: dict[str, tuple[int, ...]] = {}
        for i, kind in enumerate(layers):
            if kind == "block":
                for j in (0, 2, 4):
                    keys[f"{i}.conv.{j}.weight"], keys[f"{i}.conv.{j}.bias"] = (64, 64, 3, 3), (64,)
            elif kind == "conv_nb":
                keys[f"{i}.weight"] = (64, 64, 3, 3)
            elif kind in ("conv3", "conv_in", "conv_out", "conv_final"):
                c_in, c_out = {"conv3": (3, 64), "conv_in": (4, 64), "conv_out": (64, 4), "conv_final": (64, 3)}[kind]
                keys[f"{i}.weight"], keys[f"{i}.bias"] = (c_out, c_in, 3, 3), (c_out,)
        out[part] = (keys, shift)
    return out


def test_taesd_py_files_from_comfyui_vae_approx_load_like_the_diffusers_copy(tmp_path, monkeypatch):
    """ComfyUI keeps TAESD as taesd.py's two files (models/vae_approx/taesd_encoder.safetensors,
    taesd_decoder.safetensors); they load into the same AutoencoderTiny as madebyollin/taesd's
    diffusers file holding the same tensors (mapped here by the index shift read from taesd.py)."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    diffusers_state = {}
    approx = tmp_path / "ComfyUI" / "models" / "vae_approx"
    for part, (keys, shift) in _taesd_py_layout().items():
        tensors = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in keys.items()}
        ref.save_file_state(tensors, approx / f"taesd_{part}.safetensors")
        for k, t in tensors.items():
            idx, _, tail = k.partition(".")
            diffusers_state[f"{part}.layers.{int(idx) + shift}.{tail}"] = t
    hub = tmp_path / "taesd"
    AutoencoderTiny().save_pretrained(hub)
    save_file(diffusers_state, str(hub / "diffusion_pytorch_model.safetensors"))
    a, b = models.load_taesd(approx), models.load_taesd(hub)
    img, z = torch.rand(1, 3, 64, 64) * 2 - 1, torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(img).latents, b.encode(img).latents)
        torch.testing.assert_close(a.decode(z).sample, b.decode(z).sample)
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_TAESD", str(approx))  # an override at the vae_approx folder
    (status,) = models.check(["taesd"], root=tmp_path / "root")
    assert status.present and status.path == approx, status.problem
    (approx / "taesd_decoder.safetensors").unlink()
    save_file({"0.weight": torch.zeros(64, 4, 3, 3)}, str(approx / "taesd_decoder.safetensors"))
    with pytest.raises(models.ModelCorruptError, match="missing keys"):
        models.load_taesd(approx)


def test_ip_adapter_layout_matches_tencent_reference_modules():
    """MLPProjModel + ModuleList(LoRA processors in unet.attn_processors order), rank 128
    (tutorial_train_faceid.py line 300), for SD1.5's UNet: 294 keys, 96.7 MB fp16."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_cfg("sd15/unet/config.json"))
        proj, layers = ref.ip_adapter_faceid_reference(unet, rank=probes.FACEID_LORA_RANK)
    found = _shapes(proj, "image_proj.") | _shapes(layers, "ip_adapter.")
    expected = L.ip_adapter_faceid_shapes(L.unet_attn_processors(unet.config), 768, probes.FACEID_LORA_RANK)
    _assert_same(found, expected)
    assert len(expected) == 294 and round(_params(expected) * 2 / 1e6) == 97  # WEIGHTS.md: 97 MB
    assert expected["ip_adapter.1.to_k_ip.weight"] == (320, 768) and expected["ip_adapter.31.to_v_ip.weight"] == (
        1280,
        768,
    )
    assert expected["image_proj.proj.2.weight"] == (3072, 1024)
    hidden = [expected[f"ip_adapter.{i}.to_q_lora.up.weight"][0] for i in range(32)]
    assert hidden == [320] * 4 + [640] * 4 + [1280] * 10 + [640] * 6 + [320] * 6 + [1280] * 2  # WEIGHTS.md


# --- tiny reference checkpoints through the loaders -----------------------------------------


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Path:
    return ref.tiny_sd15_config_dir(tmp_path_factory.mktemp("cfg") / "sd15")


@pytest.fixture(scope="module")
def reference_sd15(tiny_cfg):
    return ref.ldm_unet(), ref.ldm_autoencoder(), ref.clip_text_model(tiny_cfg)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd15_single_file_from_ldm_modules_loads_and_computes_the_same(tmp_path, tiny_cfg, reference_sd15, suffix):
    unet_ref, ae_ref, te_ref = reference_sd15
    path = ref.save_file_state(ref.sd15_single_file_state(unet_ref, ae_ref, te_ref), tmp_path / f"v1-5-tiny{suffix}")
    sd = models.load_sd15(path, config=tiny_cfg)
    torch.manual_seed(3)
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32), torch.tensor([321])
    img, z = torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        expected = unet_ref(x, t, context=ctx)
        assert expected.abs().mean() > 1e-3  # randomised: a zero UNet would prove nothing
        torch.testing.assert_close(sd.unet(x, t, encoder_hidden_states=ctx).sample, expected, atol=1e-4, rtol=1e-4)
        moments = sd.vae.encode(img).latent_dist
        torch.testing.assert_close(torch.cat([moments.mean, moments.logvar], 1), ae_ref.moments(img).clamp(max=20.0, min=-30.0), atol=1e-4, rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(sd.vae.decode(z).sample, ae_ref.decode(z), atol=1e-4, rtol=1e-4)
        ids = sd.tokenizer(["a 3D cartoon style portrait"], padding="max_length", max_length=77, return_tensors="pt")
        assert ids.input_ids[0, :8].tolist() == [49406, 320, 274, 323, 7651, 1844, 5352, 49407]
        torch.testing.assert_close(sd.text_encoder(ids.input_ids)[0], te_ref(ids.input_ids)[0])
    assert sd.scheduler.config.beta_schedule == "scaled_linear" and sd.vae_scale_factor == 2


def test_sd15_single_file_strictness(tmp_path, tiny_cfg, reference_sd15):
    state = ref.sd15_single_file_state(*reference_sd15)
    missing = dict(state)
    del missing["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
    with pytest.raises(models.ModelCorruptError, match=r"1 missing keys: model\.diffusion_model\.input_blocks\.1\.1\.proj_in\.weight") as exc:  # fmt: skip
        models.load_sd15(ref.save_file_state(missing, tmp_path / "missing.safetensors"), config=tiny_cfg)
    assert "python -m backend models download --only sd15" in exc.value.hint
    extra = dict(state, **{"model.diffusion_model.label_emb.0.0.weight": torch.zeros(128, 4)})
    with pytest.raises(models.ModelCorruptError, match=r"1 unexpected keys: model\.diffusion_model\.label_emb"):
        models.load_sd15(ref.save_file_state(extra, tmp_path / "extra.safetensors"), config=tiny_cfg)
    sd2 = dict(state)
    sd2["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(64)
    with pytest.raises(models.ModelCorruptError, match="wrong shape"):
        models.load_sd15(ref.save_file_state(sd2, tmp_path / "shape.safetensors"), config=tiny_cfg)


def test_controlnet_single_file_in_cldm_layout(tmp_path, reference_sd15):
    cfg = ref.tiny_controlnet_config_dir(tmp_path / "cn_cfg")
    state = ref.cldm_controlnet_state(reference_sd15[0])
    for prefix in ("control_model.", ""):  # A1111/ComfyUI files, and bare cldm state dicts
        path = ref.save_file_state(
            {prefix + k: v for k, v in state.items()}, tmp_path / f"cn{prefix or '_bare'}.safetensors"
        )
        net = models.load_controlnet(path, config=cfg)
        own = net.state_dict()
        assert len(own) == len(state) == len(L.controlnet_shapes(json.loads((cfg / "config.json").read_text())))
        torch.testing.assert_close(own["controlnet_cond_embedding.conv_in.weight"], state["input_hint_block.0.weight"])
        torch.testing.assert_close(
            own["controlnet_cond_embedding.conv_out.weight"], state["input_hint_block.14.weight"]
        )
        torch.testing.assert_close(own["controlnet_down_blocks.3.weight"], state["zero_convs.3.0.weight"])
        torch.testing.assert_close(own["controlnet_mid_block.weight"], state["middle_block_out.0.weight"])
        torch.testing.assert_close(
            own["down_blocks.0.attentions.0.proj_in.weight"], state["input_blocks.1.1.proj_in.weight"]
        )
    del state["zero_convs.2.0.bias"]
    with pytest.raises(models.ModelCorruptError, match=r"missing keys: control_model\.zero_convs\.2\.0\.bias"):
        models.load_controlnet(
            ref.save_file_state({"control_model." + k: v for k, v in state.items()}, tmp_path / "bad.safetensors"),
            config=cfg,
        )


def test_ip_adapter_faceid_from_tencent_modules(tmp_path, tiny_models_root):
    sd = models.load_sd15(tiny_models_root / "sd15")
    path, proj, layers = ref.save_ip_adapter_faceid_reference(tmp_path / "ip-adapter-faceid_sd15.bin", sd.unet)
    models.probe.probe_ip_adapter(path, dict(sd.unet.config))
    models.load_ip_adapter_faceid(sd.unet, path)
    # the UNet as diffusers runs it (our loader: decoupled cross-attention + PEFT LoRA) computes
    # what tencent-ailab's processors compute with the projected identity tokens appended to the
    # text (IPAdapterFaceID.generate: torch.cat([prompt_embeds, image_prompt_embeds], dim=1))
    torch.manual_seed(5)
    ident = torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)
    lat, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    reference_unet = models.load_sd15(tiny_models_root / "sd15").unet
    reference_unet.set_attn_processor(dict(zip(reference_unet.attn_processors.keys(), layers)))
    with torch.no_grad():
        tokens = proj(ident)
        torch.testing.assert_close(sd.unet.encoder_hid_proj.image_projection_layers[0](ident), tokens)
        got = sd.unet(lat, 300, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [ident]}).sample
        expected = reference_unet(lat, 300, encoder_hidden_states=torch.cat([text, tokens], dim=1)).sample
        plain = models.load_sd15(tiny_models_root / "sd15").unet(lat, 300, encoder_hidden_states=text).sample
    assert (expected - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # strict: a file short of one LoRA tensor is refused (diffusers would load the rest)
    state = {"image_proj": proj.state_dict(), "ip_adapter": layers.state_dict()}
    del state["ip_adapter"]["2.to_v_lora.up.weight"]
    torch.save(state, tmp_path / "short.bin")
    fresh = models.load_sd15(tiny_models_root / "sd15")
    with pytest.raises(models.ModelCorruptError, match=r"missing keys: ip_adapter\.2\.to_v_lora\.up\.weight"):
        models.load_ip_adapter_faceid(fresh.unet, tmp_path / "short.bin")


def test_mvdream_reference_unet_loads_into_our_module_and_agrees(tmp_path):
    """ldm UNetModel (SD2.1 settings) + camera_embed, in ashawkey's folder layout: load_mvdream
    accepts it strictly and backend/guidance/mvdream_unet.py computes what the reference does
    (one view, no camera: the multi-view attention is then plain self-attention)."""
    from backend.guidance.mvdream_unet import MultiViewUNet

    folder, unet_ref = ref.save_mvdream_reference(tmp_path / "mvdream")
    parts = models.load_mvdream(folder)
    assert "use_linear_in_transformer" not in parts.unet_config  # ashawkey's converter drops it
    ours = MultiViewUNet.from_config(parts.unet_config)
    ours.load_state_dict(parts.unet_state_dict, strict=True)
    torch.manual_seed(4)
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32), torch.tensor([500])
    with torch.no_grad():
        expected = unet_ref(x, t, context=ctx)
        got = ours.eval()(x, t, ctx, camera=None, num_frames=1)
    assert expected.abs().mean() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # with a camera, MVDream adds camera_embed(camera) to the time embedding (ashawkey mv_unet.py
    # MultiViewUNetModel.forward, line 985): the reference UNet is given that sum
    cam = torch.randn(1, 16)

    class TimeAndCamera(torch.nn.Module):
        def __init__(self, time_embed: torch.nn.Module, camera_embed: torch.nn.Module):
            super().__init__()
            self.time_embed, self.camera_embed = time_embed, camera_embed

        def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
            return self.time_embed(t_emb) + self.camera_embed(cam)

    plain_time_embed = unet_ref.time_embed
    unet_ref.time_embed = TimeAndCamera(plain_time_embed, unet_ref.camera_embed)
    with torch.no_grad():
        expected_cam = unet_ref(x, t, context=ctx)
        got_cam = ours(x, t, ctx, camera=cam, num_frames=1)
    unet_ref.time_embed = plain_time_embed
    assert (expected_cam - expected).abs().max() > 1e-4
    torch.testing.assert_close(got_cam, expected_cam, atol=1e-4, rtol=1e-4)
    # strict: an extra key in unet/ is refused before loading
    from safetensors.torch import load_file, save_file

    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state["label_emb.0.weight"] = torch.zeros(4, 4)
    save_file(state, str(f))
    with pytest.raises(models.ModelCorruptError, match="unexpected keys: label_emb.0.weight"):
        models.load_mvdream(folder)


def test_diffusers_folders_are_loaded_strictly(tmp_path, tiny_models_root):
    """from_pretrained only warns about a missing or an unexpected key (and leaves the missing
    one random): our loaders refuse both, for each diffusers-layout model."""
    import shutil

    from safetensors.torch import load_file, save_file

    cases = [
        ("sd15", "text_encoder/model.fp16.safetensors", models.load_sd15),
        ("sd15", "vae/diffusion_pytorch_model.fp16.safetensors", models.load_sd15),
        ("controlnet_face", "diffusion_sd15/diffusion_pytorch_model.safetensors", models.load_controlnet),
        ("taesd", "diffusion_pytorch_model.safetensors", models.load_taesd),
    ]
    for i, (name, rel, loader) in enumerate(cases):
        folder = tmp_path / f"{name}{i}"
        shutil.copytree(tiny_models_root / name, folder)
        state = load_file(str(folder / rel))
        dropped = sorted(state)[0]
        save_file({k: v for k, v in state.items() if k != dropped}, str(folder / rel))
        with pytest.raises(models.ModelCorruptError, match="1 missing keys") as exc:
            loader(folder)
        assert f"--only {name}" in exc.value.hint, exc.value
        save_file(dict(state, **{"extra.weight": torch.zeros(1)}), str(folder / rel))
        with pytest.raises(models.ModelCorruptError, match=r"1 unexpected keys: (text_model\.)?extra\.weight"):
            loader(folder)


def test_clip_vit_l14_layout_and_strict_load(tmp_path):
    """openai/clip-vit-large-patch14 (eval's CLIP): ``CLIPModel`` keys (older transformers also
    saved ``*.embeddings.position_ids``, which are ignored), and load_clip refuses a file short
    of a key that from_pretrained would fill with random values."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPModel

    from backend.testing import save_tiny_clip

    cfg = {  # openai/clip-vit-large-patch14 config.json: text 768 x 12, vision 1024 x 24, patch 14, projection 768
        "projection_dim": 768,
        "text_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },  # fmt: skip
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
        },  # fmt: skip
    }
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**cfg))
    _assert_same(_shapes(model), L.clip_shapes(cfg))
    assert L.clip_shapes(cfg)["vision_model.embeddings.position_embedding.weight"] == (257, 1024)
    folder = save_tiny_clip(tmp_path / "clip")
    f = folder / "model.safetensors"
    state = load_file(str(f))
    state["vision_model.embeddings.position_ids"] = torch.arange(5)[None]  # as older saves have it
    save_file(state, str(f))
    models.load_clip(folder)
    state.pop("visual_projection.weight")
    save_file(state, str(f))
    with pytest.raises(models.ModelCorruptError, match="1 missing keys: visual_projection.weight"):
        models.load_clip(folder)


def test_sd15_folder_with_pre_0_14_vae_attention_names(tmp_path, tiny_models_root):
    """VAE files saved by diffusers before 0.14 name the mid-block attention query/key/value/
    proj_attn; diffusers still renames them on load (ModelMixin._fix_state_dict_keys_on_load),
    so the probe accepts them too, and the loaded VAE is the same."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sd15"
    shutil.copytree(tiny_models_root / "sd15", folder)
    f = folder / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    state = load_file(str(f))
    legacy = {}
    for k, v in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in legacy and legacy.keys() != state.keys()
    save_file(legacy, str(f))
    probes.probe_sd15_folder(folder)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        a = models.load_sd15(folder).vae.decode(z).sample
        b = models.load_sd15(tiny_models_root / "sd15").vae.decode(z).sample
    torch.testing.assert_close(a, b)
