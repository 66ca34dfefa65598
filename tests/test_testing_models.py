"""backend.testing: the tiny models keep the public weights' structure (names, keys, shapes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backend import testing


def test_tiny_tokenizer_is_generated_and_behaves_like_clip(tmp_path):
    from transformers import CLIPTokenizer

    folder = testing.save_tiny_clip_tokenizer(tmp_path / "tokenizer")
    assert {p.name for p in folder.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    tok = CLIPTokenizer.from_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    ids = tok(
        ["the portrait photo of Zoë, ☃ style", ""],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    assert ids.shape == (2, 77)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert ids[0, 0] == bos and ids[1, 0] == bos and ids[1, 1] == eos
    assert ids[0, 1] == vocab["the</w>"] and ids[0, 2] == vocab["portrait</w>"]  # merges apply
    assert int(ids.max()) < len(vocab)  # any text (accents, symbols) falls back to byte tokens


def test_ip_adapter_state_dict_layout():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**testing.tiny_unet_kwargs())
    sd = testing.tiny_ip_adapter_state_dict(unet)
    assert set(sd) == {"image_proj", "ip_adapter"}
    assert set(sd["image_proj"]) == {
        "proj.0.weight",
        "proj.0.bias",
        "proj.2.weight",
        "proj.2.bias",
        "norm.weight",
        "norm.bias",
    }
    C = unet.config.cross_attention_dim
    assert sd["image_proj"]["proj.0.weight"].shape == (1024, 512)  # the real first layer
    assert sd["image_proj"]["proj.2.weight"].shape == (4 * C, 1024) and sd["image_proj"]["norm.weight"].shape == (C,)
    names = list(unet.attn_processors)
    n = len(names)
    ip = sd["ip_adapter"]
    assert n == 8 and {int(k.split(".")[0]) for k in ip} == set(range(n))
    for i, name in enumerate(names):
        is_cross = name.endswith("attn2.processor")
        assert is_cross == (i % 2 == 1)
        assert (f"{i}.to_k_ip.weight" in ip) == is_cross
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            assert ip[f"{i}.{proj}_lora.down.weight"].shape[0] == testing.TINY_LORA_RANK
    assert ip["1.to_k_ip.weight"].shape == (16, C)  # down block 0: width 16
    assert ip["7.to_v_ip.weight"].shape == (32, C)  # mid block: width 32 (last)
    assert ip["1.to_k_lora.down.weight"].shape[1] == C  # cross-attention LoRA reads the text width
    assert ip["0.to_k_lora.down.weight"].shape[1] == 16  # self-attention LoRA reads the hidden width


def test_mvdream_state_dict_follows_the_ldm_layout():
    cfg = testing.TINY_MVDREAM_UNET_CONFIG
    shapes = testing.mvdream_unet_shapes(cfg)
    tops = {k.split(".")[0] for k in shapes}
    assert tops == {"time_embed", "camera_embed", "input_blocks", "middle_block", "output_blocks", "out"}
    C, E = cfg["model_channels"], 4 * cfg["model_channels"]
    assert shapes["time_embed.0.weight"] == (E, C) and shapes["camera_embed.0.weight"] == (E, 16)
    assert shapes["camera_embed.2.weight"] == (E, E)
    assert {k.split(".")[1] for k in shapes if k.startswith("middle_block")} == {"0", "1", "2"}
    assert {k.split(".")[1] for k in shapes if k.startswith("out.")} == {"0", "2"}
    # level 0 has attention (rate 1), level 1 does not; a downsample op between them
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in shapes
    assert "input_blocks.2.0.op.weight" in shapes and not any(k.startswith("input_blocks.3.1.") for k in shapes)
    assert shapes["input_blocks.3.0.skip_connection.weight"] == (2 * C, C, 1, 1)
    tb = "middle_block.1.transformer_blocks.0"
    assert shapes[f"{tb}.attn2.to_k.weight"] == (2 * C, cfg["context_dim"])  # text cross-attention
    assert f"{tb}.attn1.to_q.bias" not in shapes and f"{tb}.attn1.to_out.0.bias" in shapes
    assert shapes[f"{tb}.ff.net.0.proj.weight"] == (2 * 4 * 2 * C, 2 * C)  # GEGLU
    assert shapes["middle_block.1.proj_in.weight"] == (2 * C, 2 * C)  # linear proj_in
    assert "output_blocks.1.1.conv.weight" in shapes  # upsample at the end of level 1
    assert shapes["out.2.weight"] == (cfg["out_channels"], C, 3, 3)
    sd = testing.tiny_mvdream_unet_state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == shapes
    assert sum(v.numel() for v in sd.values()) < 2_000_000


def test_real_mvdream_config_gives_the_real_key_count():
    """Sanity check of the enumerator at full size: SD2.1's LDM UNet has 686 tensors; MVDream
    adds 4 (camera_embed.{0,2}.{weight,bias})."""
    real = dict(
        testing.TINY_MVDREAM_UNET_CONFIG,
        model_channels=320,
        channel_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attention_resolutions=[4, 2, 1],
        num_head_channels=64,
        context_dim=1024,
    )
    shapes = testing.mvdream_unet_shapes(real)
    assert len(shapes) == 686 + 4
    assert shapes["camera_embed.0.weight"] == (1280, 16)
    assert shapes["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    assert 860e6 < n_params < 870e6  # 1.74 GB in fp16


def test_tiny_models_are_deterministic():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**testing.tiny_unet_kwargs())
    a, b = testing.tiny_ip_adapter_state_dict(unet), testing.tiny_ip_adapter_state_dict(unet)
    for k in a["ip_adapter"]:
        torch.testing.assert_close(a["ip_adapter"][k], b["ip_adapter"][k])
    ma, mb = testing.tiny_mvdream_unet_state_dict(), testing.tiny_mvdream_unet_state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_sv3d_layout(tiny_sv3d_path):
    assert {p.name for p in tiny_sv3d_path.iterdir()} == {
        "unet",
        "vae",
        "image_encoder",
        "feature_extractor",
        "scheduler",
        "model_index.json",
    }
    cfg = json.loads((tiny_sv3d_path / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == "UNetSpatioTemporalConditionModel"
    assert (cfg["in_channels"], cfg["out_channels"]) == (8, 4)
    assert cfg["projection_class_embeddings_input_dim"] == testing.SV3D_VECTOR_DIMS["sv3d_u"] == 256
    assert cfg["num_frames"] == 21
    enc = json.loads((tiny_sv3d_path / "image_encoder" / "config.json").read_text())
    assert enc["projection_dim"] == cfg["cross_attention_dim"]


def test_insightface_pack_signatures(tiny_models_root):
    import onnxruntime as ort

    folder = tiny_models_root / "insightface" / "models" / "buffalo_l"
    assert sorted(p.name for p in folder.glob("*.onnx")) == list(testing.INSIGHTFACE_PACK_FILES)

    def sig(name):
        s = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        return s.get_inputs()[0].name, s.get_inputs()[0].shape, [o.shape for o in s.get_outputs()], s

    name, shape, outs, det = sig("det_10g.onnx")
    assert name == "input.1" and shape == [1, 3, 640, 640] and len(outs) == 9
    res = det.run(None, {"input.1": np.zeros((1, 3, 640, 640), np.float32)})
    cells = [(640 // s) ** 2 * 2 for s in (8, 16, 32)]
    assert [r.shape for r in res] == [(c, 1) for c in cells] + [(c, 4) for c in cells] + [(c, 10) for c in cells]
    assert (res[2] > 0.5).sum() == 1 and (res[0] > 0.5).sum() == 0 and (res[1] > 0.5).sum() == 0
    assert sig("2d106det.onnx")[:3] == ("data", [1, 3, 192, 192], [[1, 212]])
    assert sig("1k3d68.onnx")[:3] == ("data", [1, 3, 192, 192], [[1, 3309]])
    assert sig("genderage.onnx")[:3] == ("data", [1, 3, 96, 96], [[1, 3]])
    assert sig("w600k_r50.onnx")[:3] == ("input.1", [1, 3, 112, 112], [[1, 512]])


@pytest.mark.parametrize("name", testing.TINY_ROOT_MODELS)
def test_tiny_root_is_seen_as_installed(tiny_models_root, name):
    from backend import models

    (status,) = models.check([name], root=tiny_models_root)
    assert status.present and status.problem == "" and status.size_on_disk > 0
