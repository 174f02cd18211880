"""Tokenise and encode concepts the way Stable Diffusion (and the official UCE/RECE code) does.

Texts are padded to ``tokenizer.model_max_length`` and encoded as ``text_encoder(ids)[0]`` without an attention
mask, exactly as ``StableDiffusionPipeline.encode_prompt`` does for SD 1.x / 2.x. SD 1.x pads with
``<|endoftext|>``, SD 2.x with ``!``; the attention mask of the tokenizer tells padding apart in both cases.

Token alignment of a concept and its anchor (official UCE ``edit_model``): with ``i`` and ``j`` the number of
non-padding tokens (start/end included) minus 2 and ``f = max(i, j)``, the concept contributes rows
``i … L − max(0, f − i)`` and the anchor rows ``j … L − max(0, f − j)`` (``L`` = padded length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError


@dataclass(frozen=True)
class EncodedText:
    """Token embeddings of one text.

    Attributes:
        text: the text as given.
        embedding: (L, d) float64 token embeddings, padded to the tokenizer's length.
        length: non-padding tokens, start and end tokens included.
    """

    text: str
    embedding: Tensor
    length: int


class TextEncoder:
    """Encodes texts with a pipeline's tokenizer and text encoder, caching each distinct text once."""

    def __init__(self, tokenizer, text_encoder: nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: dict[str, EncodedText] = {}

    @property
    def max_length(self) -> int:
        """The padded length of every encoded text (the tokenizer's ``model_max_length``)."""
        return int(self.tokenizer.model_max_length)

    def check(self, text: str, role: str) -> None:
        """Raise when ``text`` would be truncated by the tokenizer."""
        n = len(self.tokenizer(text, truncation=False).input_ids)
        if n > self.max_length:
            raise RECEError(
                f"{role} {text!r} is {n} tokens long, more than the tokenizer's {self.max_length}; shorten it"
            )

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Encode ``texts`` in one batch (texts seen before come from the cache)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            tokens = self.tokenizer(
                todo, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            )
            # texts with the same tokens (" " and "" for CLIP) are encoded once
            unique, inverse = torch.unique(tokens.input_ids, dim=0, return_inverse=True)
            device = next(self.text_encoder.parameters()).device
            hidden = self.text_encoder(unique.to(device))[0]
            hidden = hidden.detach().to("cpu", torch.float64)
            if not torch.isfinite(hidden).all():
                raise RECEError("the text encoder produced non-finite embeddings; check its weights and dtype")
            for text, row, mask in zip(todo, inverse.tolist(), tokens.attention_mask, strict=True):
                self._cache[text] = EncodedText(text=text, embedding=hidden[row], length=int(mask.sum()))
        return [self._cache[t] for t in texts]

    def full(self, text: str) -> Tensor:
        """All ``L`` token rows of ``text`` (float64)."""
        return self.encode([text])[0].embedding

    def aligned(self, concept: str, anchor: str) -> tuple[Tensor, Tensor]:
        """Concept and anchor rows paired with the official UCE token alignment (see module docstring)."""
        enc_c, enc_a = self.encode([concept, anchor])
        return align_tokens(enc_c, enc_a)


def align_tokens(concept: EncodedText, anchor: EncodedText) -> tuple[Tensor, Tensor]:
    """Rows ``i … L − max(0, f − i)`` of the concept and ``j … L − max(0, f − j)`` of the anchor."""
    i, j = concept.length - 2, anchor.length - 2
    farthest = max(i, j)
    n = concept.embedding.shape[0]
    rows_c = concept.embedding[i : n - max(0, farthest - i)]
    rows_a = anchor.embedding[j : n - max(0, farthest - j)]
    return rows_c, rows_a
