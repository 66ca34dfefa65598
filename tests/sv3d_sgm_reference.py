"""Plain-torch forward passes of SV3D's SGM modules, straight from SGM state-dict tensors.

Written from Stability-AI/generative-models (commit 0ad7de9): the forward methods of
VideoUNet / VideoResBlock / SpatialVideoTransformer / BasicTransformerBlock /
VideoTransformerBlock (sgm/modules/diffusionmodules/video_model.py, openaimodel.py,
sgm/modules/video_attention.py, sgm/modules/attention.py), the autoencoder's Encoder /
Decoder (sgm/modules/diffusionmodules/model.py) and open_clip v2.24's VisionTransformer. They
read the tensors by their SGM names and know nothing of diffusers, so comparing them with the
converted diffusers/transformers modules checks the conversion, not a renaming against itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

U = "model.diffusion_model."


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _lin(sd, p, x):
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def _gn(sd, p, x, eps):
    return F.group_norm(x, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)


def _conv(sd, p, x, **kw):
    w = sd[f"{p}.weight"]
    fn = F.conv3d if w.ndim == 5 else F.conv2d
    if "padding" not in kw:
        kw["padding"] = tuple(k // 2 for k in w.shape[2:])
    return fn(x, w, sd[f"{p}.bias"], **kw)


# ---------------------------------------------------------------------------------- UNet


def _resblock(sd, p, x, emb, *, video_emb_frames: int | None = None):
    """openaimodel.ResBlock (GroupNorm32 eps 1e-5); video_emb_frames: the 3D time_stack,
    whose emb is [b, t, c] (exchange_temb_dims)."""
    h = _conv(sd, f"{p}.in_layers.2", F.silu(_gn(sd, f"{p}.in_layers.0", x, 1e-5)))
    e = _lin(sd, f"{p}.emb_layers.1", F.silu(emb))
    if video_emb_frames is not None:
        e = e.permute(0, 2, 1)[..., None, None]  # b t c -> b c t 1 1
    else:
        e = e[..., None, None]
    h = h + e
    h = _conv(sd, f"{p}.out_layers.3", F.silu(_gn(sd, f"{p}.out_layers.0", h, 1e-5)))
    skip = _conv(sd, f"{p}.skip_connection", x) if f"{p}.skip_connection.weight" in sd else x
    return skip + h


def _video_resblock(sd, p, x, emb, T):
    x = _resblock(sd, p, x, emb)
    bt, c, h, w = x.shape
    x5 = x.reshape(bt // T, T, c, h, w).permute(0, 2, 1, 3, 4)  # (b t) c h w -> b c t h w
    xt = _resblock(sd, f"{p}.time_stack", x5, emb.reshape(bt // T, T, -1), video_emb_frames=T)
    a = torch.sigmoid(sd[f"{p}.time_mixer.mix_factor"])  # learned_with_images, no image-only frames
    out = a * x5 + (1 - a) * xt
    return out.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)


def _attention(sd, p, x, context, heads):
    q = _lin(sd, f"{p}.to_q", x)
    k = _lin(sd, f"{p}.to_k", context)
    v = _lin(sd, f"{p}.to_v", context)
    b, n, d = q.shape
    dh = d // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, dh).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(b, n, d)
    return _lin(sd, f"{p}.to_out.0", o)


def _ff(sd, p, x):
    a, gate = _lin(sd, f"{p}.net.0.proj", x).chunk(2, dim=-1)  # GEGLU
    return _lin(sd, f"{p}.net.2", a * F.gelu(gate))


def _spatial_video_transformer(sd, p, x, context, T, head_dim=64):
    bt, c, h, w = x.shape
    heads = c // head_dim
    x_in = x
    time_context = context[::T].repeat_interleave(h * w, dim=0)  # use_spatial_context
    x = _gn(sd, f"{p}.norm", x, 1e-6).permute(0, 2, 3, 1).reshape(bt, h * w, c)
    x = _lin(sd, f"{p}.proj_in", x)
    frames = torch.arange(T).repeat(bt // T)
    emb = _lin(sd, f"{p}.time_pos_embed.2", F.silu(_lin(sd, f"{p}.time_pos_embed.0", timestep_embedding(frames, c))))
    b = f"{p}.transformer_blocks.0"  # BasicTransformerBlock
    x = _attention(sd, f"{b}.attn1", _ln(sd, f"{b}.norm1", x), _ln(sd, f"{b}.norm1", x), heads) + x
    x = _attention(sd, f"{b}.attn2", _ln(sd, f"{b}.norm2", x), context, heads) + x
    x = _ff(sd, f"{b}.ff", _ln(sd, f"{b}.norm3", x)) + x
    # VideoTransformerBlock on x + emb, sequences over time
    m = f"{p}.time_stack.0"
    s = h * w
    xm = (x + emb[:, None, :]).reshape(bt // T, T, s, c).permute(0, 2, 1, 3).reshape(bt // T * s, T, c)
    xm = _ff(sd, f"{m}.ff_in", _ln(sd, f"{m}.norm_in", xm)) + xm
    n1 = _ln(sd, f"{m}.norm1", xm)
    xm = _attention(sd, f"{m}.attn1", n1, n1, heads) + xm
    xm = _attention(sd, f"{m}.attn2", _ln(sd, f"{m}.norm2", xm), time_context, heads) + xm
    xm = _ff(sd, f"{m}.ff", _ln(sd, f"{m}.norm3", xm)) + xm
    xm = xm.reshape(bt // T, s, T, c).permute(0, 2, 1, 3).reshape(bt, s, c)
    a = torch.sigmoid(sd[f"{p}.time_mixer.mix_factor"])
    x = a * x + (1 - a) * xm
    x = _lin(sd, f"{p}.proj_out", x).reshape(bt, h, w, c).permute(0, 3, 1, 2)
    return x + x_in


def _block(sd, p, x, emb, context, T):
    """TimestepEmbedSequential: dispatch on what the state dict holds at p.0, p.1, p.2."""
    i = 0
    while any(k.startswith(f"{p}.{i}.") for k in sd):
        q = f"{p}.{i}"
        if f"{q}.time_stack.0.norm_in.weight" in sd:
            x = _spatial_video_transformer(sd, q, x, context, T)
        elif f"{q}.time_stack.in_layers.0.weight" in sd:
            x = _video_resblock(sd, q, x, emb, T)
        elif f"{q}.op.weight" in sd:
            x = _conv(sd, f"{q}.op", x, stride=2, padding=1)
        elif f"{q}.conv.weight" in sd:
            x = _conv(sd, f"{q}.conv", F.interpolate(x, scale_factor=2, mode="nearest"))
        else:
            x = _conv(sd, q, x)
        i += 1
    return x


def video_unet(sd, x: Tensor, timesteps: Tensor, context: Tensor, y: Tensor, T: int) -> Tensor:
    """VideoUNet.forward: x [(b t), c, h, w], timesteps [(b t)], context [(b t), 1, D], y [(b t), adm]."""
    mc = sd[f"{U}input_blocks.0.0.weight"].shape[0]
    emb = _lin(sd, f"{U}time_embed.2", F.silu(_lin(sd, f"{U}time_embed.0", timestep_embedding(timesteps, mc))))
    emb = emb + _lin(sd, f"{U}label_emb.0.2", F.silu(_lin(sd, f"{U}label_emb.0.0", y)))
    hs = []
    n_in = len({k.split(".")[3] for k in sd if k.startswith(f"{U}input_blocks.")})
    n_out = len({k.split(".")[3] for k in sd if k.startswith(f"{U}output_blocks.")})
    h = x
    for i in range(n_in):
        h = _block(sd, f"{U}input_blocks.{i}", h, emb, context, T)
        hs.append(h)
    h = _block(sd, f"{U}middle_block", h, emb, context, T)
    for i in range(n_out):
        h = _block(sd, f"{U}output_blocks.{i}", torch.cat([h, hs.pop()], dim=1), emb, context, T)
    return _conv(sd, f"{U}out.2", F.silu(_gn(sd, f"{U}out.0", h, 1e-5)))


# --------------------------------------------------------------------------- autoencoder


def _ae_res(sd, p, x):
    h = _conv(sd, f"{p}.conv1", F.silu(_gn(sd, f"{p}.norm1", x, 1e-6)))
    h = _conv(sd, f"{p}.conv2", F.silu(_gn(sd, f"{p}.norm2", h, 1e-6)))
    skip = _conv(sd, f"{p}.nin_shortcut", x) if f"{p}.nin_shortcut.weight" in sd else x
    return skip + h


def _ae_attn(sd, p, x):
    b, c, h, w = x.shape
    n = _gn(sd, f"{p}.norm", x, 1e-6)
    q, k, v = (_conv(sd, f"{p}.{t}", n).reshape(b, c, h * w).transpose(1, 2) for t in "qkv")
    o = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v
    return x + _conv(sd, f"{p}.proj_out", o.transpose(1, 2).reshape(b, c, h, w))


def _count(sd, prefix):
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def encode_mode(sd, ae: str, x: Tensor) -> Tensor:
    """AutoencodingEngineLegacy.encode with the mode: Encoder, quant_conv, the mean half."""
    p = f"{ae}encoder"
    h = _conv(sd, f"{p}.conv_in", x)
    levels = _count(sd, f"{p}.down.")
    for i in range(levels):
        for j in range(_count(sd, f"{p}.down.{i}.block.")):
            h = _ae_res(sd, f"{p}.down.{i}.block.{j}", h)
        if i != levels - 1:
            h = _conv(sd, f"{p}.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = _ae_res(sd, f"{p}.mid.block_2", _ae_attn(sd, f"{p}.mid.attn_1", _ae_res(sd, f"{p}.mid.block_1", h)))
    h = _conv(sd, f"{p}.conv_out", F.silu(_gn(sd, f"{p}.norm_out", h, 1e-6)))
    moments = _conv(sd, f"{ae}quant_conv", h)
    return moments.chunk(2, dim=1)[0]


def decode(sd, p: str, z: Tensor) -> Tensor:
    """model.Decoder.forward (the first stage of sv3d_*.yaml: no post_quant_conv)."""
    h = _conv(sd, f"{p}.conv_in", z)
    h = _ae_res(sd, f"{p}.mid.block_2", _ae_attn(sd, f"{p}.mid.attn_1", _ae_res(sd, f"{p}.mid.block_1", h)))
    levels = _count(sd, f"{p}.up.")
    for i in reversed(range(levels)):
        for j in range(_count(sd, f"{p}.up.{i}.block.")):
            h = _ae_res(sd, f"{p}.up.{i}.block.{j}", h)
        if i != 0:
            h = _conv(sd, f"{p}.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, f"{p}.conv_out", F.silu(_gn(sd, f"{p}.norm_out", h, 1e-6)))


# ------------------------------------------------------------------------------ open_clip


def open_clip_image_embeds(sd, v: str, pix: Tensor, head_width: int = 80) -> Tensor:
    """open_clip v2.24 VisionTransformer.forward (pool 'tok', ln_post then pool, @ proj),
    with torch's own nn.MultiheadAttention as open_clip's ResidualAttentionBlock uses it."""
    w = sd[f"{v}conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]
    x = F.conv2d(pix, w, stride=patch).flatten(2).transpose(1, 2)
    cls = sd[f"{v}class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[f"{v}positional_embedding"]
    x = _ln(sd, f"{v}ln_pre", x)
    n = _count(sd, f"{v}transformer.resblocks.")
    for i in range(n):
        p = f"{v}transformer.resblocks.{i}"
        mha = torch.nn.MultiheadAttention(width, width // head_width, batch_first=True)
        mha.load_state_dict(
            {
                "in_proj_weight": sd[f"{p}.attn.in_proj_weight"],
                "in_proj_bias": sd[f"{p}.attn.in_proj_bias"],
                "out_proj.weight": sd[f"{p}.attn.out_proj.weight"],
                "out_proj.bias": sd[f"{p}.attn.out_proj.bias"],
            }
        )
        y = _ln(sd, f"{p}.ln_1", x)
        x = x + mha(y, y, y, need_weights=False)[0]
        x = x + _lin(sd, f"{p}.mlp.c_proj", F.gelu(_lin(sd, f"{p}.mlp.c_fc", _ln(sd, f"{p}.ln_2", x))))
    x = _ln(sd, f"{v}ln_post", x)
    return x[:, 0] @ sd[f"{v}proj"]
