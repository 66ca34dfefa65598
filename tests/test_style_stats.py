"""Style statistics and the Eq. 13 whitening–colouring map (METHOD A.4); the style set on the
tiny SD1.5 and its disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import models
from backend.guidance.style_stats import (
    StyleStats,
    generate_style_set,
    latent_stats,
    style_stats,
    text_only,
    whitening_colouring,
)


def _np_stats(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = img.reshape(img.shape[0], -1)  # [C, H*W]
    return x.mean(1), np.cov(x)


def _style(seed: int = 0) -> StyleStats:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    return StyleStats(
        mean=torch.randn(4, generator=g, dtype=torch.float64),
        cov=a @ a.T + 0.05 * torch.eye(4, dtype=torch.float64),
        n_images=20,
        prompt="p",
        key="k",
    )


def test_latent_stats_matches_numpy():
    z = torch.randn(3, 4, 6, 5) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1) + 0.7
    mean, cov = latent_stats(z)
    x = z.double().numpy().transpose(1, 0, 2, 3).reshape(4, -1)
    np.testing.assert_allclose(mean.numpy(), x.mean(1), atol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(x), atol=1e-12)
    assert mean.dtype == cov.dtype == torch.float64


def test_map_gives_each_image_the_style_statistics():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(4, 4, generator=g, dtype=torch.float64)
    z = torch.einsum("ij,bjhw->bihw", mix, torch.randn(3, 4, 16, 16, generator=g, dtype=torch.float64)) + 2.0
    style = _style()
    out = whitening_colouring(z, style)
    assert out.shape == z.shape and out.dtype == z.dtype
    for img in out.numpy():
        mean, cov = _np_stats(img)
        np.testing.assert_allclose(mean, style.mean.numpy(), atol=1e-4)
        np.testing.assert_allclose(cov, style.cov.numpy(), atol=1e-4)
    # the images keep their own structure: a map of the mapped images is the identity
    torch.testing.assert_close(whitening_colouring(out, style), out, atol=1e-8, rtol=1e-6)
    # the printed reading (+ μ_g instead of + μ_s) would keep the input's mean instead
    assert not np.allclose(_np_stats(out[0].numpy())[0], _np_stats(z[0].numpy())[0], atol=1e-2)


def test_degenerate_covariances_stay_finite():
    style = _style(2)
    const = torch.full((1, 4, 8, 8), 0.3)
    out = whitening_colouring(const, style)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :, 0, 0].double(), style.mean, atol=1e-5, rtol=0)  # flat image -> style mean
    field = torch.randn(1, 1, 8, 8)
    rank1 = field * torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1)  # one direction of variation
    out = whitening_colouring(torch.cat([rank1, const]), style)
    assert torch.isfinite(out).all() and out.abs().max() < 1e3
    half = whitening_colouring(const.half(), style)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_save_load_roundtrip(tmp_path):
    s = _style(3)
    path = s.save(tmp_path / "sub" / "stats.safetensors")
    back = StyleStats.load(path)
    torch.testing.assert_close(back.mean, s.mean)
    torch.testing.assert_close(back.cov, s.cov)
    assert (back.n_images, back.prompt, back.key) == (20, "p", "k")
    assert [p.name for p in path.parent.iterdir()] == ["stats.safetensors"]  # no temp file left


@pytest.fixture(scope="module")
def sd(tiny_models_root):
    return models.load_sd15(tiny_models_root / "sd15")


def _count_unet_calls(unet) -> list[int]:
    calls = [0]
    unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_style_set_and_cache(sd, tmp_path):
    seen = []
    lat = generate_style_set(
        sd, "a portrait", n=3, steps=2, resolution=64, batch=2, progress=lambda d, t: seen.append((d, t))
    )
    assert lat.shape == (3, 4, 8, 8) and torch.isfinite(lat).all()
    assert seen[-1] == (4, 4) and len(seen) == 4  # 2 batches x 2 steps
    assert (lat[0] - lat[1]).abs().max() > 1e-3  # per-image seeds

    calls = _count_unet_calls(sd.unet)
    kw = dict(seed=0, cache_dir=tmp_path, model_key="tiny", n=3, steps=2, resolution=64, batch=2)
    first = style_stats(sd, "a portrait", **kw)
    assert calls[0] == 2 * 2  # CFG is one batched call per step
    mean, cov = latent_stats(lat)
    torch.testing.assert_close(first.mean, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(first.cov, cov, atol=1e-5, rtol=0)
    again = style_stats(sd, "a portrait", **kw)
    assert calls[0] == 4  # loaded from disk, the UNet did not run
    torch.testing.assert_close(again.cov, first.cov)
    assert len(list(tmp_path.glob("style_*.safetensors"))) == 1
    other = style_stats(sd, "a sculpture", **kw)
    assert calls[0] == 8 and other.key != first.key


def test_style_set_is_text_only_with_ip_adapter(tiny_models_root):
    sd = models.load_sd15(tiny_models_root / "sd15")
    plain = generate_style_set(sd, "a portrait", n=2, steps=2, resolution=64, batch=2)
    models.load_ip_adapter_faceid(sd.unet, tiny_models_root / "ip_adapter_faceid", scale=0.7)
    lat = torch.randn(1, 4, 8, 8)
    emb = torch.randn(1, 77, sd.unet.config.cross_attention_dim)
    ident = {"image_embeds": [torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)]}
    with torch.no_grad():
        before = sd.unet(lat, 300, encoder_hidden_states=emb, added_cond_kwargs=ident).sample
    adapted = generate_style_set(sd, "a portrait", n=2, steps=2, resolution=64, batch=2)
    torch.testing.assert_close(adapted, plain, atol=1e-6, rtol=0)  # adapter and its LoRA were off
    with torch.no_grad():
        after = sd.unet(lat, 300, encoder_hidden_states=emb, added_cond_kwargs=ident).sample
        with text_only(sd.unet) as zeros:
            off = sd.unet(lat, 300, encoder_hidden_states=emb, added_cond_kwargs={"image_embeds": zeros}).sample
    torch.testing.assert_close(after, before)  # scale 0.7 and the LoRA are back
    assert {tuple(p.scale) for p in sd.unet.attn_processors.values() if hasattr(p, "to_k_ip")} == {(0.7,)}
    assert (off - before).abs().max() > 1e-4
