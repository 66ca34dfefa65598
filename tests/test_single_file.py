"""The model files users already have: single-file overrides, the shipped CLIP tokenizer,
``models link`` over A1111/ComfyUI trees, and an honest ``models check`` / submit-time check.

Multi-GB checkpoints are written as sparse ``.safetensors`` files: a real header from the
reference modules' full-size layout (ldm, transformers, tencent-ailab's IP-Adapter on the meta
device) and no data, which is all the header-level probes and ``models link`` read.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend import models
from backend.errors import ModelMissingError
from backend.models import clip_tokenizer, single_file
from backend.models import probe as probes
from backend.testing import reference as ref


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("PORTRAITSPLAT_MODEL"):
            monkeypatch.delenv(key)


# --- the shipped tokenizer ---------------------------------------------------------------------

#: apple/ml-stable-diffusion swift/StableDiffusionTests/StableDiffusionTests.swift, testBPETokenizer
#: (SD's vocab.json/merges.txt): prompt -> input ids, recorded there from the real tokenizer.
APPLE_IDS = {
    "a photo of an astronaut riding a horse on mars": [
        49406,
        320,
        1125,
        539,
        550,
        18376,
        6765,
        320,
        4558,
        525,
        7496,
        49407,
    ],  # fmt: skip
    "Apple CoreML developer tools on a Macbook Air are fast": [
        49406,
        3055,
        19622,
        5780,
        10929,
        5771,
        525,
        320,
        20617,
        1922,
        631,
        1953,
        49407,
    ],  # fmt: skip
}
PROMPTS = [
    "a 3D cartoon style portrait",
    "An oil painting of a woman, Studio Ghibli style!!",
    "portrait of a man with glasses, 35mm, f/1.8, bokeh",
    "pixar-style 3d render of grace hopper (smiling)",
    "café  au lait  —  naïve   watercolour",
]


@pytest.fixture(scope="module")
def shipped_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer.tokenizer_dir())


def test_shipped_tokenizer_files_are_rebuilt_from_openai_bpe():
    lines = gzip.decompress(ref.clip_bpe_file().read_bytes()).decode("utf-8").split("\n")
    vocab, merges = clip_tokenizer.build_vocab(lines)
    shipped_vocab = json.loads(gzip.decompress((clip_tokenizer.TOKENIZER_DIR / "vocab.json.gz").read_bytes()))
    shipped_merges = gzip.decompress((clip_tokenizer.TOKENIZER_DIR / "merges.txt.gz").read_bytes()).decode().split("\n")
    assert shipped_vocab == vocab and len(vocab) == 49408
    assert shipped_merges[0] == "#version: 0.2" and shipped_merges[1:-1] == merges and len(merges) == 48894
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert (clip_tokenizer.TOKENIZER_DIR / "LICENSE-CLIP.txt").read_text().count("MIT License") == 1


def test_shipped_tokenizer_gives_the_real_clip_ids(shipped_tokenizer):
    for prompt, ids in APPLE_IDS.items():
        assert shipped_tokenizer(prompt).input_ids == ids
    assert shipped_tokenizer("a 3D cartoon style portrait").input_ids == [49406, 320, 274, 323, 7651, 1844, 5352, 49407]
    simple = ref.clip_simple_tokenizer()  # OpenAI's own tokenizer code
    for prompt in PROMPTS + list(APPLE_IDS):
        assert shipped_tokenizer(prompt).input_ids == [49406, *simple.encode(prompt), 49407], prompt
    padded = shipped_tokenizer("a photo", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74


# --- single files through the override -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Tiny SD1.5 (.safetensors and .ckpt) and ControlNet single files from the reference modules,
    and the tiny configs that describe them."""
    d = tmp_path_factory.mktemp("single")
    cfg = ref.tiny_sd15_config_dir(d / "cfg_sd15")
    cn_cfg = ref.tiny_controlnet_config_dir(d / "cfg_cn")
    unet, ae = ref.ldm_unet(), ref.ldm_autoencoder()
    state = ref.sd15_single_file_state(unet, ae, ref.clip_text_model(cfg))
    cn = {"control_model." + k: v for k, v in ref.cldm_controlnet_state(unet).items()}
    return {
        "cfg": cfg,
        "cn_cfg": cn_cfg,
        "safetensors": ref.save_file_state(
            state, d / "a1111" / "models" / "Stable-diffusion" / "tiny-v1-5.safetensors"
        ),
        "ckpt": ref.save_file_state(state, d / "a1111" / "models" / "Stable-diffusion" / "tiny-v1-5.ckpt"),
        "controlnet": ref.save_file_state(
            cn, d / "a1111" / "models" / "ControlNet" / "control_sd15_mediapipe_face.safetensors"
        ),  # fmt: skip
    }


@pytest.fixture
def tiny_configs_are_sd15(monkeypatch, tiny_files):
    """Make the tiny configs the shipped SD1.5 ones, so a tiny file stands in for a real one."""
    monkeypatch.setattr(probes, "SD15_CONFIG_DIR", tiny_files["cfg"])
    monkeypatch.setattr(probes, "CONTROLNET_CONFIG_DIR", tiny_files["cn_cfg"])
    monkeypatch.setattr(single_file, "SD15_CONFIG_DIR", tiny_files["cfg"])
    monkeypatch.setattr(single_file, "CONTROLNET_CONFIG_DIR", tiny_files["cn_cfg"])


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_env_override_to_a_single_file_loads_with_no_hub(
    monkeypatch, tmp_path, tiny_files, tiny_configs_are_sd15, kind
):
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path))
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_SD15", str(tiny_files[kind]))
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_CONTROLNET_FACE", str(tiny_files["controlnet"]))
    assert models.model_path("sd15") == tiny_files[kind]
    status = {s.name: s for s in models.check(["sd15", "controlnet_face"])}
    assert status["sd15"].present and status["sd15"].origin == "env", status["sd15"].problem
    assert status["controlnet_face"].present and status["sd15"].size_on_disk == tiny_files[kind].stat().st_size
    sd = models.load_sd15()
    net = models.load_controlnet()
    assert sd.path == tiny_files[kind] and sd.unet.config.cross_attention_dim == net.config.cross_attention_dim == 32
    with torch.no_grad():
        emb = sd.text_encoder(sd.tokenizer(["a portrait"], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]  # fmt: skip
        down, mid = net(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=emb, controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)  # fmt: skip
        out = sd.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample  # fmt: skip
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    half = models.load_sd15(dtype=torch.bfloat16)
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype == torch.bfloat16
    assert models.load_controlnet(dtype=torch.bfloat16).dtype == torch.bfloat16


def test_a_pickle_that_runs_code_is_refused_not_executed(tmp_path, tiny_files, tiny_configs_are_sd15):
    state = {k: v for k, v in single_file.read_state_dict(tiny_files["safetensors"]).items()}
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "callbacks": print}, path)  # a global that is not a tensor type
    with pytest.raises(models.ModelCorruptError, match="not weights-only") as exc:
        models.load_sd15(path)
    assert ".safetensors" in exc.value.hint
    with pytest.raises(models.ModelCorruptError, match="weights_only"):
        single_file.read_state_dict(path, "sd15")


def test_a_file_where_a_folder_is_needed_is_missing_with_the_reason(tmp_path, monkeypatch):
    f = tmp_path / "mvdream.safetensors"
    ref.write_sparse_safetensors(f, {"x": (1,)})
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_MVDREAM", str(f))
    with pytest.raises(ModelMissingError, match="must be a folder, not a file"):
        models.model_path("mvdream", tmp_path)
    monkeypatch.setenv("PORTRAITSPLAT_MODEL_SD15", str(tmp_path / "model.pt"))
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ModelMissingError, match=r"must be a \.safetensors or \.ckpt file"):
        models.model_path("sd15", tmp_path)


# --- an honest check ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_sd15_shapes():
    return ref.sd15_reference_shapes()


def test_check_calls_a_wrong_or_damaged_file_broken_with_reason_and_fix(
    tmp_path, monkeypatch, capsys, full_sd15_shapes
):
    from backend.cli import main

    root = tmp_path / "root"
    root.mkdir()
    good = ref.write_sparse_safetensors(tmp_path / "v1-5-pruned-emaonly.safetensors", full_sd15_shapes)
    sdxl = ref.write_sparse_safetensors(
        tmp_path / "sd_xl_base_1.0.safetensors",
        {
            "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "conditioner.embedders.1.model.ln_final.weight": (1280,),
        },  # fmt: skip
    )
    inpaint = dict(full_sd15_shapes, **{"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)})
    inpaint_file = ref.write_sparse_safetensors(tmp_path / "sd-v1-5-inpainting.safetensors", inpaint)
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(root))
    for path, expect in ((good, None), (sdxl, "SDXL-style checkpoint (conditioner.embedders), not SD1.5"), (inpaint_file, "input_blocks.0.0.weight [320, 9, 3, 3] (expected [320, 4, 3, 3])")):  # fmt: skip
        (root / "models.toml").write_text(f'[paths]\nsd15 = "{path}"\n')
        (status,) = models.check(["sd15"])
        if expect is None:
            assert status.present and status.origin == "config", status.problem
            continue
        assert not status.present and expect in status.problem and str(path) in status.problem
        assert main(["models", "check", "--only", "sd15"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("sd15 "))
        assert "BROKEN" in line and "python -m backend models download --only sd15" in line and expect in line
        with pytest.raises(models.ModelCorruptError, match="do not fit their loader") as exc:
            models.ensure_models("stylize", names=["sd15"])
        assert exc.value.hint.startswith("Run: python -m backend models download --only sd15")
    # a truncated copy: the header promises more bytes than the file has
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:4096])
    (root / "models.toml").write_text(f'[paths]\nsd15 = "{cut}"\n')
    (status,) = models.check(["sd15"])
    assert not status.present and ("truncated" in status.problem or "cut off" in status.problem)
    assert models.check(["sd15"], verify=False)[0].present  # --no-verify only looks for the file


def test_ensure_models_reports_missing_and_broken_together(tmp_path, tiny_models_root):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(tiny_models_root / "taesd", root / "taesd")
    from safetensors.torch import load_file, save_file

    f = root / "taesd" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state.pop(sorted(state)[-1])
    save_file(state, str(f))
    with pytest.raises(ModelMissingError) as exc:
        models.ensure_models("stylize", root, names=["sd15", "taesd"])
    assert "sd15, taesd" in exc.value.message and "1 missing keys" in exc.value.message
    assert exc.value.hint.startswith("Run: python -m backend models download --only sd15 taesd")


def test_probes_need_no_torch(tiny_models_root, full_sd15_shapes, tmp_path):
    """The server calls ensure_models at submit time and must not import torch."""
    big = ref.write_sparse_safetensors(tmp_path / "v1-5.safetensors", full_sd15_shapes)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from backend import models\n"
        f"root = Path({str(tiny_models_root)!r})\n"
        "assert all(s.present for s in models.check(['sd15', 'ip_adapter_faceid', 'controlnet_face', 'mvdream', 'taesd'], root=root)), [s.problem for s in models.check(root=root)]\n"  # fmt: skip
        "models.ensure_models('stylize', root, names=['sd15', 'ip_adapter_faceid', 'controlnet_face', 'mvdream', 'taesd'])\n"  # fmt: skip
        f"models.probe.probe('sd15', Path({str(big)!r}))\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAITSPLAT_MODEL")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


# --- models link --------------------------------------------------------------------------------


def _comfy_tree(base: Path, full_sd15_shapes) -> Path:
    """A ComfyUI models/ folder: what is linkable and what is not, as those tools store it."""
    from diffusers import UNet2DConditionModel

    m = base / "ComfyUI" / "models"
    ref.write_sparse_safetensors(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors", full_sd15_shapes)
    ref.write_sparse_safetensors(m / "checkpoints" / "dreamshaper_8.safetensors", full_sd15_shapes)
    ref.write_sparse_safetensors(
        m / "checkpoints" / "sd_xl_base_1.0.safetensors",
        {
            "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "conditioner.embedders.1.model.ln_final.weight": (1280,),
        },  # fmt: skip
    )
    with torch.device("meta"):
        unet = ref.ldm_unet(randomise=False, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], context_dim=768)  # fmt: skip
        sd15_unet = UNet2DConditionModel.from_config(json.loads((probes.SD15_CONFIG_DIR / "unet" / "config.json").read_text()))  # fmt: skip
        proj, layers = ref.ip_adapter_faceid_reference(sd15_unet, rank=128)
    cn = {"control_model." + k: tuple(v.shape) for k, v in ref.cldm_controlnet_state(unet).items()}
    ref.write_sparse_safetensors(m / "controlnet" / "control_v2p_sd15_mediapipe_face.safetensors", cn)
    ref.write_sparse_safetensors(m / "controlnet" / "control_v11p_sd15_canny.safetensors", cn)
    ipa = {"image_proj." + k: tuple(v.shape) for k, v in proj.state_dict().items()}
    ipa.update({"ip_adapter." + k: tuple(v.shape) for k, v in layers.state_dict().items()})
    ref.write_sparse_safetensors(m / "ipadapter" / "ip-adapter-faceid_sd15.safetensors", ipa)
    ref.write_sparse_safetensors(m / "loras" / "ip-adapter-faceid_sd15_lora.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (128, 320)})  # fmt: skip
    from backend.models import layouts as L

    taesd = {"encoder": {}, "decoder": {}}  # taesd.py's files (the mapping is checked in test_conformance)
    for key, shape in L.autoencoder_tiny_shapes({}).items():
        part, k = L.taesd_py_key(key)
        taesd[part][k] = shape
    ref.write_sparse_safetensors(m / "vae_approx" / "taesd_encoder.safetensors", taesd["encoder"], dtype="F32")
    ref.write_sparse_safetensors(m / "vae_approx" / "taesd_decoder.safetensors", taesd["decoder"], dtype="F32")
    ref.write_sparse_safetensors(m / "vae_approx" / "taesdxl_decoder.safetensors", {"0.weight": (64, 4, 3, 3), "1.conv.0.weight": (64, 64, 3, 3)})  # fmt: skip
    (m / "checkpoints" / "half_downloaded.safetensors").write_bytes(b"\x10\x00")
    return m


def test_models_link_recognises_a_comfyui_tree_by_layout(tmp_path, monkeypatch, capsys, full_sd15_shapes):
    from backend.cli import main

    comfy = _comfy_tree(tmp_path, full_sd15_shapes)
    root = tmp_path / "root"
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(root))
    assert main(["models", "link", "--from", str(comfy)]) == 0
    out = capsys.readouterr().out
    linked = {ln.split()[1]: ln.split()[2] for ln in out.splitlines() if ln.startswith("linked ")}
    assert linked == {
        "sd15": str(comfy / "checkpoints" / "v1-5-pruned-emaonly.safetensors"),
        "controlnet_face": str(comfy / "controlnet" / "control_v2p_sd15_mediapipe_face.safetensors"),
        "ip_adapter_faceid": str(comfy / "ipadapter" / "ip-adapter-faceid_sd15.safetensors"),
        "taesd": str(comfy / "vae_approx"),
    }
    skipped = {Path(ln.split(": ", 1)[0].split()[1]).name: ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("skipped ")}  # fmt: skip
    assert "also fits sd15" in skipped["dreamshaper_8.safetensors"]
    assert "SDXL" in skipped["sd_xl_base_1.0.safetensors"]
    assert "does not say MediaPipe face" in skipped["control_v11p_sd15_canny.safetensors"]
    assert "LoRA" in skipped["ip-adapter-faceid_sd15_lora.safetensors"]
    assert "unreadable" in skipped["half_downloaded.safetensors"]
    import tomllib

    paths = tomllib.loads((root / "models.toml").read_text())["paths"]
    assert paths == linked
    status = {s.name: s for s in models.check(["sd15", "controlnet_face", "ip_adapter_faceid", "taesd"])}
    assert all(s.present and s.origin == "config" for s in status.values()), {n: s.problem for n, s in status.items()}
    # a second run keeps what already works, and a config's other entries survive
    (root / "models.toml").write_text((root / "models.toml").read_text() + '\n[extra]\nnote = "kept"\n')
    assert main(["models", "link", "--from", str(comfy / "checkpoints")]) == 0
    assert "kept     sd15" not in capsys.readouterr().out  # the same file: linked again, not "kept"
    assert tomllib.loads((root / "models.toml").read_text())["extra"] == {"note": "kept"}


def test_models_link_on_an_a1111_tree_with_ckpt_and_keeps_a_working_model(tmp_path, monkeypatch, capsys, tiny_files, tiny_configs_are_sd15, tiny_models_root):  # fmt: skip
    import shutil

    from backend.cli import main

    a1111 = tiny_files["ckpt"].parents[2]  # .../a1111 with models/Stable-diffusion/*.ckpt and *.safetensors
    root = tmp_path / "root"
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(root))
    assert main(["models", "link", "--from", str(a1111), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "linked   sd15" in out
        and "tiny-v1-5.ckpt" in out + ""
        and "dry run" in out
        and not (root / "models.toml").exists()
    )
    shutil.copytree(tiny_models_root / "ip_adapter_faceid", root / "ip_adapter_faceid")
    shutil.copytree(tiny_models_root / "sd15", root / "sd15")  # a downloaded SD1.5 that works
    assert main(["models", "link", "--from", str(a1111)]) == 0
    out = capsys.readouterr().out
    assert "kept     sd15" in out and "--replace" in out
    assert "linked   controlnet_face" in out
    assert main(["models", "link", "--from", str(a1111), "--replace"]) == 0
    out = capsys.readouterr().out
    linked = next(ln for ln in out.splitlines() if ln.startswith("linked   sd15"))
    assert linked.split()[2].endswith(("tiny-v1-5.ckpt", "tiny-v1-5.safetensors"))
    assert models.model_path("sd15") == Path(linked.split()[2])
    sd = models.load_sd15()
    assert sd.path.suffix in (".ckpt", ".safetensors")


def test_models_link_finds_sv3d_in_a_checkpoints_folder(tmp_path, monkeypatch, capsys):
    """SV3D files sit beside SD checkpoints in ComfyUI; their SGM keys and vector width say which
    variant, and backend.models.sv3d.probe_sv3d (the SV3D loader's own check) confirms it."""
    sgm = pytest.importorskip("backend.testing.sv3d_sgm", reason="the SV3D single-file factory is not in this tree yet")
    pytest.importorskip("backend.models.sv3d").probe_sv3d  # noqa: B018 - fails the test if absent

    from backend.cli import main

    ckpts = tmp_path / "ComfyUI" / "models" / "checkpoints"
    ref.write_sparse_safetensors(ckpts / "sv3d_u.safetensors", sgm.sgm_shapes(sgm.SV3D_U), dtype="F32")
    ref.write_sparse_safetensors(ckpts / "my_sv3d_p_copy.safetensors", sgm.sgm_shapes(sgm.SV3D_P), dtype="F32")
    monkeypatch.setenv("PORTRAITSPLAT_MODELS", str(tmp_path / "root"))
    assert main(["models", "link", "--from", str(ckpts.parent)]) == 0
    out = capsys.readouterr().out
    assert f"linked   sv3d_u             {ckpts / 'sv3d_u.safetensors'}" in out
    assert f"linked   sv3d_p             {ckpts / 'my_sv3d_p_copy.safetensors'}" in out
    status = {s.name: s for s in models.check(["sv3d_u", "sv3d_p"])}
    assert all(s.present for s in status.values()), {n: s.problem for n, s in status.items()}
