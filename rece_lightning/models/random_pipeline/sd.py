"""Stable Diffusion 1.x / 2.x random pipelines: one CLIP text encoder, UNet ``attn2`` width 32 (``tiny``), 768
(SD 1.4) or 1024 (SD 2.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from rece_lightning.models.random_pipeline.common import (
    Size,
    clip_config,
    clip_tokenizer,
    make_denoiser,
    make_module,
    sd_vae,
)

Shape = Literal["tiny", "tiny-sd2", "sd14"]


def build_random_pipeline(tokenizer_path: str | Path, shape: Shape = "tiny", seed: int = 0, dtype=torch.float32):
    """A ``StableDiffusionPipeline`` with random weights and the real CLIP tokenizer found at ``tokenizer_path``
    (``tiny``, ``tiny-sd2``: diffusers' test sizes; ``sd14``: Stable Diffusion 1.4's shapes)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
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
        vae = sd_vae(True, seed + 2, dtype)
    else:
        width, text_layers, text_heads, inter = (32, 2, 4, 37)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=width, norm_num_groups=2, attention_head_dim=2,
        )
        vae = sd_vae(False, seed, dtype)
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


def build_sd2(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Stable Diffusion 2.x: ``tiny`` as :func:`build_random_pipeline` ``tiny-sd2``; ``full`` has SD 2.1's shapes
    (OpenCLIP-H text encoder, 23 layers of width 1024; UNet ``attn2`` width 1024, linear projections)."""
    if size == "tiny":
        return build_random_pipeline(tokenizer_path, "tiny-sd2", seed, dtype)
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = clip_tokenizer(tokenizer_path, pad_with_bang=True)
    unet = make_denoiser(lambda: UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True), size, seed, dtype)
    text_encoder = make_module(lambda: CLIPTextModel(clip_config(tokenizer, 1024, 23, 16, 4096, "gelu")), True, seed + 1,
                         dtype)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(unet=unet, vae=sd_vae(True, seed + 2, dtype), text_encoder=text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)




def build_sd14(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Stable Diffusion 1.x: :func:`build_random_pipeline` ``tiny`` or ``sd14`` (Stable Diffusion 1.4's shapes)."""
    return build_random_pipeline(tokenizer_path, "tiny" if size == "tiny" else "sd14", seed, dtype)
