"""Randomly initialised pipelines of every supported family, for tests and benchmarks (no weights are downloaded).

    python -m rece_lightning.random_pipeline --family {sd14,sd2,sdxl,flux,sd3} --size {tiny,full} OUT

writes a diffusers folder that ``DiffusionPipeline.from_pretrained(OUT)`` loads. ``tiny`` follows diffusers' own
pipeline tests (``tests/pipelines/*``: ``block_out_channels=(4, 8)``, text width 32; a few MB, most of it the real
CLIP vocabulary's embedding table); ``full`` has the real layer shapes of Stable Diffusion 1.4, 2.1, SDXL base 1.0,
FLUX.1-dev and SD3-medium (``attn2`` width 768 / 1024 / 2048, ``context_embedder`` 4096 → 3072 / 1536), for
benchmarks.

Tokenizers: the real CLIP BPE vocabulary (``--clip-tokenizer``, default ``$RECE_CLIP_TOKENIZER``, else the repository's
test fixture), SD 2.x and SDXL's second tokenizer padding with ``!`` as the released models do; Flux's T5 tokenizer
and SD3's ``tokenizer_3`` are a tiny Unigram vocabulary built here (:func:`tiny_t5_tokenizer`, ``</s>``-terminated,
``<pad>`` = 0 like T5's), so its token ids differ from the real T5's but its conventions are the same.
"""

from __future__ import annotations

import argparse
import os
import string
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from rece_lightning.errors import RECEError

Shape = Literal["tiny", "tiny-sd2", "sd14"]
Family = Literal["sd14", "sd2", "sdxl", "flux", "sd3"]
Size = Literal["tiny", "full"]
FAMILY_NAMES: tuple[str, ...] = ("sd14", "sd2", "sdxl", "flux", "sd3")
REPO = Path(__file__).resolve().parents[1]
TOKENIZER_CANDIDATES = (REPO / "tests" / "fixtures" / "clip-tokenizer", REPO.parent / "shared" / "fixtures" / "clip-tokenizer")


def default_clip_tokenizer() -> Path:
    """``$RECE_CLIP_TOKENIZER``, else the repository's CLIP tokenizer fixture.

    Raises:
        RECEError: none of them holds a CLIP tokenizer (``vocab.json``).
    """
    env = os.environ.get("RECE_CLIP_TOKENIZER")
    candidates = [Path(env)] if env else list(TOKENIZER_CANDIDATES)
    for path in candidates:
        if (path / "vocab.json").is_file():
            return path
    raise RECEError("no CLIP tokenizer found (looked in " + ", ".join(map(str, candidates)) + "); pass "
                    "--clip-tokenizer DIR or set RECE_CLIP_TOKENIZER to a folder holding vocab.json and merges.txt")


# words of the prompts the tests and presets use, so that they are single T5 pieces; anything else falls back to
# characters (never <unk>)
T5_WORDS = ["a", "an", "the", "of", "in", "on", "at", "with", "by", "and", "or", "to", "is", "photo", "painting", "portrait", "picture", "image", "art", "artwork", "style", "nudity", "nude", "naked", "sexual", "person", "woman", "man", "people", "girl", "boy", "van", "gogh", "Van", "Gogh", "starry", "night", "cat", "dog", "church", "parachute", "car", "tree", "house", "city", "street", "beach", "sunset", "mountain", "river", "flower", "red", "blue", "green", "yellow", "black", "white", "striped", "triangle", "circle", "square", "sign", "drawing", "sketch", "oil", "canvas", "by", "famous", "artist", "painter"]


def tiny_t5_tokenizer(max_length: int = 512):
    """A T5 tokenizer (``T5Tokenizer``, Unigram model) with a tiny vocabulary built offline: ``<pad>`` = 0,
    ``</s>`` = 1, ``<unk>`` = 2, ``▁``, single characters, and ``▁word`` pieces for :data:`T5_WORDS`."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("\u2581" + w, -1.0) for w in dict.fromkeys(T5_WORDS)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    tokenizer.model_max_length = max_length
    return tokenizer


def _clip_tokenizer(path: str | Path, pad_with_bang: bool = False):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path), **({"pad_token": "!"} if pad_with_bang else {}))


def _clip_config(tokenizer, width: int, layers: int, heads: int, inter: int, act: str = "quick_gelu",
                 projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=width, intermediate_size=inter, num_attention_heads=heads, num_hidden_layers=layers,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, hidden_act=act,
        **({"projection_dim": projection} if projection else {}),
    )


def _fast_random_init(module: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
    """Materialise a module built on the meta device in ``dtype``: matrices N(0, 0.02), norms 1, biases 0 (full-size
    benchmarks only need the shapes; this is ~10× faster than the default initialisers on a CPU)."""
    module = module.to_empty(device="cpu").to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(dtype))
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
        for _, buffer in module.named_buffers():
            if buffer.is_floating_point():
                buffer.zero_()
    return module


def _make(factory, full: bool, seed: int, dtype: torch.dtype) -> nn.Module:
    if not full:
        return factory()
    with torch.device("meta"):
        module = factory()
    return _fast_random_init(module, seed, dtype)


def _sd_vae(full: bool, seed: int, dtype: torch.dtype, **extra):
    from diffusers import AutoencoderKL

    if full:
        return _make(lambda: AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=extra.pop(
                "latent_channels", 4), down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, sample_size=512, **extra), True, seed, dtype)
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=extra.pop("latent_channels", 4),
        norm_num_groups=2, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        **extra)


def build_random_pipeline(tokenizer_path: str | Path, shape: Shape = "tiny", seed: int = 0, dtype=torch.float32):
    """A ``StableDiffusionPipeline`` with random weights and the real CLIP tokenizer found at ``tokenizer_path``
    (``tiny``, ``tiny-sd2``: diffusers' test sizes; ``sd14``: Stable Diffusion 1.4's shapes)."""
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


def build_sd2(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Stable Diffusion 2.x: ``tiny`` as :func:`build_random_pipeline` ``tiny-sd2``; ``full`` has SD 2.1's shapes
    (OpenCLIP-H text encoder, 23 layers of width 1024; UNet ``attn2`` width 1024, linear projections)."""
    if size == "tiny":
        return build_random_pipeline(tokenizer_path, "tiny-sd2", seed, dtype)
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _clip_tokenizer(tokenizer_path, pad_with_bang=True)
    unet = _make(lambda: UNet2DConditionModel(
        sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True), True, seed, dtype)
    text_encoder = _make(lambda: CLIPTextModel(_clip_config(tokenizer, 1024, 23, 16, 4096, "gelu")), True, seed + 1,
                         dtype)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(unet=unet, vae=_sd_vae(True, seed + 2, dtype), text_encoder=text_encoder,
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_sdxl(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """SDXL: two CLIP encoders (the second with a projection, padding with ``!``) and a UNet with ``text_time``
    added conditioning. ``tiny``: diffusers' SDXL test sizes (``attn2`` width 32 + 32 = 64); ``full``: SDXL base 1.0
    (CLIP-L 768 + OpenCLIP-bigG 1280 = 2048, 70 ``attn2`` layers)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    full = size == "full"
    tokenizer = _clip_tokenizer(tokenizer_path)
    tokenizer_2 = _clip_tokenizer(tokenizer_path, pad_with_bang=True)
    if full:
        unet_args = dict(
            sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        config_1 = _clip_config(tokenizer, 768, 12, 12, 3072)
        config_2 = _clip_config(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280)
    else:
        unet_args = dict(
            sample_size=16, layers_per_block=2, block_out_channels=(4, 8),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), cross_attention_dim=64,
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, norm_num_groups=1)
        config_1 = _clip_config(tokenizer, 32, 2, 4, 37, "gelu", projection=32)
        config_2 = _clip_config(tokenizer_2, 32, 2, 4, 37, "gelu", projection=32)
    unet = _make(lambda: UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True,
                                              addition_embed_type="text_time", **unet_args), full, seed, dtype)
    text_encoder = _make(lambda: CLIPTextModel(config_1), full, seed + 1, dtype)
    text_encoder_2 = _make(lambda: CLIPTextModelWithProjection(config_2), full, seed + 2, dtype)
    vae = _sd_vae(full, seed + 3, dtype, **({"scaling_factor": 0.13025} if full else {}))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


def build_flux(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Flux: CLIP (pooled) + T5 encoders and a ``FluxTransformer2DModel``. ``tiny``: diffusers' Flux test sizes
    (T5 width 32); ``full``: FLUX.1-dev (T5-XXL width 4096, 19 + 38 blocks of width 3072, guidance embedding)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    full = size == "full"
    tokenizer = _clip_tokenizer(tokenizer_path)
    tokenizer_2 = tiny_t5_tokenizer()
    if full:
        transformer_args = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        clip_config = _clip_config(tokenizer, 768, 12, 12, 3072)
        t5_config = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                             feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        vae = _make(lambda: AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
            shift_factor=0.1159), True, seed + 3, dtype)
    else:
        transformer_args = dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=(4, 4, 8))
        clip_config = _clip_config(tokenizer, 32, 2, 4, 37, "gelu", projection=32)
        t5_config = T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                             relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False)
        vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                            latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035)
    transformer = _make(lambda: FluxTransformer2DModel(**transformer_args), full, seed, dtype)
    text_encoder = _make(lambda: CLIPTextModel(clip_config), full, seed + 1, dtype)
    text_encoder_2 = _make(lambda: T5EncoderModel(t5_config), full, seed + 2, dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        transformer=transformer)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


def build_sd3(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """Stable Diffusion 3: two CLIP encoders with projection (the second padding with ``!``), T5 and an
    ``SD3Transformer2DModel``. ``tiny``: diffusers' SD3 test sizes (``tests/pipelines/stable_diffusion_3``: CLIP
    width 32, one transformer block of 4 × 8 heads, VAE with one block), except that T5 is 96 wide (diffusers'
    tiny T5 is 32, narrower than the 32 + 32 CLIP features, which the pipeline then crops) so that the CLIP rows are
    zero-padded as in the real model; ``full``: SD3-medium (CLIP-L 768 + OpenCLIP-bigG 1280, T5-XXL 4096, 24 blocks of
    24 × 64 heads, ``context_embedder`` 4096 → 1536, 16 latent channels)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    full = size == "full"
    tokenizer = _clip_tokenizer(tokenizer_path)
    tokenizer_2 = _clip_tokenizer(tokenizer_path, pad_with_bang=True)
    tokenizer_3 = tiny_t5_tokenizer()
    if full:  # stabilityai/stable-diffusion-3-medium-diffusers: transformer/config.json
        transformer_args = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
        config_1 = _clip_config(tokenizer, 768, 12, 12, 3072, projection=768)
        config_2 = _clip_config(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280)
        t5_config = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                             feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        vae = _make(lambda: AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=16,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305,
            shift_factor=0.0609), True, seed + 4, dtype)
    else:  # diffusers' tests/pipelines/stable_diffusion_3/test_pipeline_stable_diffusion_3.py
        transformer_args = dict(sample_size=32, patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                attention_head_dim=8, num_attention_heads=4, joint_attention_dim=96,
                                caption_projection_dim=32, pooled_projection_dim=64)
        config_1 = _clip_config(tokenizer, 32, 5, 4, 37, "gelu", projection=32)
        config_2 = _clip_config(tokenizer_2, 32, 5, 4, 37, "gelu", projection=32)
        t5_config = T5Config(vocab_size=len(tokenizer_3), d_model=96, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                             relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False)
        vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                            latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035)
    transformer = _make(lambda: SD3Transformer2DModel(**transformer_args), full, seed, dtype)
    text_encoder = _make(lambda: CLIPTextModelWithProjection(config_1), full, seed + 1, dtype)
    text_encoder_2 = _make(lambda: CLIPTextModelWithProjection(config_2), full, seed + 2, dtype)
    text_encoder_3 = _make(lambda: T5EncoderModel(t5_config), full, seed + 3, dtype)
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                                    transformer=transformer)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)


def build_family(family: Family, size: Size = "tiny", tokenizer_path: str | Path | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
    """A random pipeline of ``family`` (``sd14``, ``sd2``, ``sdxl``, ``flux``, ``sd3``) and ``size`` (``tiny``,
    ``full``)."""
    tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else default_clip_tokenizer()
    if family == "sd14":
        return build_random_pipeline(tokenizer_path, "tiny" if size == "tiny" else "sd14", seed, dtype)
    builders = {"sd2": build_sd2, "sdxl": build_sdxl, "flux": build_flux, "sd3": build_sd3}
    if family not in builders:
        raise RECEError(f"unknown family {family!r}; choose from {list(FAMILY_NAMES)}")
    return builders[family](tokenizer_path, size, seed, dtype)


def main(argv: list[str] | None = None) -> None:
    """``python -m rece_lightning.random_pipeline --family F --size S OUT``."""
    parser = argparse.ArgumentParser(description="Write a randomly initialised diffusers pipeline folder.")
    parser.add_argument("--family", choices=FAMILY_NAMES, default="sd14")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="weights dtype (default: float32 for tiny, float16 for full; bfloat16 suits Flux)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-tokenizer", default=None, help="CLIP tokenizer folder (default: $RECE_CLIP_TOKENIZER "
                        "or the repository's test fixture)")
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
    pipe.save_pretrained(out, safe_serialization=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote a random {args.family} pipeline ({args.size}, {args.dtype or dtype}) to {out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
