"""Randomly initialised pipelines of every supported family, for tests and benchmarks (no weights are downloaded).

    python -m rece_lightning.models.random_pipeline --family {sd14,sd2,sdxl,flux,sd3,hidream,pixart-sigma,sana} --size {tiny,full,text} OUT

writes a diffusers folder that ``DiffusionPipeline.from_pretrained(OUT)`` loads. ``tiny`` follows diffusers' own
pipeline tests (``tests/pipelines/*``: ``block_out_channels=(4, 8)``, text width 32; a few MB, most of it the real
CLIP vocabulary's embedding table); ``full`` has the real layer shapes of Stable Diffusion 1.4, 2.1, SDXL base 1.0,
FLUX.1-dev, SD3-medium, HiDream-I1, PixArt-Σ-XL-2-1024-MS and SANA 1600M (``attn2`` width 768 / 1024 / 2048,
``context_embedder`` 4096 → 3072 / 1536, ``caption_projection`` 4096 → 2560, ``caption_projection.linear_1``
4096 → 1152 / 2304 → 2240), for benchmarks; ``text`` is ``full`` with the denoiser reduced to its text-reading layers
(:mod:`.text_side`: enough to erase, not to generate; for models whose denoiser does not fit in memory). One module per
family holds its builder (:mod:`.sd`, :mod:`.sdxl`, :mod:`.flux`, :mod:`.sd3`, :mod:`.hidream`, :mod:`.pixart`,
:mod:`.sana`); what they
share is in :mod:`.common`; a new family is one module and one entry of :data:`BUILDERS`.

Tokenizers: the real CLIP BPE vocabulary (``--clip-tokenizer``, default ``$RECE_CLIP_TOKENIZER``, else
``clip-tokenizer/`` shipped in this package), SD 2.x and SDXL's second tokenizer padding with ``!`` as the released models do; Flux's T5 tokenizer
and SD3's ``tokenizer_3`` are a tiny Unigram vocabulary built here (:func:`tiny_t5_tokenizer`, ``</s>``-terminated,
``<pad>`` = 0 like T5's), so its token ids differ from the real T5's but its conventions are the same; SANA's Gemma
tokenizer is a stand-in of the same kind (:func:`.sana.tiny_gemma_tokenizer`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rece_lightning.errors import RECEError
from rece_lightning.models.random_pipeline.common import Size, default_clip_tokenizer, tiny_t5_tokenizer
from rece_lightning.models.random_pipeline.flux import build_flux
from rece_lightning.models.random_pipeline.hidream import build_hidream
from rece_lightning.models.random_pipeline.pixart import build_pixart_sigma
from rece_lightning.models.random_pipeline.sana import build_sana
from rece_lightning.models.random_pipeline.sd import build_random_pipeline, build_sd2, build_sd14
from rece_lightning.models.random_pipeline.sd3 import build_sd3
from rece_lightning.models.random_pipeline.sdxl import build_sdxl
from rece_lightning.models.random_pipeline.text_side import save_text_side

__all__ = ["BUILDERS", "FAMILY_NAMES", "build_family", "build_random_pipeline", "default_clip_tokenizer", "main",
           "save_text_side", "tiny_t5_tokenizer"]

BUILDERS: dict[str, Callable[..., Any]] = {
    "sd14": build_sd14,
    "sd2": build_sd2,
    "sdxl": build_sdxl,
    "flux": build_flux,
    "sd3": build_sd3,
    "hidream": build_hidream,
    "pixart-sigma": build_pixart_sigma,
    "sana": build_sana,
}
"""``family name -> builder(tokenizer_path, size, seed, dtype)``: every random pipeline this module makes."""

FAMILY_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build_family(family: str, size: Size = "tiny", tokenizer_path: str | Path | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
    """A random pipeline of ``family`` (a key of :data:`BUILDERS`) and ``size`` (``tiny``, ``full``)."""
    if family not in BUILDERS:
        raise RECEError(f"unknown family {family!r}; choose from {list(FAMILY_NAMES)}")
    tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else default_clip_tokenizer()
    return BUILDERS[family](tokenizer_path, size, seed, dtype)


def main(argv: list[str] | None = None) -> None:
    """``python -m rece_lightning.models.random_pipeline --family F --size S OUT``."""
    parser = argparse.ArgumentParser(description="Write a randomly initialised diffusers pipeline folder.")
    parser.add_argument("--family", choices=FAMILY_NAMES, default="sd14")
    parser.add_argument("--size", choices=("tiny", "full", "text"), default="tiny",
                        help="text: full shapes, the denoiser reduced to its text-reading layers (erasing only)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="weights dtype (default: float32 for tiny, float16 for full; bfloat16 suits Flux)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-tokenizer", default=None, help="CLIP tokenizer folder (default: $RECE_CLIP_TOKENIZER "
                        "or the tokenizer shipped with the package)")
    parser.add_argument("out", help="output folder (must not exist or be empty)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} exists and is not empty")
    dtype = getattr(torch, args.dtype or ("float32" if args.size == "tiny" else "float16"))
    try:
        pipe = build_family(args.family, args.size, args.clip_tokenizer, args.seed, dtype)
    except RECEError as err:
        parser.exit(2, f"random_pipeline: error: {err}\n")
    if args.size == "text":
        save_text_side(pipe, out, args.seed)
    else:
        pipe.save_pretrained(out, safe_serialization=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote a random {args.family} pipeline ({args.size}, {args.dtype or dtype}) to {out}: {size / 1e6:.1f} MB")

