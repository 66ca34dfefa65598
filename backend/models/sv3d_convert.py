"""SV3D's single file (SGM layout) -> diffusers/transformers state dicts: the key/shape plan
and the tensor conversion, without building any module (that is :mod:`backend.models.sv3d`).

:func:`plan_sv3d` works on ``{key: shape}`` alone (:func:`read_header` reads it from the
safetensors header without torch): it derives the UNet, VAE and CLIP configs from the shapes
and SGM's yaml constants, maps every tensor the diffusers/transformers modules expect to its
SGM source key and a transform, and is strict: a missing key, a wrong shape, or a file key
that is neither used nor listed in :data:`DROPPED` raises :class:`ModelCorruptError`.
:func:`convert_sv3d` then reads the tensors (each once) into per-module state dicts.

Where the SGM names come from (Stability-AI/generative-models, 0ad7de9): ``VideoUNet``
(sgm/modules/diffusionmodules/video_model.py) with ``VideoResBlock`` and
``SpatialVideoTransformer`` (sgm/modules/video_attention.py); the conditioner of
scripts/sampling/configs/sv3d_{u,p}.yaml (0: ``FrozenOpenCLIPImagePredictionEmbedder`` ->
open_clip ViT-H-14, 1: ``VideoPredictionEmbedderWithEncoder`` -> ``AutoencoderKLModeOnly``,
then parameter-free timestep embedders); ``first_stage_model`` = ``AutoencodingEngine`` with
an Identity encoder and the 2D ``Decoder``. The diffusers side was checked key for key and
shape for shape against the instantiated modules (tests/test_sv3d_checkpoint.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .header import HeaderError, tensor_index
from .registry import ModelCorruptError

if TYPE_CHECKING:
    import torch

Shape = tuple[int, ...]

#: The width of the UNet's vector input (``label_emb.0.0.weight`` [1280, width]) tells the
#: variants apart (sv3d_u.yaml / sv3d_p.yaml ``adm_in_channels``).
VECTOR_WIDTH = {"sv3d_u": 256, "sv3d_p": 1280}
UNET_HEAD_DIM = 64  # sv3d_*.yaml network_config.num_head_channels
CLIP_HEAD_WIDTH = 80  # open_clip model_configs/ViT-H-14.json vision_cfg.head_width
VAE_SCALING = 0.18215  # sv3d_*.yaml model.params.scale_factor
NUM_FRAMES = 21
U = "model.diffusion_model."
FIRST_STAGE = "first_stage_model.decoder."

#: Keys of the file that the loader knowingly leaves unused (SGM names, ``{clip}`` = the
#: ``conditioner.embedders.N.open_clip.model.`` prefix, ``{ae}`` = the conditioning
#: autoencoder's ``conditioner.embedders.N.encoder.`` prefix). Anything else unused is an error.
DROPPED = (
    # open_clip's CLIP keeps its text tower's embeddings, final norm, projection and logit scale
    # on the model object; FrozenOpenCLIPImageEmbedder deletes only ``model.transformer``
    # (sgm/modules/encoders/modules.py). SV3D has no text input.
    "{clip}token_embedding.weight",
    "{clip}positional_embedding",
    "{clip}ln_final.weight",
    "{clip}ln_final.bias",
    "{clip}text_projection",
    "{clip}logit_scale",
    # The conditioning autoencoder (AutoencoderKLModeOnly) is only ever asked to *encode* the
    # input view (VideoPredictionEmbedderWithEncoder.forward, is_ae); samples are decoded by
    # first_stage_model (DiffusionEngine.decode_first_stage), so its own decoder and
    # post_quant_conv are never run. (ComfyUI loads this whole autoencoder as SV3D's VAE,
    # vae_key_prefix "conditioner.embedders.1.encoder."; we decode as the reference does.)
    "{ae}decoder.*",
    "{ae}post_quant_conv.weight",
    "{ae}post_quant_conv.bias",
)


def _hint(variant: str | None) -> str:
    return f"Fetch the checkpoint again: python -m backend models download --only {variant or 'sv3d_u'}"


def _bad(path: Path | str | None, why: str, variant: str | None) -> ModelCorruptError:
    where = f"{path} " if path is not None else "The file "
    return ModelCorruptError(f"{where}is not a usable SV3D checkpoint: {why}.", hint=_hint(variant))


# ----------------------------------------------------------------------------- the header

_DTYPES = ("F32", "F16", "BF16", "F64")  # what SV3D's files may hold


def read_header(path: Path | str, variant: str | None = None) -> dict[str, Shape]:
    """``{key: shape}`` from a safetensors file's header alone (no torch, no tensor read;
    :func:`backend.models.header.tensor_index`).

    Raises :class:`ModelCorruptError` for a file that is not safetensors, is cut short, or holds
    tensors of a dtype SV3D never uses.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise _bad(path, "it is no .safetensors file", variant)
    try:
        index = tensor_index(path)
    except HeaderError as exc:
        raise _bad(path, str(exc), variant) from exc
    for k, info in index.items():
        if info.dtype not in _DTYPES:
            raise _bad(path, f"tensor {k} has dtype {info.dtype}", variant)
    return {k: info.shape for k, info in index.items()}


# ------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Move:
    """Where one target tensor comes from: ``source`` key and how it is reshaped.

    ``tx``: ``"copy"``; ``"squeeze"`` (a 1x1 conv [o, i, 1, 1] -> linear [o, i]); ``"t"``
    (transpose); ``"q"``/``"k"``/``"v"`` (the first/second/third third of an
    ``nn.MultiheadAttention`` in_proj along dim 0).
    """

    source: str
    tx: str = "copy"

    def source_shape(self, target: Shape) -> Shape:
        if self.tx == "squeeze":
            return (*target, 1, 1)
        if self.tx == "t":
            return tuple(reversed(target))
        if self.tx in ("q", "k", "v"):
            return (3 * target[0], *target[1:])
        return target


@dataclass
class SV3DPlan:
    """The outcome of :func:`plan_sv3d`: configs and, per component, target key -> :class:`Move`."""

    variant: str
    unet_config: dict[str, Any]
    vae_class: str  # "AutoencoderKL" (2D image decoder) or "AutoencoderKLTemporalDecoder"
    vae_config: dict[str, Any]
    clip_config: dict[str, Any]
    image_size: int  # the CLIP tower's input size
    targets: dict[str, dict[str, tuple[Shape, Move]]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    def target_keys(self, component: str) -> set[str]:
        return set(self.targets[component])


class _Targets:
    """Collects the tensors one diffusers/transformers module expects, with their sources."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Shape, Move]] = {}

    def add(self, target: str, shape: Shape, source: str, tx: str = "copy") -> None:
        assert target not in self.items, target
        self.items[target] = (tuple(shape), Move(source, tx))

    def linear(self, t: str, s: str, n_out: int, n_in: int, *, bias: bool = True, tx: str = "copy") -> None:
        self.add(f"{t}.weight", (n_out, n_in), f"{s}.weight", tx)
        if bias:
            self.add(f"{t}.bias", (n_out,), f"{s}.bias")

    def conv(self, t: str, s: str, n_out: int, n_in: int, kernel: Shape = (3, 3)) -> None:
        self.add(f"{t}.weight", (n_out, n_in, *kernel), f"{s}.weight")
        self.add(f"{t}.bias", (n_out,), f"{s}.bias")

    def norm(self, t: str, s: str, n: int) -> None:
        self.add(f"{t}.weight", (n,), f"{s}.weight")
        self.add(f"{t}.bias", (n,), f"{s}.bias")


# --- UNet: VideoUNet -> UNetSpatioTemporalConditionModel ------------------------------------


def _st_resnet(T: _Targets, t: str, s: str, cin: int, cout: int, temb: int) -> None:
    """VideoResBlock (ResBlock + time_stack + time_mixer) -> SpatioTemporalResBlock."""
    for part, src, c_in, kernel in (
        ("spatial_res_block", s, cin, (3, 3)),
        ("temporal_res_block", f"{s}.time_stack", cout, (3, 1, 1)),
    ):
        T.norm(f"{t}.{part}.norm1", f"{src}.in_layers.0", c_in)
        T.conv(f"{t}.{part}.conv1", f"{src}.in_layers.2", cout, c_in, kernel)
        T.linear(f"{t}.{part}.time_emb_proj", f"{src}.emb_layers.1", cout, temb)
        T.norm(f"{t}.{part}.norm2", f"{src}.out_layers.0", cout)
        T.conv(f"{t}.{part}.conv2", f"{src}.out_layers.3", cout, cout, kernel)
        if c_in != cout:
            T.conv(f"{t}.{part}.conv_shortcut", f"{src}.skip_connection", cout, c_in, (1, 1))
    T.add(f"{t}.time_mixer.mix_factor", (1,), f"{s}.time_mixer.mix_factor")


def _attn(T: _Targets, t: str, s: str, inner: int, ctx: int) -> None:
    T.linear(f"{t}.to_q", f"{s}.to_q", inner, inner, bias=False)
    T.linear(f"{t}.to_k", f"{s}.to_k", inner, ctx, bias=False)
    T.linear(f"{t}.to_v", f"{s}.to_v", inner, ctx, bias=False)
    T.linear(f"{t}.to_out.0", f"{s}.to_out.0", inner, inner)


def _ff(T: _Targets, t: str, s: str, dim: int) -> None:
    T.linear(f"{t}.net.0.proj", f"{s}.net.0.proj", 8 * dim, dim)  # GEGLU
    T.linear(f"{t}.net.2", f"{s}.net.2", dim, 4 * dim)


def _st_transformer(T: _Targets, t: str, s: str, ch: int, ctx: int) -> None:
    """SpatialVideoTransformer (depth 1) -> TransformerSpatioTemporalModel; names match below
    the block level except time_stack -> temporal_transformer_blocks, time_pos_embed.{0,2}."""
    T.norm(f"{t}.norm", f"{s}.norm", ch)
    T.linear(f"{t}.proj_in", f"{s}.proj_in", ch, ch)
    for tb, sb in ((f"{t}.transformer_blocks.0", f"{s}.transformer_blocks.0"),):
        for n in ("norm1", "norm2", "norm3"):
            T.norm(f"{tb}.{n}", f"{sb}.{n}", ch)
        _attn(T, f"{tb}.attn1", f"{sb}.attn1", ch, ch)
        _attn(T, f"{tb}.attn2", f"{sb}.attn2", ch, ctx)
        _ff(T, f"{tb}.ff", f"{sb}.ff", ch)
    tb, sb = f"{t}.temporal_transformer_blocks.0", f"{s}.time_stack.0"
    for n in ("norm_in", "norm1", "norm2", "norm3"):
        T.norm(f"{tb}.{n}", f"{sb}.{n}", ch)
    _ff(T, f"{tb}.ff_in", f"{sb}.ff_in", ch)
    _attn(T, f"{tb}.attn1", f"{sb}.attn1", ch, ch)
    _attn(T, f"{tb}.attn2", f"{sb}.attn2", ch, ctx)
    _ff(T, f"{tb}.ff", f"{sb}.ff", ch)
    T.linear(f"{t}.time_pos_embed.linear_1", f"{s}.time_pos_embed.0", 4 * ch, ch)
    T.linear(f"{t}.time_pos_embed.linear_2", f"{s}.time_pos_embed.2", ch, 4 * ch)
    T.add(f"{t}.time_mixer.mix_factor", (1,), f"{s}.time_mixer.mix_factor")
    T.linear(f"{t}.proj_out", f"{s}.proj_out", ch, ch)


def _unet_targets(levels: Sequence[tuple[int, bool]], nrb: int, c_in: int, c_out: int, adm: int, ctx: int) -> _Targets:
    """Every tensor of diffusers' UNetSpatioTemporalConditionModel for these levels
    ((channels, has attention) per level) and where VideoUNet keeps it.

    VideoUNet numbers its blocks flat: input_blocks 1.. run level by level, ``nrb`` resblocks
    (+ attention at index 1) then a Downsample (``.0.op``); output_blocks run the levels in
    reverse, ``nrb + 1`` each, the last of a level carrying the Upsample after the attention.
    """
    T = _Targets()
    mc = levels[0][0]
    temb = 4 * mc
    T.conv("conv_in", f"{U}input_blocks.0.0", mc, c_in)
    T.linear("time_embedding.linear_1", f"{U}time_embed.0", temb, mc)
    T.linear("time_embedding.linear_2", f"{U}time_embed.2", temb, temb)
    T.linear("add_embedding.linear_1", f"{U}label_emb.0.0", temb, adm)
    T.linear("add_embedding.linear_2", f"{U}label_emb.0.2", temb, temb)
    skips, ch, i = [mc], mc, 1
    for b, (c, attn) in enumerate(levels):
        for j in range(nrb):
            _st_resnet(T, f"down_blocks.{b}.resnets.{j}", f"{U}input_blocks.{i}.0", ch, c, temb)
            if attn:
                _st_transformer(T, f"down_blocks.{b}.attentions.{j}", f"{U}input_blocks.{i}.1", c, ctx)
            ch = c
            skips.append(c)
            i += 1
        if b < len(levels) - 1:
            T.conv(f"down_blocks.{b}.downsamplers.0.conv", f"{U}input_blocks.{i}.0.op", c, c)
            skips.append(c)
            i += 1
    _st_resnet(T, "mid_block.resnets.0", f"{U}middle_block.0", ch, ch, temb)
    _st_transformer(T, "mid_block.attentions.0", f"{U}middle_block.1", ch, ctx)
    _st_resnet(T, "mid_block.resnets.1", f"{U}middle_block.2", ch, ch, temb)
    i = 0
    for b, (c, attn) in enumerate(reversed(levels)):
        for j in range(nrb + 1):
            _st_resnet(T, f"up_blocks.{b}.resnets.{j}", f"{U}output_blocks.{i}.0", ch + skips.pop(), c, temb)
            if attn:
                _st_transformer(T, f"up_blocks.{b}.attentions.{j}", f"{U}output_blocks.{i}.1", c, ctx)
            ch = c
            if j == nrb and b < len(levels) - 1:
                T.conv(f"up_blocks.{b}.upsamplers.0.conv", f"{U}output_blocks.{i}.{2 if attn else 1}.conv", c, c)
            i += 1
    T.norm("conv_norm_out", f"{U}out.0", mc)
    T.conv("conv_out", f"{U}out.2", c_out, mc)
    return T


# --- VAE: conditioning encoder + first-stage decoder -> AutoencoderKL(TemporalDecoder) ------


def _ae_resnet(T: _Targets, t: str, s: str, cin: int, cout: int) -> None:
    T.norm(f"{t}.norm1", f"{s}.norm1", cin)
    T.conv(f"{t}.conv1", f"{s}.conv1", cout, cin)
    T.norm(f"{t}.norm2", f"{s}.norm2", cout)
    T.conv(f"{t}.conv2", f"{s}.conv2", cout, cout)
    if cin != cout:
        T.conv(f"{t}.conv_shortcut", f"{s}.nin_shortcut", cout, cin, (1, 1))


def _ae_video_resnet(T: _Targets, t: str, s: str, cin: int, cout: int) -> None:
    """temporal_ae.VideoResBlock -> SpatioTemporalResBlock (no time embedding)."""
    _ae_resnet(T, f"{t}.spatial_res_block", s, cin, cout)
    for tn, sn in (("norm1", "in_layers.0"), ("norm2", "out_layers.0")):
        T.norm(f"{t}.temporal_res_block.{tn}", f"{s}.time_stack.{sn}", cout)
    for tn, sn in (("conv1", "in_layers.2"), ("conv2", "out_layers.3")):
        T.conv(f"{t}.temporal_res_block.{tn}", f"{s}.time_stack.{sn}", cout, cout, (3, 1, 1))
    T.add(f"{t}.time_mixer.mix_factor", (1,), f"{s}.mix_factor")


def _ae_attn(T: _Targets, t: str, s: str, c: int) -> None:
    """AttnBlock (1x1 convs) -> diffusers Attention (linears)."""
    T.norm(f"{t}.group_norm", f"{s}.norm", c)
    for tn, sn in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        T.linear(f"{t}.{tn}", f"{s}.{sn}", c, c, tx="squeeze")


def _vae_targets(ae: str, blocks: Sequence[int], nrb: int, z: int, video: bool) -> _Targets:
    """diffusers AutoencoderKL (no post_quant_conv) or AutoencoderKLTemporalDecoder tensors:
    encoder + quant_conv from the conditioning autoencoder ``ae``, decoder from first_stage_model."""
    T = _Targets()
    E, D, L = f"{ae}encoder.", FIRST_STAGE, len(blocks)
    T.conv("encoder.conv_in", f"{E}conv_in", blocks[0], 3)
    ch = blocks[0]
    for i, c in enumerate(blocks):
        for j in range(nrb):
            _ae_resnet(T, f"encoder.down_blocks.{i}.resnets.{j}", f"{E}down.{i}.block.{j}", ch, c)
            ch = c
        if i < L - 1:
            T.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"{E}down.{i}.downsample.conv", c, c)
    _ae_resnet(T, "encoder.mid_block.resnets.0", f"{E}mid.block_1", ch, ch)
    _ae_attn(T, "encoder.mid_block.attentions.0", f"{E}mid.attn_1", ch)
    _ae_resnet(T, "encoder.mid_block.resnets.1", f"{E}mid.block_2", ch, ch)
    T.norm("encoder.conv_norm_out", f"{E}norm_out", ch)
    T.conv("encoder.conv_out", f"{E}conv_out", 2 * z, ch)
    T.conv("quant_conv", f"{ae}quant_conv", 2 * z, 2 * z, (1, 1))

    res = _ae_video_resnet if video else _ae_resnet
    T.conv("decoder.conv_in", f"{D}conv_in", ch, z)
    res(T, "decoder.mid_block.resnets.0", f"{D}mid.block_1", ch, ch)
    _ae_attn(T, "decoder.mid_block.attentions.0", f"{D}mid.attn_1", ch)
    res(T, "decoder.mid_block.resnets.1", f"{D}mid.block_2", ch, ch)
    for b in range(L):  # diffusers' up_blocks[0] is SGM's lowest-resolution up[L - 1]
        level = L - 1 - b
        c = blocks[level]
        for j in range(nrb + 1):
            res(T, f"decoder.up_blocks.{b}.resnets.{j}", f"{D}up.{level}.block.{j}", ch, c)
            ch = c
        if b < L - 1:
            T.conv(f"decoder.up_blocks.{b}.upsamplers.0.conv", f"{D}up.{level}.upsample.conv", c, c)
    T.norm("decoder.conv_norm_out", f"{D}norm_out", ch)
    T.conv("decoder.conv_out", f"{D}conv_out", 3, ch)
    if video:
        T.conv("decoder.time_conv_out", f"{D}conv_out.time_mix_conv", 3, 3, (3, 1, 1))
    return T


# --- image encoder: open_clip ViT -> CLIPVisionModelWithProjection --------------------------


def _clip_targets(v: str, width: int, layers: int, mlp: int, patch: int, n_pos: int, embed: int) -> _Targets:
    T = _Targets()
    m = "vision_model"
    T.add(f"{m}.embeddings.class_embedding", (width,), f"{v}class_embedding")
    T.add(f"{m}.embeddings.patch_embedding.weight", (width, 3, patch, patch), f"{v}conv1.weight")
    T.add(f"{m}.embeddings.position_embedding.weight", (n_pos, width), f"{v}positional_embedding")
    T.norm(f"{m}.pre_layrnorm", f"{v}ln_pre", width)
    for i in range(layers):
        t, s = f"{m}.encoder.layers.{i}", f"{v}transformer.resblocks.{i}"
        for part in ("q", "k", "v"):
            T.add(f"{t}.self_attn.{part}_proj.weight", (width, width), f"{s}.attn.in_proj_weight", part)
            T.add(f"{t}.self_attn.{part}_proj.bias", (width,), f"{s}.attn.in_proj_bias", part)
        T.linear(f"{t}.self_attn.out_proj", f"{s}.attn.out_proj", width, width)
        T.norm(f"{t}.layer_norm1", f"{s}.ln_1", width)
        T.norm(f"{t}.layer_norm2", f"{s}.ln_2", width)
        T.linear(f"{t}.mlp.fc1", f"{s}.mlp.c_fc", mlp, width)
        T.linear(f"{t}.mlp.fc2", f"{s}.mlp.c_proj", width, mlp)
    T.norm(f"{m}.post_layernorm", f"{v}ln_post", width)
    T.add("visual_projection.weight", (embed, width), f"{v}proj", "t")
    return T


# --- deriving the configs from the shapes ---------------------------------------------------


def _indices(keys: Sequence[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _one_embedder(keys: Sequence[str], suffix: str, what: str, path, variant) -> str:
    found = _indices(keys, r"conditioner\.embedders\.(\d+)\." + re.escape(suffix) + "$")
    if len(found) != 1:
        raise _bad(path, f"{'no' if not found else 'more than one'} conditioner embedder holds {what}", variant)
    return f"conditioner.embedders.{found[0]}."


def plan_sv3d(
    shapes: Mapping[str, Sequence[int]], variant: str | None = None, *, path: Path | str | None = None
) -> SV3DPlan:
    """Plan the conversion of an SGM-layout SV3D state dict given as ``{key: shape}``.

    Derives the UNet, VAE and CLIP configs from the shapes, checks that every tensor the
    diffusers/transformers modules need is there with the right shape, and that every key of
    the file is either used or listed in :data:`DROPPED`. ``variant`` (``"sv3d_u"`` /
    ``"sv3d_p"``), when given, must match the file's. Raises :class:`ModelCorruptError`
    naming the problem (``path`` only appears in the messages).
    """
    shp = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
    keys = list(shp)

    def need(k: str) -> Shape:
        if k not in shp:
            raise _bad(path, f"it has no tensor {k}", variant)
        return shp[k]

    if f"{U}label_emb.0.0.weight" not in shp or f"{U}input_blocks.0.0.weight" not in shp:
        raise _bad(
            path,
            "it is not a Stability SGM video checkpoint (no model.diffusion_model.label_emb/input_blocks)",
            variant,
        )
    adm = need(f"{U}label_emb.0.0.weight")[1]
    found = {w: v for v, w in VECTOR_WIDTH.items()}.get(adm)
    if found is None:
        raise _bad(path, f"its UNet takes a {adm}-d vector input, SV3D takes 256 (sv3d_u) or 1280 (sv3d_p)", variant)
    if variant is not None and variant != found:
        raise ModelCorruptError(
            f"{path or 'The file'} holds {found} (a {adm}-d camera/vector input), not {variant}.",
            hint=f"Put {found}.safetensors in the {found} model folder and fetch {variant}: "
            f"python -m backend models download --only {variant}",
        )
    variant = found

    # UNet: levels from the flat input_blocks numbering
    mc, c_in = need(f"{U}input_blocks.0.0.weight")[:2]
    levels: list[tuple[int, bool]] = []
    counts: list[int] = [0]
    for i in _indices(keys, re.escape(U) + r"input_blocks\.(\d+)\.")[1:]:
        if f"{U}input_blocks.{i}.0.op.weight" in shp:
            counts.append(0)
            continue
        c = need(f"{U}input_blocks.{i}.0.in_layers.2.weight")[0]
        attn = f"{U}input_blocks.{i}.1.norm.weight" in shp
        if counts[-1] == 0:
            levels.append((c, attn))
        counts[-1] += 1
    nrb = counts[0]
    if not levels or any(n != nrb for n in counts) or len(counts) != len(levels):
        raise _bad(path, f"its UNet's input blocks do not form levels of equal depth ({counts})", variant)
    attn_keys = [k for k in keys if k.startswith(U) and k.endswith(".transformer_blocks.0.attn2.to_k.weight")]
    if not attn_keys:
        raise _bad(path, "its UNet has no cross-attention", variant)
    ctx = shp[attn_keys[0]][1]
    for c, _ in levels:
        if c % UNET_HEAD_DIM or c % 32:
            raise _bad(path, f"a UNet level has {c} channels, not a multiple of the {UNET_HEAD_DIM}-d heads", variant)
    c_out = need(f"{U}out.2.weight")[0]
    unet_t = _unet_targets(levels, nrb, c_in, c_out, adm, ctx)
    unet_config = dict(
        sample_size=72,
        in_channels=c_in,
        out_channels=c_out,
        down_block_types=tuple(
            "CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for _, a in levels
        ),
        up_block_types=tuple(
            "CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for _, a in reversed(levels)
        ),
        block_out_channels=tuple(c for c, _ in levels),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=adm,
        layers_per_block=nrb,
        cross_attention_dim=ctx,
        transformer_layers_per_block=1,
        num_attention_heads=tuple(c // UNET_HEAD_DIM for c, _ in levels),
        num_frames=NUM_FRAMES,
    )

    # image encoder
    clip = _one_embedder(keys, "open_clip.model.visual.conv1.weight", "an open_clip image tower", path, variant)
    v = f"{clip}open_clip.model.visual."
    width, _, patch, _ = need(f"{v}conv1.weight")
    n_pos = need(f"{v}positional_embedding")[0]
    grid = math.isqrt(max(n_pos - 1, 0))
    if grid * grid != n_pos - 1 or width % CLIP_HEAD_WIDTH:
        raise _bad(path, f"its image tower ({width} wide, {n_pos} positions) is not an open_clip ViT", variant)
    clip_layers = len(_indices(keys, re.escape(v) + r"transformer\.resblocks\.(\d+)\."))
    mlp = need(f"{v}transformer.resblocks.0.mlp.c_fc.weight")[0]
    embed = need(f"{v}proj")[1]
    if embed != ctx:
        raise _bad(path, f"its image embedding is {embed}-d but the UNet attends to {ctx}-d context", variant)
    clip_t = _clip_targets(v, width, clip_layers, mlp, patch, n_pos, embed)
    clip_config = dict(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=clip_layers,
        num_attention_heads=width // CLIP_HEAD_WIDTH,
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=embed,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        num_channels=3,
    )

    # VAE: the conditioning autoencoder's encoder, first_stage_model's decoder
    ae = _one_embedder(keys, "encoder.encoder.conv_in.weight", "an autoencoder", path, variant) + "encoder."
    need(f"{ae}encoder.conv_in.weight")
    n_levels = len(_indices(keys, re.escape(ae) + r"encoder\.down\.(\d+)\."))
    blocks = [need(f"{ae}encoder.down.{i}.block.0.conv1.weight")[0] for i in range(n_levels)]
    ae_nrb = len(_indices(keys, re.escape(ae) + r"encoder\.down\.0\.block\.(\d+)\."))
    z = need(f"{ae}encoder.conv_out.weight")[0] // 2
    video = f"{FIRST_STAGE}conv_out.time_mix_conv.weight" in shp
    if not any(k.startswith(FIRST_STAGE) for k in keys):
        raise _bad(path, "it has no first-stage decoder (first_stage_model.decoder.*)", variant)
    if video and ae_nrb != 2:
        raise _bad(path, f"its temporal decoder has {ae_nrb} blocks per level; diffusers' needs 2", variant)
    vae_t = _vae_targets(ae, blocks, ae_nrb, z, video)
    vae_config: dict[str, Any] = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_levels,
        block_out_channels=tuple(blocks),
        layers_per_block=ae_nrb,
        latent_channels=z,
        sample_size=576,
        scaling_factor=VAE_SCALING,
    )
    if not video:
        vae_config.update(up_block_types=("UpDecoderBlock2D",) * n_levels, use_post_quant_conv=False)

    plan = SV3DPlan(
        variant=variant,
        unet_config=unet_config,
        vae_class="AutoencoderKLTemporalDecoder" if video else "AutoencoderKL",
        vae_config=vae_config,
        clip_config=clip_config,
        image_size=grid * patch,
        targets={"unet": unet_t.items, "vae": vae_t.items, "image_encoder": clip_t.items},
    )
    _check(plan, shp, clip=f"{clip}open_clip.model.", ae=ae, path=path)
    return plan


def _check(plan: SV3DPlan, shp: dict[str, Shape], *, clip: str, ae: str, path) -> None:
    used: set[str] = set()
    missing: list[str] = []
    wrong: list[str] = []
    for items in plan.targets.values():
        for shape, mv in items.values():
            want = mv.source_shape(shape)
            if mv.source not in shp:
                missing.append(mv.source)
            elif shp[mv.source] != want:
                wrong.append(f"{mv.source} {list(shp[mv.source])} (expected {list(want)})")
            used.add(mv.source)
    exact = {d.format(clip=clip, ae=ae) for d in DROPPED if not d.endswith("*")}
    prefixes = tuple(d.format(clip=clip, ae=ae)[:-1] for d in DROPPED if d.endswith("*"))
    dropped = [k for k in shp if k not in used and (k in exact or k.startswith(prefixes))]
    unknown = sorted(k for k in shp if k not in used and k not in set(dropped))
    problems = []
    for label, items in (
        ("missing tensors", sorted(set(missing))),
        ("wrong shapes", wrong),
        ("unknown tensors", unknown),
    ):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if problems:
        raise _bad(path, "; ".join(problems), plan.variant)
    plan.dropped = tuple(sorted(dropped))


# ------------------------------------------------------------------------------- the tensors


def convert_sv3d(
    plan: SV3DPlan, get: Callable[[str], torch.Tensor], dtype: torch.dtype | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """``{component: state dict}`` in diffusers/transformers naming from the SGM tensors
    ``get(source_key)`` (each source is read once; the three in_proj parts share one read)."""
    last: dict[str, Any] = {}

    def read(key: str):
        if last.get("key") != key:
            last["key"], last["t"] = key, get(key)
        return last["t"]

    out: dict[str, dict[str, torch.Tensor]] = {}
    for comp, items in plan.targets.items():
        sd = {}
        for target, (shape, mv) in items.items():
            t = read(mv.source)
            if mv.tx == "squeeze":
                t = t[:, :, 0, 0]
            elif mv.tx == "t":
                t = t.t()
            elif mv.tx in ("q", "k", "v"):
                n = t.shape[0] // 3
                t = t["qkv".index(mv.tx) * n : ("qkv".index(mv.tx) + 1) * n]
            if dtype is not None and t.dtype != dtype:
                t = t.to(dtype)
            sd[target] = t.contiguous()
            if tuple(sd[target].shape) != shape:  # the plan checked the header; this guards the reader
                raise RuntimeError(f"{mv.source} -> {target}: {tuple(t.shape)} != {shape}")
        out[comp] = sd
    return out


def iter_sources(plan: SV3DPlan) -> Iterator[str]:
    """Every source key the plan reads, once."""
    seen: set[str] = set()
    for items in plan.targets.values():
        for _, mv in items.values():
            if mv.source not in seen:
                seen.add(mv.source)
                yield mv.source
