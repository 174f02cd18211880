"""Architectures of the testbed model: tiny AutoencoderKL, UNet, scheduler."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from .world import IMAGE_SIZE

LATENT_CHANNELS: int = 4
LATENT_SIZE: int = IMAGE_SIZE // 2
TEXT_DIM: int = 384


def build_vae() -> AutoencoderKL:
    """A x2-downsampling KL autoencoder: 32x32x3 images <-> 16x16x4 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    """Small text-conditional UNet over 16x16x4 latents.

    Levels 16x16, 8x8 and 4x4 (32, 64, 128 channels); as in SDXL the
    highest-resolution level has no attention, the 8x8 and 4x4 levels and the mid
    block use standard diffusers transformer blocks whose ``attn2`` cross-attention
    (``to_k`` / ``to_v`` Linear layers, 384 -> inner dim) reads the text states.
    """
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,  # diffusers' legacy name: number of heads
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    """DDIM sampler over the 1000-step scaled-linear DDPM schedule used in training."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
