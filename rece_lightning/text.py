"""Tokenise and encode concepts the way Stable Diffusion (and the official UCE/RECE code) does.

Texts are padded to ``tokenizer.model_max_length`` and encoded as ``text_encoder(ids)[0]`` without an attention
mask, exactly as ``StableDiffusionPipeline.encode_prompt`` does for SD 1.x / 2.x. SD 1.x pads with
``<|endoftext|>``, SD 2.x with ``!``; the attention mask of the tokenizer tells padding apart in both cases.

Token alignment of a concept and its anchor (official UCE ``edit_model``): with ``i`` and ``j`` the number of
non-padding tokens (start/end included) minus 2 and ``f = max(i, j)``, the concept contributes rows
``i … L − max(0, f − i)`` and the anchor rows ``j … L − max(0, f − j)`` (``L`` = padded length). ``i`` is the index
of the last word token for CLIP (start token first) and for T5 (no start token) alike; a T5 text without a word token
(``""``, ``" "``: just ``</s>``) gets ``i = 0``.

Other model families subclass :class:`TextEncoder` and override :meth:`TextEncoder.encode_batch` (SDXL: two CLIP
encoders, Flux: T5 + pooled CLIP; see :mod:`rece_lightning.families`).
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
        pooled: the pooled text embedding some families also read (SDXL, Flux), else ``None``.
    """

    text: str
    embedding: Tensor
    length: int
    pooled: Tensor | None = None

    @property
    def last_token(self) -> Tensor:
        """The row of the last word token, ``length − 2`` as the official UCE scripts index it (``(1, d)``).

        For a T5 text with no word token this is ``−1``, i.e. the last padding row, exactly as the official
        ``uce_flux_edit.py`` does (``attention_mask.sum() − 2`` used as an index).
        """
        row = self.length - 2
        return self.embedding[row : row + 1] if row != -1 else self.embedding[-1:]


class TextEncoder:
    """Encodes texts with a pipeline's tokenizer and text encoder, caching each distinct text once."""

    def __init__(self, tokenizer, text_encoder: nn.Module, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._max_length = max_length
        self._cache: dict[str, EncodedText] = {}

    @property
    def max_length(self) -> int:
        """The padded length of every encoded text (the tokenizer's ``model_max_length`` unless given)."""
        return int(self.tokenizer.model_max_length if self._max_length is None else self._max_length)

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
            for encoded in self.encode_batch(todo):
                if not torch.isfinite(encoded.embedding).all():
                    raise RECEError("the text encoder produced non-finite embeddings; check its weights and dtype")
                self._cache[encoded.text] = encoded
        return [self._cache[t] for t in texts]

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        """Encode distinct texts in one batch, as ``StableDiffusionPipeline.encode_prompt`` (SD 1.x / 2.x)."""
        tokens = self.tokenizer(
            todo, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        # texts with the same tokens (" " and "" for CLIP) are encoded once
        unique, inverse = torch.unique(tokens.input_ids, dim=0, return_inverse=True)
        device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(unique.to(device))[0]
        hidden = hidden.detach().to("cpu", torch.float64)
        return [EncodedText(text=text, embedding=hidden[row], length=int(mask.sum()))
                for text, row, mask in zip(todo, inverse.tolist(), tokens.attention_mask, strict=True)]

    def full(self, text: str) -> Tensor:
        """All ``L`` token rows of ``text`` (float64)."""
        return self.encode([text])[0].embedding

    def last(self, text: str) -> Tensor:
        """The last word token's row of ``text`` (``(1, d)``), as the official UCE scripts use (``tokens: last``)."""
        return self.encode([text])[0].last_token

    def aligned(self, concept: str, anchor: str) -> tuple[Tensor, Tensor]:
        """Concept and anchor rows paired with the official UCE token alignment (see module docstring)."""
        enc_c, enc_a = self.encode([concept, anchor])
        return align_tokens(enc_c, enc_a)


def align_tokens(concept: EncodedText, anchor: EncodedText) -> tuple[Tensor, Tensor]:
    """Rows ``i … L − max(0, f − i)`` of the concept and ``j … L − max(0, f − j)`` of the anchor."""
    i, j = max(0, concept.length - 2), max(0, anchor.length - 2)
    farthest = max(i, j)
    n = concept.embedding.shape[0]
    rows_c = concept.embedding[i : n - max(0, farthest - i)]
    rows_a = anchor.embedding[j : n - max(0, farthest - j)]
    return rows_c, rows_a
