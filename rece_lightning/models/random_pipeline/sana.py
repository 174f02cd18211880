"""SANA random pipelines: Gemma-2 + ``SanaTransformer2DModel`` (``caption_projection`` 64 → 16 for ``tiny``,
2304 → 2240 and 20 blocks for SANA 1600M 1024px) and the DC-AE autoencoder.

Tokenizer: Gemma's real tokenizer (256 000 pieces) is not shipped with the repository; :func:`tiny_gemma_tokenizer`
is a stand-in with Gemma's conventions (``GemmaTokenizer``: byte-fallback BPE, ``<pad>`` = 0, ``<eos>`` = 1,
``<bos>`` = 2 put before every text, no end token, ``▁`` for spaces) and a small vocabulary: single characters, all
bytes, and whole-word pieces for the words of the test prompts and of ``SanaPipeline``'s default instruction."""

from __future__ import annotations

import inspect
import re
import string
from pathlib import Path

import torch

from rece_lightning.models.random_pipeline.common import T5_WORDS, Size, make_denoiser, make_module


def tiny_gemma_tokenizer():
    """A ``GemmaTokenizer`` with a small vocabulary built offline (see the module docstring)."""
    from diffusers import SanaPipeline
    from transformers import GemmaTokenizer

    instruction = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    words = dict.fromkeys(T5_WORDS + re.findall(r"[A-Za-z]+", " ".join(instruction)))
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for token in ["\u2581", *string.ascii_letters, *string.digits, *string.punctuation,
                  *(f"<0x{b:02X}>" for b in range(256))]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for piece in [p for word in words for p in (word, "\u2581" + word)]:  # a text's first word has no "▁"
        left = piece[0]
        for char in piece[1:]:
            if left + char not in vocab:
                merges.append((left, char))
                vocab[left + char] = len(vocab)
            left += char
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def build_sana(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """SANA (``SanaPipeline``; ``tokenizer_path`` is unused, the tokenizer is :func:`tiny_gemma_tokenizer`).
    ``tiny``: diffusers' SANA test sizes (``tests/pipelines/sana``: one block, DC-AE with two blocks of 8 channels)
    with Gemma-2 and ``caption_channels`` 64 wide (diffusers' are 8) for the same reason as PixArt-Σ's tiny T5, and
    Gemma's weights drawn with standard deviation 0.2 (not 0.02): otherwise its one attention layer averages the long
    instruction into every row and a text's rows are nearly parallel (cosine ~0.98), unlike the trained model's;
    ``full``: SANA 1600M 1024px (Gemma-2-2B 2304, 20 blocks of width 2240, DC-AE f32c32)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    full = size != "tiny"
    tokenizer = tiny_gemma_tokenizer()
    if full:  # Efficient-Large-Model/Sana_1600M_1024px_diffusers; google/gemma-2-2b-it
        transformer_args = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
                                num_layers=20, num_cross_attention_heads=20, cross_attention_head_dim=112,
                                cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, sample_size=32)
        gemma = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                             num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                             query_pre_attn_scalar=256, sliding_window=4096, attn_implementation="eager")
        blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
        vae_args = dict(latent_channels=32, attention_head_dim=32, encoder_block_types=blocks,
                        decoder_block_types=blocks, encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                        decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                        encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
                        decoder_act_fns=("relu",) * 3 + ("silu",) * 3)
    else:  # diffusers' tests/pipelines/sana/test_sana.py
        transformer_args = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                cross_attention_dim=16, caption_channels=64, sample_size=32)
        gemma = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                             attn_implementation="eager", initializer_range=0.2)
        vae_args = dict(latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)),
                        decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=(1, 1), decoder_norm_types="rms_norm", decoder_act_fns="silu")
    transformer = make_denoiser(lambda: SanaTransformer2DModel(patch_size=1, **transformer_args), size, seed, dtype)
    text_encoder = make_module(lambda: Gemma2Model(gemma), full, seed + 1, dtype)
    vae = make_module(lambda: AutoencoderDC(in_channels=3, downsample_block_type="conv",
                                            upsample_block_type="interpolate", scaling_factor=0.41407, **vae_args),
                      full, seed + 2, dtype)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)
