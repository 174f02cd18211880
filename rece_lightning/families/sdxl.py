"""SDXL: the UNet's cross-attention reads the concatenated penultimate hidden states of two CLIP text encoders.

``StableDiffusionXLPipeline.encode_prompt`` (diffusers) tokenises each text with both tokenizers (padded to 77;
``tokenizer_2`` pads with ``!``), runs both encoders with ``output_hidden_states=True`` and concatenates their
``hidden_states[-2]`` into ``(77, 768 + 1280 = 2048)`` embeddings; the pooled embedding is the projected output of
the second encoder (``text_embeds``), which the UNet reads through its added time-text embedding, not through
``attn2``. The text-reading layers are the 70 ``attn2.to_k`` / ``attn2.to_v`` pairs of the UNet, as in SD 1.x/2.x
(github.com/rohitgandikota/unified-concept-editing ``trainscripts/uce_sd_erase.py`` edits the same layers with the
same embeddings). Token counts come from the first tokenizer, as in that script.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rece_lightning.cross_attention import Projection, find_projections
from rece_lightning.errors import RECEError
from rece_lightning.family import ModelFamily
from rece_lightning.text import EncodedText, TextEncoder


class SDXLTextEncoder(TextEncoder):
    """Both CLIP encoders of SDXL, encoded as ``StableDiffusionXLPipeline.encode_prompt`` does (``clip_skip=None``).

    Args:
        tokenizers: ``[tokenizer, tokenizer_2]`` (``[tokenizer_2]`` for a pipeline without the first encoder).
        encoders: the matching text encoders.
    """

    def __init__(self, tokenizers: list[Any], encoders: list[nn.Module]) -> None:
        super().__init__(tokenizers[0], encoders[0])
        self.tokenizers, self.encoders = tokenizers, encoders

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        hidden, pooled, lengths = [], None, None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            tokens = tokenizer(todo, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
            if lengths is None:
                lengths = tokens.attention_mask.sum(dim=1).tolist()
            device = next(encoder.parameters()).device
            out = encoder(tokens.input_ids.to(device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # the pipeline keeps the pooled output of the projection model
                pooled = out[0].detach().to("cpu", torch.float64)
            hidden.append(out.hidden_states[-2].detach().to("cpu", torch.float64))
        embedding = torch.cat(hidden, dim=-1)
        assert lengths is not None
        return [EncodedText(text=text, embedding=embedding[i], length=int(lengths[i]),
                            pooled=None if pooled is None else pooled[i]) for i, text in enumerate(todo)]


class StableDiffusionXLFamily(ModelFamily):
    """SDXL (base, or the refiner with only the second encoder): ``attn2.to_k`` / ``attn2.to_v`` of the UNet read
    2048-d (refiner: 1280-d) embeddings from two CLIP encoders."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return all(getattr(pipeline, part, None) is not None for part in ("unet", "text_encoder_2", "tokenizer_2"))

    def make_text_encoder(self) -> TextEncoder:
        """Both encoders, after checking that the UNet reads the width of their concatenation."""
        pipe = self.pipeline
        pairs = [(pipe.tokenizer, pipe.text_encoder)] if getattr(pipe, "text_encoder", None) is not None else []
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        width = self.denoiser.config.cross_attention_dim
        hidden = sum(int(encoder.config.hidden_size) for _, encoder in pairs)
        if width != hidden:
            raise RECEError(f"the UNet attends to {width}-d text but SDXL's text encoders give {hidden}-d "
                            "(concatenated) embeddings; this is not an SDXL pipeline")
        return SDXLTextEncoder([t for t, _ in pairs], [e for _, e in pairs])

    @classmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """Every ``attn2.to_k`` / ``attn2.to_v`` of the UNet (70 pairs in SDXL base)."""
        return find_projections(denoiser)
