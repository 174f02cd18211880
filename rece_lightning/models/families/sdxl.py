"""SDXL: the UNet's cross-attention reads the concatenated penultimate hidden states of two CLIP text encoders.

``StableDiffusionXLPipeline.encode_prompt`` (diffusers) tokenises each text with both tokenizers (padded to 77;
``tokenizer_2`` pads with ``!``), runs both encoders with ``output_hidden_states=True`` and concatenates their
``hidden_states[-2]`` into ``(77, 768 + 1280 = 2048)`` embeddings; the pooled embedding is the projected output of
the second encoder (``text_embeds``), which the UNet reads through its added time-text embedding, not through
``attn2``. The text-reading layers are the 70 ``attn2.to_k`` / ``attn2.to_v`` pairs of the UNet, as in SD 1.x/2.x
(github.com/rohitgandikota/unified-concept-editing ``trainscripts/uce_sd_erase.py`` edits the same layers with the
same embeddings). Token counts come from the first tokenizer, as in that script.

Token level (the token attacks): both CLIP tokenizers share one vocabulary (they differ only in padding), so a
candidate prompt is one sequence of token ids put into both, each tokenizer with its own start/end/padding tokens;
both encoders' penultimate states are concatenated as above (:meth:`SDXLTextEncoder.encode_token_ids`). A soft prefix
(UnlearnDiffAtk) is one ``(K, V)`` weighting over that vocabulary that multiplies each encoder's own token table; the
pooled embedding (encoder 2's projection) then depends on the prefix too. The UNet's denoising loss
(:meth:`StableDiffusionXLFamily.denoising_loss`) adds ``text_embeds`` (that pooled embedding) and ``time_ids`` as
``StableDiffusionXLPipeline`` builds them (original size = target size = the generated size, crop ``(0, 0)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import Projection, find_projections
from rece_lightning.models.family import UNetFamily
from rece_lightning.models.text import (
    EncodedText,
    TextEncoder,
    prefixed_ids,
    run_with_prefix,
    search_vocabulary,
    start_slot,
    token_sequence,
)


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

    def vocabulary(self) -> list[int]:
        """Ids that are ordinary tokens of every tokenizer (the second one pads with ``!``, which is then excluded)."""
        if self._vocabulary is None:
            sizes = {len(t) for t in self.tokenizers} | {int(e.get_input_embeddings().weight.shape[0])
                                                          for e in self.encoders}
            if len(sizes) != 1:
                raise RECEError(f"SDXL's tokenizers and text encoders disagree on the vocabulary size ({sorted(sizes)})"
                                "; the token attacks need the shared CLIP vocabulary")
            special = set().union(*(t.all_special_ids for t in self.tokenizers))
            self._vocabulary = [i for i in search_vocabulary(self.tokenizers[0]) if i not in special]
        return self._vocabulary

    @torch.no_grad()
    def encode_token_ids(self, candidates: Tensor) -> Tensor:
        """The same ids into both tokenizers' prompt layout (own start/end/padding), both encoders'
        ``hidden_states[-2]`` concatenated, as :meth:`encode_batch` (on the first encoder's device)."""
        hidden = []
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            ids = token_sequence(tokenizer, candidates, tokenizer.model_max_length)
            device = next(encoder.parameters()).device
            hidden.append(encoder(ids.to(device), output_hidden_states=True).hidden_states[-2].double())
        return torch.cat([h.to(hidden[0].device) for h in hidden], dim=-1)

    def encode_with_prefix(self, prompts: Sequence[str], prefix: Tensor) -> tuple[Tensor, Tensor | None]:
        """Both encoders with the prefix (ids, or weights over the shared vocabulary times each encoder's own
        table) in their token slots; the concatenated penultimate states and encoder 2's pooled projection, both
        differentiable in the prefix."""
        hidden, pooled = [], None
        placeholder = self.vocabulary()[0]
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            ids = torch.stack([prefixed_ids(tokenizer, p, prefix.shape[1], tokenizer.model_max_length, placeholder)
                               for p in prompts])
            out = run_with_prefix(encoder, ids, start_slot(tokenizer), prefix, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # as encode_batch: the projection model's output
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return torch.cat(hidden, dim=-1), pooled


class StableDiffusionXLFamily(UNetFamily):
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

    def prefix_conditioning(self, prompts: Sequence[str], prefix: Tensor) -> dict[str, Any]:
        hidden, pooled = self.text.encode_with_prefix(prompts, prefix)
        return {"encoder_hidden_states": hidden, "text_embeds": pooled}

    def added_cond_kwargs(self, cond: dict[str, Any], batch: int, height: int | None, width: int | None,
                          device: torch.device) -> dict[str, Any]:
        """``text_embeds`` (the pooled embedding) and ``time_ids`` = original size + crop ``(0, 0)`` + target size,
        original = target = the generated ``(height, width)`` (the pipeline's defaults when ``None``), as
        ``StableDiffusionXLPipeline`` makes them without a negative prompt."""
        pipe = self.pipeline
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        pooled = cond["text_embeds"]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype, device=device)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(batch, 1)}}
