"""Tiny CLIP text side: a BPE tokenizer folder generated in code and a 1-layer text encoder.

This module's one job is the text conditioning shared by the SD1.5 and MVDream factories: a
CLIP tokenizer whose vocabulary is built here (byte symbols plus a few merges) and a tiny
``CLIPTextModel`` sized to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import _seeded, _write_json


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses (GPT-2's table)."""
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    )
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


#: Merges of the tiny tokenizer: enough to make a few common prompt words single tokens.
_TINY_MERGES = [
    "t h",
    "th e</w>",
    "o f</w>",
    "i n</w>",
    "p h",
    "ph o",
    "pho t",
    "phot o</w>",
    "s t",
    "st y",
    "sty l",
    "styl e</w>",
    "p o",
    "po r",
    "por t",
    "port r",
    "portr a",
    "portra i",
    "portrai t</w>",
]


def save_tiny_clip_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer folder (``vocab.json``, ``merges.txt``, configs) generated in code.

    Vocabulary: the 256 byte symbols, the same with the end-of-word mark ``</w>``, one token
    per merge in :data:`_TINY_MERGES`, then ``<|startoftext|>`` and ``<|endoftext|>``, as in
    the real CLIP vocabulary (49,408 tokens there). Any text tokenises (it falls back to
    bytes); prompts are padded to 77 tokens like SD's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    for sym in alphabet:
        vocab[sym + "</w>"] = len(vocab)
    for merge in _TINY_MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TINY_MERGES) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(
        folder / "tokenizer_config.json",
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special},
    )
    return folder


def tiny_vocab_size(folder: Path) -> int:
    return len(json.loads((Path(folder) / "vocab.json").read_text()))


def _tiny_text_encoder(vocab_size: int, hidden: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=hidden,
    )
    return CLIPTextModel(cfg).eval()


def save_tiny_clip(folder: Path, *, seed: int = 70, image_size: int = 32) -> Path:
    """A tiny random CLIP (``CLIPModel`` + ``CLIPProcessor``) in the layout of the registry's
    ``clip_vit_l14`` entry: config.json, model.safetensors, preprocessor_config.json and the
    tokenizer files. Same classes as ViT-L/14, at a width of 32."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = save_tiny_clip_tokenizer(Path(folder))
    vocab = tiny_vocab_size(folder)
    _seeded(seed)
    text = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": vocab - 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
    }
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(folder)  # the files load as the real ones do
    return folder
