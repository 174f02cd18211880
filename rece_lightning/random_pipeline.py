"""Randomly initialised Stable-Diffusion-shaped pipelines, for tests and benchmarks (no weights are downloaded).

``tiny`` follows diffusers' own pipeline tests (``block_out_channels=(4, 8)``, width 32); ``sd14`` has exactly
Stable Diffusion 1.4's shapes (UNet 320/640/1280/1280 with 16 cross-attention layers of width 768, a 12-layer
CLIP-L text encoder). ``sd2`` variants use width 1024 and the SD 2.x tokenizer convention (pad with ``!``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

Shape = Literal["tiny", "tiny-sd2", "sd14"]


def build_random_pipeline(tokenizer_path: str | Path, shape: Shape = "tiny", seed: int = 0, dtype=torch.float32):
    """A ``StableDiffusionPipeline`` with random weights and the real CLIP tokenizer found at ``tokenizer_path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    sd2 = shape == "tiny-sd2"
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_path), **({"pad_token": "!"} if sd2 else {}))
    if shape == "sd14":
        width, blocks, heads, text_layers, text_heads, inter = 768, (320, 640, 1280, 1280), 8, 12, 12, 3072
        down = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
        up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=blocks,
            down_block_types=down, up_block_types=up, cross_attention_dim=width, attention_head_dim=heads,
        )
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2, sample_size=512,
        )
    else:
        width, text_layers, text_heads, inter = (32, 2, 4, 37)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=width, norm_num_groups=2, attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        )
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=width, intermediate_size=inter, num_attention_heads=text_heads, num_hidden_layers=text_layers,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        **({"hidden_act": "gelu"} if sd2 else {}),
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
