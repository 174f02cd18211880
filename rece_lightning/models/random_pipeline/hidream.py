"""HiDream random pipelines (``HiDreamImagePipeline``): CLIP-L and CLIP-G (pooled), T5 and Llama-3.1 encoders and a
``HiDreamImageTransformer2DModel`` whose ``caption_projection`` layers read the text.

``tiny``: diffusers' HiDream test sizes (``tests/pipelines/hidream_image``: CLIP width 32, one double and two single
blocks of 16 × 8 heads, T5 width 32, Llama width 64 so that the two token spaces differ, ``llama_layers``
``(0, 1, 1)`` so that two layers share one Llama space, Llama weights drawn with standard deviation 0.5 so that its
hidden states, like the real model's, are far longer than UCE's λ and the edit is not all regularisation); ``full``: HiDream-I1 (``HiDream-ai/HiDream-I1-Full``: 16 double + 32 single
blocks of 20 × 128 heads, T5-XXL 4096, Llama-3.1-8B 4096 with ``llama_layers`` 0 … 31 then 31 sixteen times,
``caption_projection`` 4096 → 2560, 16 latent channels).

The Llama tokenizer is a tiny byte-level BPE built here (:func:`tiny_llama_tokenizer`): ``<|begin_of_text|>`` first,
no end token, padding with ``<|eot_id|>`` (``HiDreamImagePipeline`` sets ``pad_token = eos_token``), as Llama 3.1's;
its ids differ from the real vocabulary's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rece_lightning.models.random_pipeline.common import (
    T5_WORDS,
    clip_config,
    clip_tokenizer,
    full_flow_vae,
    make_module,
    make_t5_config,
    tiny_flow_vae,
    tiny_t5_tokenizer,
)
from rece_lightning.models.random_pipeline.sd import Size

BEGIN, EOT = "<|begin_of_text|>", "<|eot_id|>"


def tiny_llama_tokenizer(max_length: int = 131072):
    """A Llama-3-style ``PreTrainedTokenizerFast``: byte-level BPE trained offline on :data:`T5_WORDS` (every byte is
    a token, so nothing is unknown), ``<|begin_of_text|>`` prepended, ``<|eot_id|>`` as end and padding token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BEGIN, EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" " + " ".join(T5_WORDS)] * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN} $A", pair=f"{BEGIN} $A $B", special_tokens=[(BEGIN, tokenizer.token_to_id(BEGIN))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BEGIN, eos_token=EOT, pad_token=EOT,
                                   model_max_length=max_length)


def build_hidream(tokenizer_path: str | Path, size: Size = "tiny", seed: int = 0, dtype=torch.float32):
    """HiDream-I1 (see the module docstring)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )
    from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM, T5EncoderModel

    torch.manual_seed(seed)
    full = size != "tiny"  # "text": the full shapes, the denoiser reduced to its text-reading layers
    tokenizer = clip_tokenizer(tokenizer_path)
    tokenizer_2 = clip_tokenizer(tokenizer_path, pad_with_bang=True)
    tokenizer_3 = tiny_t5_tokenizer(128)
    tokenizer_4 = tiny_llama_tokenizer()
    special = dict(bos_token_id=tokenizer_4.bos_token_id, eos_token_id=tokenizer_4.eos_token_id,
                   pad_token_id=tokenizer_4.pad_token_id)
    if full:  # HiDream-ai/HiDream-I1-Full: transformer/config.json; meta-llama/Llama-3.1-8B-Instruct
        transformer_args = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32,
                                attention_head_dim=128, num_attention_heads=20, caption_channels=[4096, 4096],
                                text_emb_dim=2048, num_routed_experts=4, num_activated_experts=2,
                                axes_dims_rope=(64, 32, 32), max_resolution=(128, 128),
                                llama_layers=[*range(32), *[31] * 16])
        config_1 = clip_config(tokenizer, 768, 12, 12, 3072, projection=768)
        config_2 = clip_config(tokenizer_2, 1280, 32, 20, 5120, "gelu", projection=1280)
        t5_config = make_t5_config(True)
        llama_config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                                   max_position_embeddings=131072, rope_theta=500000.0, **special)
        vae = full_flow_vae(seed + 5, dtype, scaling_factor=0.3611, shift_factor=0.1159)
    else:  # diffusers' tests/pipelines/hidream_image/test_pipeline_hidream.py
        transformer_args = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=2,
                                attention_head_dim=8, num_attention_heads=16, caption_channels=[32, 64],
                                text_emb_dim=64, num_routed_experts=4, num_activated_experts=2,
                                axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1, 1))
        config_1 = clip_config(tokenizer, 32, 2, 4, 37, "gelu", projection=32)
        config_2 = clip_config(tokenizer_2, 32, 2, 4, 37, "gelu", projection=32)
        t5_config = make_t5_config(False, len(tokenizer_3), 32)
        llama_config = LlamaConfig(vocab_size=len(tokenizer_4), hidden_size=64, intermediate_size=37,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, initializer_range=0.5, **special)
        vae = tiny_flow_vae(4)
    transformer = make_module(lambda: HiDreamImageTransformer2DModel(**transformer_args), full, seed, dtype)
    text_encoder = make_module(lambda: CLIPTextModelWithProjection(config_1), full, seed + 1, dtype)
    text_encoder_2 = make_module(lambda: CLIPTextModelWithProjection(config_2), full, seed + 2, dtype)
    text_encoder_3 = make_module(lambda: T5EncoderModel(t5_config), full, seed + 3, dtype)
    text_encoder_4 = make_module(lambda: LlamaForCausalLM(llama_config), full, seed + 4, dtype)
    pipe = HiDreamImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                                tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
                                text_encoder_4=text_encoder_4, tokenizer_4=tokenizer_4, transformer=transformer)
    return pipe if full or dtype == torch.float32 else pipe.to(dtype=dtype)
