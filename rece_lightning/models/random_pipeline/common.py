"""What the random-pipeline builders share: the tokenizers (the real CLIP BPE vocabulary shipped here, a tiny
T5 Unigram vocabulary built offline), CLIP text configs, the Stable Diffusion VAE, and the fast random
initialisation of full-size modules built on the meta device."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from rece_lightning.errors import RECEError

CLIP_TOKENIZER = Path(__file__).resolve().parent / "clip-tokenizer"
"""The real CLIP BPE tokenizer (1.5 MB, MIT), package data: the random pipelines work from an installed wheel."""

Size = Literal["tiny", "full", "text"]
"""``tiny``: diffusers' test sizes; ``full``: the released model's shapes; ``text``: ``full`` with the denoiser kept on
the meta device, of which only the text-reading layers are written (:mod:`rece_lightning.models.random_pipeline.text_side`)."""


def default_clip_tokenizer() -> Path:
    """``$RECE_CLIP_TOKENIZER``, else the package's CLIP tokenizer (:data:`CLIP_TOKENIZER`).

    Raises:
        RECEError: none of them holds a CLIP tokenizer (``vocab.json``).
    """
    env = os.environ.get("RECE_CLIP_TOKENIZER")
    candidates = [Path(env)] if env else [CLIP_TOKENIZER]
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


def clip_tokenizer(path: str | Path, pad_with_bang: bool = False):
    """The CLIP tokenizer at ``path``; ``pad_with_bang``: padding with ``!`` as SD 2.x and SDXL's second
    tokenizer do."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path), **({"pad_token": "!"} if pad_with_bang else {}))


def clip_config(tokenizer, width: int, layers: int, heads: int, inter: int, act: str = "quick_gelu",
                 projection: int | None = None):
    """A ``CLIPTextConfig`` of the given shape for ``tokenizer``'s vocabulary and special tokens (``projection``: the
    width of ``CLIPTextModelWithProjection``'s projection)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=width, intermediate_size=inter, num_attention_heads=heads, num_hidden_layers=layers,
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length, hidden_act=act,
        **({"projection_dim": projection} if projection else {}),
    )


def fast_random_init(module: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
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


def make_module(factory, full: bool, seed: int, dtype: torch.dtype) -> nn.Module:
    """``factory()`` as it initialises itself (``tiny``), or built on the meta device and materialised by
    :func:`fast_random_init` (``full``)."""
    if not full:
        return factory()
    with torch.device("meta"):
        module = factory()
    return fast_random_init(module, seed, dtype)


def sd_vae(full: bool, seed: int, dtype: torch.dtype, **extra):
    """The Stable Diffusion VAE: the real shapes (``full``) or diffusers' test sizes; ``extra``: further
    ``AutoencoderKL`` arguments (they override ``latent_channels=4`` and, for ``full``, ``sample_size=512``)."""
    from diffusers import AutoencoderKL

    if full:
        settings = {"latent_channels": 4, "sample_size": 512, **extra}
        return make_module(lambda: AutoencoderKL(
            block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
            **settings), True, seed, dtype)
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        **{"latent_channels": 4, **extra})


def full_flow_vae(seed: int, dtype: torch.dtype, scaling_factor: float, shift_factor: float):
    """The 16-channel VAE of the flow-matching pipelines at its real shapes (SD3, Flux, HiDream; each release has
    its own scaling and shift): the Stable Diffusion VAE without quant convs, sample size 1024."""
    return sd_vae(True, seed, dtype, latent_channels=16, sample_size=1024, use_quant_conv=False,
                  use_post_quant_conv=False, scaling_factor=scaling_factor, shift_factor=shift_factor)


def make_denoiser(factory, size: Size, seed: int, dtype: torch.dtype) -> nn.Module:
    """The denoiser: as :func:`make_module`, except that for ``size="text"`` it stays on the meta device (no memory;
    only its text-reading layers are materialised when the folder is written)."""
    if size == "text":
        with torch.device("meta"):
            return factory()
    return make_module(factory, size != "tiny", seed, dtype)


def make_t5_config(size_full: bool, vocab_size: int = 32128, d_model: int = 32):
    """The T5 encoder of the text-to-image models: T5-XXL's (``size_full``: d_model 4096, 24 layers, gated GELU) or
    diffusers' tiny test T5 of width ``d_model`` (2 layers)."""
    from transformers import T5Config

    if size_full:
        return T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, is_encoder_decoder=False, use_cache=False)


def tiny_flow_vae(latent_channels: int):
    """diffusers' tiny test VAE of the flow-matching pipelines (Flux, SD3, HiDream): one block, no quant convs."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
