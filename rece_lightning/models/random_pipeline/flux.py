"""Flux random pipelines: CLIP (pooled) + T5 encoders, transformer ``context_embedder`` 32 → 32 (``tiny``) or
4096 → 3072 (FLUX.1-dev)."""

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


def build_flux(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Flux: CLIP (pooled) + T5 encoders and a ``FluxTransformer2DModel``. ``tiny``: diffusers' Flux test sizes
    (T5 width 32); ``full``: FLUX.1-dev (T5-XXL width 4096, 19 + 38 blocks of width 3072, guidance embedding)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    torch.manual_seed(seed)
    full = size != "tiny"
    tokenizer = clip_tokenizer(tokenizer_path)
    tokenizer_2 = tiny_t5_tokenizer()
    if full:
        transformer_args = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        text_config = clip_config(tokenizer, 768, 12, 12, 3072)
        t5_config = make_t5_config(True)
        vae = full_flow_vae(seed + 3, dtype, scaling_factor=0.3611, shift_factor=0.1159)
    else:
        transformer_args = dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=(4, 4, 8))
        text_config = clip_config(tokenizer, 32, 2, 4, 37, "gelu", projection=32)
        t5_config = make_t5_config(False, len(tokenizer_2), 32)
        vae = tiny_flow_vae(1)
    transformer = make_denoiser(lambda: FluxTransformer2DModel(**transformer_args), size, seed, dtype)
    text_encoder = make_module(lambda: CLIPTextModel(text_config), full, seed + 1, dtype)
    text_encoder_2 = make_module(lambda: T5EncoderModel(t5_config), full, seed + 2, dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


