"""SDXL random pipelines: two CLIP encoders (the second with a projection), UNet ``attn2`` width 64 (``tiny``)
or 2048 (SDXL base 1.0)."""

from __future__ import annotations

from pathlib import Path

import torch

from rece_lightning.models.random_pipeline.common import (
    Size,
    clip_config,
    clip_tokenizer,
    make_denoiser,
    make_module,
    sd_vae,
)


def build_sdxl(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """SDXL: two CLIP encoders (the second with a projection, padding with ``!``) and a UNet with ``text_time``
    added conditioning. ``tiny``: diffusers' SDXL test sizes (``attn2`` width 32 + 32 = 64); ``full``: SDXL base 1.0
    (CLIP-L 768 + OpenCLIP-bigG 1280 = 2048, 70 ``attn2`` layers)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    full = size != "tiny"
    tokenizer = clip_tokenizer(tokenizer_path)
    tokenizer_2 = clip_tokenizer(tokenizer_path, pad_with_bang=True)
    if full:
        unet_args = dict(
            sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        config_1 = clip_config(tokenizer, 768, 12, 12, 3072)
        config_2 = clip_config(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280)
    else:
        unet_args = dict(
            sample_size=16, layers_per_block=2, block_out_channels=(4, 8),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=64,
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, norm_num_groups=1)
        config_1 = clip_config(tokenizer, 32, 2, 4, 37, "gelu", projection=32)
        config_2 = clip_config(tokenizer_2, 32, 2, 4, 37, "gelu", projection=32)
    unet = make_denoiser(lambda: UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True,
                                                addition_embed_type="text_time", **unet_args), size, seed, dtype)
    text_encoder = make_module(lambda: CLIPTextModel(config_1), full, seed + 1, dtype)
    text_encoder_2 = make_module(lambda: CLIPTextModelWithProjection(config_2), full, seed + 2, dtype)
    vae = sd_vae(full, seed + 3, dtype, **({"scaling_factor": 0.13025} if full else {}))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


