"""SANA: the transformer reads the Gemma-2 token embeddings through ``caption_projection`` (an MLP), an RMS norm and
then every block's cross-attention.

``SanaPipeline.__call__`` (diffusers) encodes a prompt with ``encode_prompt`` and, by default, a *complex human
instruction* (``complex_human_instruction``, a paragraph asking for an enhanced prompt) put before it: the text is
lower-cased and stripped, the instruction prepended, the whole padded (on the right) to ``n_instruction +
max_sequence_length − 2`` tokens and run through Gemma-2 with the attention mask; the embeddings kept are the start
token's row followed by the last ``max_sequence_length − 1`` rows (the instruction's last token, the prompt's tokens,
padding). ``SanaTransformer2DModel`` computes ``caption_norm(caption_projection(c))`` with ``caption_projection(c) =
linear_2(gelu_tanh(linear_1(c)))`` (2304 → 2240 → 2240 for SANA 1600M) and each block reads it through
``attn2.to_k`` / ``attn2.to_v`` (padding masked out).

**Which layer is edited, and why:** ``caption_projection.linear_1``, the first (and only) linear layer that reads the
Gemma embeddings, for the reasons given for PixArt-Σ (:mod:`rece_lightning.models.families.pixart`): the closed form is
exact for it (its input is the text alone, its bias cancels), and everything the blocks read of the text is a function
of its output. The RMS norm after the projection is one more reason not to edit ``attn2``: its input is normalised
per token, so the text-side "embedding" of ``attn2`` would be further from the encoder's output.

**Encoding.** The family encodes through the pipeline's own ``encode_prompt`` with the instruction ``__call__`` uses by
default (read from its signature), so that the erased rows are those the pipeline generates from. Gemma adds a start
token but no end token: a text's rows are ``[<bos>, last instruction token, words…, padding]``, so the token count is
the attention mask's sum plus one — ``length − 2`` is then the last word's row, as the official token alignment
expects (:func:`rece_lightning.models.text.align_tokens`). The token attacks are not available (as for PixArt-Σ).
"""

from __future__ import annotations

from typing import Any

from rece_lightning.errors import RECEError
from rece_lightning.models.families.pixart import CaptionProjectionFamily, PromptEncoder, call_default
from rece_lightning.models.text import TextEncoder


class SanaFamily(CaptionProjectionFamily):
    """SANA (``SanaPipeline``): ``caption_projection.linear_1`` of the transformer (2304 → 2240 for SANA 1600M) reads
    the Gemma-2 token embeddings.

    Options: ``max_sequence_length`` — tokens per text after the instruction (default 300, as the pipeline); the same
    length is passed to the pipeline when it generates, which uses its default instruction.
    """

    name = "sana"
    pipeline_classes = ("SanaPipeline",)

    def make_text_encoder(self) -> TextEncoder:
        """Gemma-2 through the pipeline's ``encode_prompt`` with ``__call__``'s default instruction."""
        pipe = self.pipeline
        self.check_width(pipe.text_encoder, int(pipe.text_encoder.config.hidden_size))
        if self.max_sequence_length < 3:
            raise RECEError(f"max_sequence_length is at least 3 for SANA, got {self.max_sequence_length}")
        kwargs: dict[str, Any] = {"clean_caption": call_default(pipe, "clean_caption"),
                                  "complex_human_instruction": call_default(pipe, "complex_human_instruction")}
        return PromptEncoder(pipe, self.max_sequence_length, kwargs, "SANA", "sana", extra_length=1,
                             reserved=1 if kwargs["complex_human_instruction"] else 0)
