"""Stable Diffusion 3 random pipelines: two CLIP encoders with projection, T5, transformer ``context_embedder``
96 → 32 (``tiny``) or 4096 → 1536 (SD3-medium)."""

from __future__ import annotations

from pathlib import Path

import torch

from rece_lightning.models.random_pipeline.common import (
    Size,
    clip_config,
    clip_tokenizer,
    full_flow_vae,
    make_denoiser,
    make_module,
    make_t5_config,
    tiny_flow_vae,
    tiny_t5_tokenizer,
)


def build_sd3(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Stable Diffusion 3: two CLIP encoders with projection (the second padding with ``!``), T5 and an
    ``SD3Transformer2DModel``. ``tiny``: diffusers' SD3 test sizes (``tests/pipelines/stable_diffusion_3``: CLIP
    width 32, one transformer block of 4 × 8 heads, VAE with one block), except that T5 is 96 wide (diffusers'
    tiny T5 is 32, narrower than the 32 + 32 CLIP features, which the pipeline then crops) so that the CLIP rows are
    zero-padded as in the real model; ``full``: SD3-medium (CLIP-L 768 + OpenCLIP-bigG 1280, T5-XXL 4096, 24 blocks of
    24 × 64 heads, ``context_embedder`` 4096 → 1536, 16 latent channels)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    torch.manual_seed(seed)
    full = size != "tiny"
    tokenizer = clip_tokenizer(tokenizer_path)
    tokenizer_2 = clip_tokenizer(tokenizer_path, pad_with_bang=True)
    tokenizer_3 = tiny_t5_tokenizer()
    if full:  # stabilityai/stable-diffusion-3-medium-diffusers: transformer/config.json
        transformer_args = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
        config_1 = clip_config(tokenizer, 768, 12, 12, 3072, projection=768)
        config_2 = clip_config(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280)
        t5_config = make_t5_config(True)
        vae = full_flow_vae(seed + 4, dtype, scaling_factor=1.5305, shift_factor=0.0609)
    else:  # diffusers' tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py
        transformer_args = dict(sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=96,
                                caption_projection_dim=32, pooled_projection_dim=64)
        config_1 = clip_config(tokenizer, 32, 5, 4, 37, "gelu", projection=32)
        config_2 = clip_config(tokenizer_2, 32, 5, 4, 37, "gelu", projection=32)
        t5_config = make_t5_config(False, len(tokenizer_3), 96)
        vae = tiny_flow_vae(4)
    transformer = make_denoiser(lambda: SD3Transformer2DModel(**transformer_args), size, seed, dtype)
    text_encoder = make_module(lambda: CLIPTextModelWithProjection(config_1), full, seed + 1, dtype)
    text_encoder_2 = make_module(lambda: CLIPTextModelWithProjection(config_2), full, seed + 2, dtype)
    text_encoder_3 = make_module(lambda: T5EncoderModel(t5_config), full, seed + 3, dtype)
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                                    transformer=transformer)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


