"""PixArt-Σ random pipelines: T5 + ``PixArtTransformer2DModel`` (``caption_projection`` 64 → 24 → 24 for ``tiny``,
4096 → 1152 → 1152 and 28 blocks for PixArt-Σ-XL-2-1024-MS) and the SDXL VAE."""

from __future__ import annotations

from pathlib import Path

import torch

from rece_lightning.models.random_pipeline.common import (
    Size,
    make_denoiser,
    make_module,
    make_t5_config,
    sd_vae,
    tiny_t5_tokenizer,
)


def build_pixart_sigma(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """PixArt-Σ (``PixArtSigmaPipeline``; ``tokenizer_path`` is unused: the T5 tokenizer is
    :func:`~rece_lightning.models.random_pipeline.common.tiny_t5_tokenizer`). ``tiny``: diffusers' PixArt test sizes
    (``tests/pipelines/pixart_sigma``: 2 blocks of 3 × 8 heads, ``cross_attention_dim`` 24) except that T5 is 64 wide
    (diffusers' tiny T5 is 32), so that a concept, its RECE embedding and two preserved prompts of 8 tokens have
    independent rows; ``full``: PixArt-Σ-XL-2-1024-MS (T5-XXL 4096, 28 blocks of 16 × 72 heads)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    full = size != "tiny"
    tokenizer = tiny_t5_tokenizer(max_length=300)
    if full:  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: transformer/config.json
        transformer_args = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                num_layers=28, cross_attention_dim=1152, caption_channels=4096, sample_size=128,
                                patch_size=2, interpolation_scale=2, use_additional_conditions=False)
        t5_config = make_t5_config(True)
    else:  # diffusers' tests/pipelines/pixart_sigma/test_pixart.py
        transformer_args = dict(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, cross_attention_dim=24, caption_channels=64, sample_size=8, patch_size=2)
        t5_config = make_t5_config(False, len(tokenizer), 64)
    transformer = make_denoiser(lambda: PixArtTransformer2DModel(
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, **transformer_args), size, seed, dtype)
    text_encoder = make_module(lambda: T5EncoderModel(t5_config), full, seed + 1, dtype)
    vae = sd_vae(full, seed + 2, dtype, **({"scaling_factor": 0.13025} if full else {}))
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)
