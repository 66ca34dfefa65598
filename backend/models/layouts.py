"""Key layouts: every tensor name and shape a checkpoint must hold, computed from a config.

This module's one job is the *expectation* side of strict loading, in plain Python (no torch,
so the server process can run it): for each checkpoint layout our loaders read, a function
``config -> {key: shape}``, and :func:`compare` to hold a file's keys against it. The loaders
and the header-level probes (:mod:`.probe`) use the same functions, so ``models check`` calls a
file ready exactly when the loader accepts it. ``tests/test_conformance*.py`` hold every
function here against the reference implementation's own modules (diffusers, transformers,
the original ``ldm`` package, tencent-ailab's IP-Adapter) at tiny width and full size.

Layouts
    diffusers: :func:`unet2d_shapes` (``UNet2DConditionModel``), :func:`controlnet_shapes`
    (``ControlNetModel``), :func:`autoencoder_kl_shapes`, :func:`autoencoder_tiny_shapes`
    (TAESD); transformers: :func:`clip_text_shapes`, :func:`clip_shapes`;
    original LDM (CompVis/Stability ``openaimodel``/``model.py``, lllyasviel ``cldm``):
    :func:`ldm_unet_shapes` (also MVDream's multi-view UNet with ``camera_dim``),
    :func:`ldm_controlnet_shapes`, :func:`ldm_vae_shapes`, and :func:`sd15_single_file_shapes`
    (a whole SD1.5 ``.safetensors``/``.ckpt`` as A1111/ComfyUI keep it);
    IP-Adapter-FaceID: :func:`ip_adapter_faceid_shapes`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Shape = tuple[int, ...]
Shapes = dict[str, Shape]


# --- comparing -----------------------------------------------------------------------------


@dataclass
class LayoutDiff:
    """How a file's keys differ from a layout."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, found, expected

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 3) -> str:
        parts = []

        def few(keys: Sequence[str]) -> str:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys: {few(self.unexpected)}")
        if self.wrong_shape:
            shown = [f"{k} {list(f)} (expected {list(e)})" for k, f, e in self.wrong_shape]
            parts.append(f"{len(shown)} keys of the wrong shape: {few(shown)}")
        return "; ".join(parts)


def compare(found: Mapping[str, Shape], expected: Mapping[str, Shape], ignore: Iterable[str] = ()) -> LayoutDiff:
    """Hold ``found`` (a file's ``{key: shape}``) against ``expected``. Keys matching one of the
    ``ignore`` regular expressions (known harmless extras such as A1111's EMA copies) are
    neither required nor reported."""
    pats = [re.compile(p) for p in ignore]
    diff = LayoutDiff()
    for k in sorted(found):
        if k in expected:
            if tuple(found[k]) != tuple(expected[k]):
                diff.wrong_shape.append((k, tuple(found[k]), tuple(expected[k])))
        elif not any(p.fullmatch(k) for p in pats):
            diff.unexpected.append(k)
    diff.missing = sorted(k for k in expected if k not in found)
    return diff


def prefixed(prefix: str, shapes: Mapping[str, Shape]) -> Shapes:
    return {prefix + k: v for k, v in shapes.items()}


# --- small builders ----------------------------------------------------------------------


class _S(dict[str, Shape]):
    def lin(self, p: str, d_in: int, d_out: int, bias: bool = True) -> None:
        self[f"{p}.weight"] = (d_out, d_in)
        if bias:
            self[f"{p}.bias"] = (d_out,)

    def conv(self, p: str, c_in: int, c_out: int, k: int = 3, bias: bool = True) -> None:
        self[f"{p}.weight"] = (c_out, c_in, k, k)
        if bias:
            self[f"{p}.bias"] = (c_out,)

    def norm(self, p: str, c: int) -> None:
        self[f"{p}.weight"] = (c,)
        self[f"{p}.bias"] = (c,)


def _transformer(s: _S, p: str, c: int, ctx: int, *, linear: bool, depth: int = 1, inner: int | None = None) -> None:
    """A spatial transformer: the same names in LDM and diffusers (``Transformer2DModel``)."""
    inner = inner or c
    s.norm(f"{p}.norm", c)
    if linear:
        s.lin(f"{p}.proj_in", c, inner)
    else:
        s.conv(f"{p}.proj_in", c, inner, 1)
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for attn, kv in (("attn1", inner), ("attn2", ctx)):
            s.lin(f"{b}.{attn}.to_q", inner, inner, bias=False)
            s.lin(f"{b}.{attn}.to_k", kv, inner, bias=False)
            s.lin(f"{b}.{attn}.to_v", kv, inner, bias=False)
            s.lin(f"{b}.{attn}.to_out.0", inner, inner)
        s.lin(f"{b}.ff.net.0.proj", inner, 2 * 4 * inner)  # GEGLU
        s.lin(f"{b}.ff.net.2", 4 * inner, inner)
        for n in ("norm1", "norm2", "norm3"):
            s.norm(f"{b}.{n}", inner)
    if linear:
        s.lin(f"{p}.proj_out", inner, c)
    else:
        s.conv(f"{p}.proj_out", inner, c, 1)


# --- diffusers -----------------------------------------------------------------------------


def _d_resnet(s: _S, p: str, c_in: int, c_out: int, temb: int | None) -> None:
    s.norm(f"{p}.norm1", c_in)
    s.conv(f"{p}.conv1", c_in, c_out)
    if temb is not None:
        s.lin(f"{p}.time_emb_proj", temb, c_out)
    s.norm(f"{p}.norm2", c_out)
    s.conv(f"{p}.conv2", c_out, c_out)
    if c_in != c_out:
        s.conv(f"{p}.conv_shortcut", c_in, c_out, 1)


def _d_encoder_half(s: _S, cfg: Mapping) -> tuple[int, int]:
    """conv_in, time embedding, down blocks, mid block of a UNet/ControlNet; returns (E, last ch)."""
    chans = list(cfg["block_out_channels"])
    layers = int(cfg.get("layers_per_block", 2))
    ctx = int(cfg["cross_attention_dim"])
    linear = bool(cfg.get("use_linear_projection", False))
    E = 4 * chans[0]
    s.conv("conv_in", int(cfg.get("in_channels", 4)), chans[0], int(cfg.get("conv_in_kernel", 3)))
    s.lin("time_embedding.linear_1", chans[0], E)
    s.lin("time_embedding.linear_2", E, E)
    out = chans[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        c_in, out = out, chans[i]
        for j in range(layers):
            _d_resnet(s, f"down_blocks.{i}.resnets.{j}", c_in if j == 0 else out, out, E)
            if "CrossAttn" in kind:
                _transformer(s, f"down_blocks.{i}.attentions.{j}", out, ctx, linear=linear)
        if i < len(chans) - 1:
            s.conv(f"down_blocks.{i}.downsamplers.0.conv", out, out)
    last = chans[-1]
    _d_resnet(s, "mid_block.resnets.0", last, last, E)
    _transformer(s, "mid_block.attentions.0", last, ctx, linear=linear)
    _d_resnet(s, "mid_block.resnets.1", last, last, E)
    return E, last


def unet2d_shapes(cfg: Mapping) -> Shapes:
    """``diffusers.UNet2DConditionModel`` (SD1.x/2.x block types, no class or added embedding)."""
    s = _S()
    E, last = _d_encoder_half(s, cfg)
    chans = list(cfg["block_out_channels"])
    rev = list(reversed(chans))
    layers = int(cfg.get("layers_per_block", 2))
    ctx = int(cfg["cross_attention_dim"])
    linear = bool(cfg.get("use_linear_projection", False))
    prev = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        out = rev[i]
        skip_in = rev[min(i + 1, len(chans) - 1)]
        for j in range(layers + 1):
            res_skip = skip_in if j == layers else out
            res_in = prev if j == 0 else out
            _d_resnet(s, f"up_blocks.{i}.resnets.{j}", res_in + res_skip, out, E)
            if "CrossAttn" in kind:
                _transformer(s, f"up_blocks.{i}.attentions.{j}", out, ctx, linear=linear)
        if i < len(chans) - 1:
            s.conv(f"up_blocks.{i}.upsamplers.0.conv", out, out)
        prev = out
    s.norm("conv_norm_out", chans[0])
    s.conv("conv_out", chans[0], int(cfg.get("out_channels", 4)), int(cfg.get("conv_out_kernel", 3)))
    return dict(s)


def controlnet_shapes(cfg: Mapping) -> Shapes:
    """``diffusers.ControlNetModel``: the UNet's encoder half, the condition embedding, and a
    1x1 ``controlnet_down_blocks`` conv per skip plus ``controlnet_mid_block``."""
    s = _S()
    _E, last = _d_encoder_half(s, cfg)
    chans = list(cfg["block_out_channels"])
    layers = int(cfg.get("layers_per_block", 2))
    emb = list(cfg.get("conditioning_embedding_out_channels", (16, 32, 96, 256)))
    s.conv("controlnet_cond_embedding.conv_in", int(cfg.get("conditioning_channels", 3)), emb[0])
    for i in range(len(emb) - 1):
        s.conv(f"controlnet_cond_embedding.blocks.{2 * i}", emb[i], emb[i])
        s.conv(f"controlnet_cond_embedding.blocks.{2 * i + 1}", emb[i], emb[i + 1])
    s.conv("controlnet_cond_embedding.conv_out", emb[-1], chans[0])
    skips = [chans[0]]
    for i, c in enumerate(chans):
        skips += [c] * layers
        if i < len(chans) - 1:
            skips.append(c)
    for k, c in enumerate(skips):
        s.conv(f"controlnet_down_blocks.{k}", c, c, 1)
    s.conv("controlnet_mid_block", last, last, 1)
    return dict(s)


#: diffusers' pre-0.14 names of the VAE mid-block attention, which it still renames on load
#: (``ModelMixin._fix_state_dict_keys_on_load``); files saved back then (SD1.5's ``vae/``) have them.
LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_VAE_RE = re.compile(r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.")


def modern_vae_key(key: str) -> str:
    """``encoder.mid_block.attentions.0.query.weight`` -> ``...to_q.weight`` (others unchanged)."""
    return _LEGACY_VAE_RE.sub(lambda m: f"{m.group(1)}.{LEGACY_VAE_ATTENTION[m.group(2)]}.", key)


def autoencoder_kl_shapes(cfg: Mapping) -> Shapes:
    """``diffusers.AutoencoderKL`` (SD's VAE; current attention names)."""
    s = _S()
    chans = list(cfg["block_out_channels"])
    layers = int(cfg.get("layers_per_block", 2))
    z = int(cfg.get("latent_channels", 4))
    last = chans[-1]
    s.conv("encoder.conv_in", int(cfg.get("in_channels", 3)), chans[0])
    out = chans[0]
    for i in range(len(chans)):
        c_in, out = out, chans[i]
        for j in range(layers):
            _d_resnet(s, f"encoder.down_blocks.{i}.resnets.{j}", c_in if j == 0 else out, out, None)
        if i < len(chans) - 1:
            s.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out)

    def mid(p: str) -> None:
        _d_resnet(s, f"{p}.mid_block.resnets.0", last, last, None)
        s.norm(f"{p}.mid_block.attentions.0.group_norm", last)
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            s.lin(f"{p}.mid_block.attentions.0.{n}", last, last)
        _d_resnet(s, f"{p}.mid_block.resnets.1", last, last, None)

    mid("encoder")
    s.norm("encoder.conv_norm_out", last)
    s.conv("encoder.conv_out", last, 2 * z)
    s.conv("decoder.conv_in", z, last)
    mid("decoder")
    rev = list(reversed(chans))
    prev = rev[0]
    for i in range(len(chans)):
        out = rev[i]
        for j in range(layers + 1):
            _d_resnet(s, f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else out, out, None)
        if i < len(chans) - 1:
            s.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out)
        prev = out
    s.norm("decoder.conv_norm_out", chans[0])
    s.conv("decoder.conv_out", chans[0], int(cfg.get("out_channels", 3)))
    if cfg.get("use_quant_conv", True):
        s.conv("quant_conv", 2 * z, 2 * z, 1)
    if cfg.get("use_post_quant_conv", True):
        s.conv("post_quant_conv", z, z, 1)
    return dict(s)


def _tiny_block(s: _S, p: str, c_in: int, c_out: int) -> None:
    s.conv(f"{p}.conv.0", c_in, c_out)
    s.conv(f"{p}.conv.2", c_out, c_out)
    s.conv(f"{p}.conv.4", c_out, c_out)
    if c_in != c_out:
        s.conv(f"{p}.skip", c_in, c_out, 1, bias=False)


def autoencoder_tiny_shapes(cfg: Mapping) -> Shapes:
    """``diffusers.AutoencoderTiny`` (madebyollin/taesd): ``encoder.layers.N``/``decoder.layers.N``
    index a flat ``nn.Sequential`` whose parameter-free layers (ReLU, Upsample) count too."""
    s = _S()
    enc = list(cfg.get("encoder_block_out_channels", (64, 64, 64, 64)))
    dec = list(cfg.get("decoder_block_out_channels", (64, 64, 64, 64)))
    n_enc = list(cfg.get("num_encoder_blocks", (1, 3, 3, 3)))
    n_dec = list(cfg.get("num_decoder_blocks", (3, 3, 3, 1)))
    z = int(cfg.get("latent_channels", 4))
    n = 0
    for i, blocks in enumerate(n_enc):
        c = enc[i]
        if i == 0:
            s.conv(f"encoder.layers.{n}", int(cfg.get("in_channels", 3)), c)
        else:
            s.conv(f"encoder.layers.{n}", c, c, bias=False)
        n += 1
        for _ in range(blocks):
            _tiny_block(s, f"encoder.layers.{n}", c, c)
            n += 1
    s.conv(f"encoder.layers.{n}", enc[-1], z)
    s.conv("decoder.layers.0", z, dec[0])
    n = 2  # 1 is the activation
    for i, blocks in enumerate(n_dec):
        c = dec[i]
        final = i == len(n_dec) - 1
        for _ in range(blocks):
            _tiny_block(s, f"decoder.layers.{n}", c, c)
            n += 1
        if not final:
            n += 1  # Upsample
        s.conv(f"decoder.layers.{n}", c, int(cfg.get("out_channels", 3)) if final else c, bias=final)
        n += 1
    return dict(s)


def taesd_py_key(diffusers_key: str) -> tuple[str, str]:
    """madebyollin's taesd.py layout (``taesd_encoder.pth``/``taesd_decoder.pth``, ComfyUI's
    ``models/vae_approx/``) of an ``AutoencoderTiny`` key: ``("encoder"|"decoder", key)``. Its
    Encoder is the same ``nn.Sequential`` without the ``encoder.layers.`` prefix; its Decoder has a
    parameter-free ``Clamp`` first, so every index is diffusers' plus one (taesd.py lines 30-47)."""
    part, _, rest = diffusers_key.partition(".layers.")
    idx, _, tail = rest.partition(".")
    return part, f"{int(idx) + (1 if part == 'decoder' else 0)}.{tail}"


# --- transformers CLIP ---------------------------------------------------------------------


def _clip_encoder(s: _S, p: str, d: int, inter: int, layers: int) -> None:
    for i in range(layers):
        b = f"{p}.encoder.layers.{i}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s.lin(f"{b}.self_attn.{n}", d, d)
        s.norm(f"{b}.layer_norm1", d)
        s.lin(f"{b}.mlp.fc1", d, inter)
        s.lin(f"{b}.mlp.fc2", inter, d)
        s.norm(f"{b}.layer_norm2", d)


def clip_text_shapes(cfg: Mapping) -> Shapes:
    """``transformers.CLIPTextModel`` (SD1.5's and SD2.1's text encoders); ``cfg`` is its config.json."""
    s = _S()
    d = int(cfg.get("hidden_size", 512))
    s["text_model.embeddings.token_embedding.weight"] = (int(cfg.get("vocab_size", 49408)), d)
    s["text_model.embeddings.position_embedding.weight"] = (int(cfg.get("max_position_embeddings", 77)), d)
    _clip_encoder(s, "text_model", d, int(cfg.get("intermediate_size", 2048)), int(cfg.get("num_hidden_layers", 12)))
    s.norm("text_model.final_layer_norm", d)
    return dict(s)


def clip_shapes(cfg: Mapping) -> Shapes:
    """``transformers.CLIPModel`` (text + vision towers and their projections)."""
    text, vis = dict(cfg.get("text_config") or {}), dict(cfg.get("vision_config") or {})
    s = _S(clip_text_shapes(text))
    proj = int(cfg.get("projection_dim", 512))
    dv = int(vis.get("hidden_size", 768))
    patch, size = int(vis.get("patch_size", 32)), int(vis.get("image_size", 224))
    s["vision_model.embeddings.class_embedding"] = (dv,)
    s["vision_model.embeddings.patch_embedding.weight"] = (dv, int(vis.get("num_channels", 3)), patch, patch)
    s["vision_model.embeddings.position_embedding.weight"] = ((size // patch) ** 2 + 1, dv)
    s.norm("vision_model.pre_layrnorm", dv)
    _clip_encoder(s, "vision_model", dv, int(vis.get("intermediate_size", 3072)), int(vis.get("num_hidden_layers", 12)))
    s.norm("vision_model.post_layernorm", dv)
    s.lin("visual_projection", dv, proj, bias=False)
    s.lin("text_projection", int(text.get("hidden_size", 512)), proj, bias=False)
    s["logit_scale"] = ()
    return dict(s)


#: Buffers older transformers saved with CLIP weights; today's ``CLIPTextModel`` ignores them.
CLIP_POSITION_IDS = r"(.*\.)?embeddings\.position_ids"


# --- original LDM (openaimodel UNetModel, cldm ControlNet, AutoencoderKL) ---------------------


@dataclass(frozen=True)
class LdmUNet:
    """``ldm.modules.diffusionmodules.openaimodel.UNetModel`` arguments that decide its keys."""

    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    context_dim: int = 768
    in_channels: int = 4
    out_channels: int = 4
    use_linear_in_transformer: bool = False
    transformer_depth: int = 1
    camera_dim: int | None = None  # MVDream's camera MLP

    @classmethod
    def from_diffusers(cls, cfg: Mapping) -> LdmUNet:
        """The LDM arguments of a diffusers ``UNet2DConditionModel``/``ControlNetModel`` config."""
        chans = list(cfg["block_out_channels"])
        return cls(
            model_channels=chans[0],
            channel_mult=tuple(c // chans[0] for c in chans),
            num_res_blocks=int(cfg.get("layers_per_block", 2)),
            attention_resolutions=tuple(2**i for i, t in enumerate(cfg["down_block_types"]) if "CrossAttn" in t),
            context_dim=int(cfg["cross_attention_dim"]),
            in_channels=int(cfg.get("in_channels", 4)),
            out_channels=int(cfg.get("out_channels", 4)),
            use_linear_in_transformer=bool(cfg.get("use_linear_projection", False)),
        )

    @classmethod
    def from_ldm(cls, cfg: Mapping) -> LdmUNet:
        """From LDM ``unet_config.params`` (MVDream's ``unet/config.json`` holds them too).
        MVDream's transformer always has linear projections (ashawkey's converter drops the
        ``use_linear_in_transformer`` key from the config it writes), hence the default True
        when ``camera_dim`` is set."""
        camera = cfg.get("camera_dim")
        return cls(
            model_channels=int(cfg["model_channels"]),
            channel_mult=tuple(int(m) for m in cfg["channel_mult"]),
            num_res_blocks=int(cfg["num_res_blocks"]),
            attention_resolutions=tuple(int(a) for a in cfg["attention_resolutions"]),
            context_dim=int(cfg["context_dim"]),
            in_channels=int(cfg["in_channels"]),
            out_channels=int(cfg["out_channels"]),
            use_linear_in_transformer=bool(cfg.get("use_linear_in_transformer", camera is not None)),
            transformer_depth=int(cfg.get("transformer_depth", 1)),
            camera_dim=None if camera is None else int(camera),
        )


def _ldm_resblock(s: _S, p: str, c_in: int, c_out: int, E: int) -> None:
    s.norm(f"{p}.in_layers.0", c_in)
    s.conv(f"{p}.in_layers.2", c_in, c_out)
    s.lin(f"{p}.emb_layers.1", E, c_out)
    s.norm(f"{p}.out_layers.0", c_out)
    s.conv(f"{p}.out_layers.3", c_out, c_out)
    if c_in != c_out:
        s.conv(f"{p}.skip_connection", c_in, c_out, 1)


def _ldm_encoder_half(s: _S, u: LdmUNet) -> tuple[list[int], int, int]:
    """time_embed, [camera_embed], input_blocks, middle_block; returns (skip chans, ch, ds)."""
    C, E = u.model_channels, 4 * u.model_channels
    s.lin("time_embed.0", C, E)
    s.lin("time_embed.2", E, E)
    if u.camera_dim is not None:
        s.lin("camera_embed.0", u.camera_dim, E)
        s.lin("camera_embed.2", E, E)
    s.conv("input_blocks.0.0", u.in_channels, C)
    chans, ch, ds, n = [C], C, 1, 1

    def transformer(p: str, c: int) -> None:
        _transformer(s, p, c, u.context_dim, linear=u.use_linear_in_transformer, depth=u.transformer_depth)

    for level, mult in enumerate(u.channel_mult):
        for _ in range(u.num_res_blocks):
            _ldm_resblock(s, f"input_blocks.{n}.0", ch, mult * C, E)
            ch = mult * C
            if ds in u.attention_resolutions:
                transformer(f"input_blocks.{n}.1", ch)
            chans.append(ch)
            n += 1
        if level != len(u.channel_mult) - 1:
            s.conv(f"input_blocks.{n}.0.op", ch, ch)
            chans.append(ch)
            ds *= 2
            n += 1
    _ldm_resblock(s, "middle_block.0", ch, ch, E)
    transformer("middle_block.1", ch)
    _ldm_resblock(s, "middle_block.2", ch, ch, E)
    return chans, ch, ds


def ldm_unet_shapes(u: LdmUNet) -> Shapes:
    """``openaimodel.UNetModel`` with a spatial transformer (no class embedding), keys without
    the ``model.diffusion_model.`` prefix; with ``camera_dim`` it is MVDream's
    ``MultiViewUNetModel`` (same keys plus ``camera_embed.{0,2}``)."""
    s = _S()
    chans, ch, ds = _ldm_encoder_half(s, u)
    C, E = u.model_channels, 4 * u.model_channels
    n = 0
    for level, mult in reversed(list(enumerate(u.channel_mult))):
        for i in range(u.num_res_blocks + 1):
            _ldm_resblock(s, f"output_blocks.{n}.0", ch + chans.pop(), mult * C, E)
            ch = mult * C
            k = 1
            if ds in u.attention_resolutions:
                _transformer(
                    s,
                    f"output_blocks.{n}.1",
                    ch,
                    u.context_dim,
                    linear=u.use_linear_in_transformer,
                    depth=u.transformer_depth,
                )
                k = 2
            if level and i == u.num_res_blocks:
                s.conv(f"output_blocks.{n}.{k}.conv", ch, ch)
                ds //= 2
            n += 1
    s.norm("out.0", ch)
    s.conv("out.2", C, u.out_channels)
    return dict(s)


#: cldm's ``input_hint_block``: (index, c_in, c_out) of its convolutions (SiLUs between them),
#: lllyasviel/ControlNet cldm/cldm.py lines 147-163; c_out None = ``model_channels``.
_HINT_CONVS = ((0, None, 16), (2, 16, 16), (4, 16, 32), (6, 32, 32), (8, 32, 96), (10, 96, 96), (12, 96, 256))


def ldm_controlnet_shapes(u: LdmUNet, hint_channels: int = 3) -> Shapes:
    """lllyasviel's ``cldm.ControlNet`` (keys without the ``control_model.`` prefix): the UNet's
    ``time_embed``/``input_blocks``/``middle_block``, the ``input_hint_block`` convs, one 1x1
    ``zero_convs.N.0`` per input block and ``middle_block_out.0``."""
    s = _S()
    chans, ch, _ds = _ldm_encoder_half(s, u)
    for idx, c_in, c_out in _HINT_CONVS:
        s.conv(f"input_hint_block.{idx}", hint_channels if c_in is None else c_in, c_out)
    s.conv("input_hint_block.14", 256, u.model_channels)
    for k, c in enumerate(chans):
        s.conv(f"zero_convs.{k}.0", c, c, 1)
    s.conv("middle_block_out.0", ch, ch, 1)
    return dict(s)


@dataclass(frozen=True)
class LdmVae:
    """``ldm.models.autoencoder.AutoencoderKL`` ddconfig + embed_dim (attention only in the mid block)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3

    @classmethod
    def from_diffusers(cls, cfg: Mapping) -> LdmVae:
        chans = list(cfg["block_out_channels"])
        z = int(cfg.get("latent_channels", 4))
        return cls(
            ch=chans[0],
            ch_mult=tuple(c // chans[0] for c in chans),
            num_res_blocks=int(cfg.get("layers_per_block", 2)),
            z_channels=z,
            embed_dim=z,
            in_channels=int(cfg.get("in_channels", 3)),
            out_ch=int(cfg.get("out_channels", 3)),
        )


def _ldm_vae_resnet(s: _S, p: str, c_in: int, c_out: int) -> None:
    s.norm(f"{p}.norm1", c_in)
    s.conv(f"{p}.conv1", c_in, c_out)
    s.norm(f"{p}.norm2", c_out)
    s.conv(f"{p}.conv2", c_out, c_out)
    if c_in != c_out:
        s.conv(f"{p}.nin_shortcut", c_in, c_out, 1)


def ldm_vae_shapes(v: LdmVae) -> Shapes:
    """``Encoder``/``Decoder`` of ldm ``diffusionmodules/model.py`` plus AutoencoderKL's
    ``quant_conv``/``post_quant_conv`` (keys without the ``first_stage_model.`` prefix)."""
    s = _S()
    chans = [v.ch * m for m in v.ch_mult]
    last = chans[-1]

    def mid(p: str) -> None:
        _ldm_vae_resnet(s, f"{p}.mid.block_1", last, last)
        s.norm(f"{p}.mid.attn_1.norm", last)
        for n in ("q", "k", "v", "proj_out"):
            s.conv(f"{p}.mid.attn_1.{n}", last, last, 1)
        _ldm_vae_resnet(s, f"{p}.mid.block_2", last, last)

    s.conv("encoder.conv_in", v.in_channels, v.ch)
    c = v.ch
    for i, out in enumerate(chans):
        for j in range(v.num_res_blocks):
            _ldm_vae_resnet(s, f"encoder.down.{i}.block.{j}", c, out)
            c = out
        if i != len(chans) - 1:
            s.conv(f"encoder.down.{i}.downsample.conv", c, c)
    mid("encoder")
    s.norm("encoder.norm_out", last)
    s.conv("encoder.conv_out", last, 2 * v.z_channels)
    s.conv("decoder.conv_in", v.z_channels, last)
    mid("decoder")
    c = last
    for i in reversed(range(len(chans))):
        out = chans[i]
        for j in range(v.num_res_blocks + 1):
            _ldm_vae_resnet(s, f"decoder.up.{i}.block.{j}", c, out)
            c = out
        if i != 0:
            s.conv(f"decoder.up.{i}.upsample.conv", c, c)
    s.norm("decoder.norm_out", c)
    s.conv("decoder.conv_out", c, v.out_ch)
    s.conv("quant_conv", 2 * v.z_channels, 2 * v.embed_dim, 1)
    s.conv("post_quant_conv", v.embed_dim, v.z_channels, 1)
    return dict(s)


#: ldm ``DDPM.register_schedule`` buffers (ldm/models/diffusion/ddpm.py) and Lightning/A1111
#: extras found in SD1.x single files: harmless, never loaded.
SD_SINGLE_FILE_EXTRAS = (
    r"model_ema\..*",
    r"betas",
    r"alphas_cumprod",
    r"alphas_cumprod_prev",
    r"sqrt_alphas_cumprod",
    r"sqrt_one_minus_alphas_cumprod",
    r"log_one_minus_alphas_cumprod",
    r"sqrt_recip_alphas_cumprod",
    r"sqrt_recipm1_alphas_cumprod",
    r"posterior_variance",
    r"posterior_log_variance_clipped",
    r"posterior_mean_coef1",
    r"posterior_mean_coef2",
    r"logvar",
    r"scale_factor",
    r"cond_stage_model\.transformer\.text_model\.embeddings\.position_ids",
)
SD_UNET_PREFIX = "model.diffusion_model."
SD_VAE_PREFIX = "first_stage_model."
SD_TEXT_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."


def sd15_single_file_shapes(unet_cfg: Mapping, vae_cfg: Mapping, text_cfg: Mapping) -> Shapes:
    """A whole SD1.x checkpoint as CompVis' LatentDiffusion saved it (and A1111/ComfyUI keep it):
    ``model.diffusion_model.*`` (UNetModel), ``first_stage_model.*`` (AutoencoderKL) and
    ``cond_stage_model.transformer.*`` (the ``CLIPTextModel`` FrozenCLIPEmbedder wraps), from the
    diffusers configs of the same model."""
    out = prefixed(SD_UNET_PREFIX, ldm_unet_shapes(LdmUNet.from_diffusers(unet_cfg)))
    out.update(prefixed(SD_VAE_PREFIX, ldm_vae_shapes(LdmVae.from_diffusers(vae_cfg))))
    out.update(prefixed(SD_TEXT_PREFIX, clip_text_shapes(text_cfg)))
    return out


# --- IP-Adapter-FaceID -----------------------------------------------------------------------


def unet_attn_processors(cfg: Mapping) -> list[tuple[str, int, bool]]:
    """``(name, hidden size, is cross-attention)`` of a ``UNet2DConditionModel``'s attention
    processors in ``unet.attn_processors`` order (down blocks, up blocks, then mid)."""
    chans = list(cfg["block_out_channels"])
    rev = list(reversed(chans))
    layers = int(cfg.get("layers_per_block", 2))
    out: list[tuple[str, int, bool]] = []

    def add(prefix: str, hidden: int) -> None:
        for a in ("attn1", "attn2"):
            out.append((f"{prefix}.transformer_blocks.0.{a}.processor", hidden, a == "attn2"))

    for i, kind in enumerate(cfg["down_block_types"]):
        if "CrossAttn" in kind:
            for j in range(layers):
                add(f"down_blocks.{i}.attentions.{j}", chans[i])
    for i, kind in enumerate(cfg["up_block_types"]):
        if "CrossAttn" in kind:
            for j in range(layers + 1):
                add(f"up_blocks.{i}.attentions.{j}", rev[i])
    add("mid_block.attentions.0", chans[-1])
    return out


def ip_adapter_faceid_shapes(
    processors: Sequence[tuple[str, int, bool]],
    cross_dim: int,
    rank: int,
    *,
    id_dim: int = 512,
    num_tokens: int = 4,
) -> Shapes:
    """``{"image_proj": MLPProjModel, "ip_adapter": ModuleList(processors)}`` flattened with
    ``image_proj.``/``ip_adapter.`` prefixes (tencent-ailab ip_adapter_faceid.py ``MLPProjModel``,
    attention_processor_faceid.py ``LoRAAttnProcessor``/``LoRAIPAttnProcessor``)."""
    s = _S()
    s.lin("image_proj.proj.0", id_dim, 2 * id_dim)
    s.lin("image_proj.proj.2", 2 * id_dim, cross_dim * num_tokens)
    s.norm("image_proj.norm", cross_dim)
    for i, (_name, hidden, cross) in enumerate(processors):
        p = f"ip_adapter.{i}"
        kv = cross_dim if cross else hidden
        for proj, d_in in (("to_q", hidden), ("to_k", kv), ("to_v", kv), ("to_out", hidden)):
            s[f"{p}.{proj}_lora.down.weight"] = (rank, d_in)
            s[f"{p}.{proj}_lora.up.weight"] = (hidden, rank)
        if cross:
            s.lin(f"{p}.to_k_ip", cross_dim, hidden, bias=False)
            s.lin(f"{p}.to_v_ip", cross_dim, hidden, bias=False)
    return dict(s)
