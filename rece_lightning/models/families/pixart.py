"""PixArt-Σ: the transformer reads the T5 token embeddings through ``caption_projection``, an MLP, and then every
block's cross-attention.

``PixArtSigmaPipeline.encode_prompt`` (diffusers) lower-cases and strips each text (``_text_preprocessing``; with
``clean_caption=True``, the default of ``__call__``, it cleans it further when ``bs4`` and ``ftfy`` are installed),
pads it to ``max_sequence_length`` T5 tokens (300) and runs the T5 encoder *with* the attention mask;
``PixArtTransformer2DModel`` then computes

    y = caption_projection(c) = linear_2(gelu_tanh(linear_1(c)))        (4096 → 1152 → 1152)

once, and each of its 28 blocks reads ``y`` through ``attn2.to_k`` / ``attn2.to_v`` (padding tokens masked out).

**Which layers are edited, and why.** UCE's closed form is exact for a linear layer whose input depends on the text
only: its objective is quadratic in the new weight, so the minimiser is ``W' = W T`` (README, "How it works"). Two
choices satisfy that here; editing both would not (the second's input would depend on the first's edit):

* ``caption_projection.linear_1`` (chosen): the first layer that reads the T5 embeddings, linear, with a bias that
  cancels from the objective exactly as Flux's ``context_embedder``'s does (:mod:`rece_lightning.models.families.flux`).
  Everything the denoiser reads of the text — ``y`` and so every block's keys and values — is a function of this
  layer's output alone, so an edit that maps the concept's output onto the anchor's carries the anchor's keys and
  values into all 28 blocks, and RECE's derived embedding (which reproduces the erased concept's output of this layer)
  reproduces them too. It is one ``1152 × 4096`` matrix, read from the T5 embeddings, which the text encoder gives
  as the pipeline makes them; it is the choice the official UCE code makes for Flux (``context_embedder``) and HiDream
  (``caption_projection``): the first linear layer reading the encoder.
* ``attn2.to_k`` / ``attn2.to_v`` of the 28 blocks (not chosen): exact as well, with ``y`` as the embedding, but the
  "text encoder" would then include ``caption_projection`` — part of the transformer, which erasing never loads — and
  the edit would be 56 matrices for the same effect.

``linear_2`` alone would also be exact but reads ``gelu(linear_1(c))``, not the text embeddings the attacks and RECE
work with. The T5 padding rows are edited like the others (as for Flux) although the cross-attention masks them out.

**Token alignment.** T5 has no start token and ends with ``</s>``: ``length − 2`` is the last word token, as for Flux.

**Not available: the token attacks** (discrete Ring-A-Bell, UnlearnDiffAtk): the base token-level methods encode
without T5's attention mask, which this pipeline applies, so they raise a :class:`~rece_lightning.errors.RECEError`;
the embedding-space attacks and everything else work.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import Projection, linear_layer
from rece_lightning.models.family import ContextEmbedderFamily
from rece_lightning.models.text import EncodedText, TextEncoder

NO_TOKEN_ATTACKS = ("the token attacks (Ring-A-Bell's discrete search, UnlearnDiffAtk) are not available for {name}: "
                    "its pipeline encodes prompts with an attention mask that the token-level encoders do not apply "
                    "(see rece_lightning.models.families.{module}); use the embedding-space attacks")


def call_default(pipeline: Any, name: str) -> Any:
    """The default of argument ``name`` of the pipeline's ``__call__`` (one source: diffusers itself)."""
    return inspect.signature(type(pipeline).__call__).parameters[name].default


class PromptEncoder(TextEncoder):
    """Texts encoded by the pipeline's own ``encode_prompt`` (no classifier-free guidance), with the arguments its
    ``__call__`` passes by default; the token count is the attention mask's sum plus ``extra_length``.

    Args:
        pipeline: a PixArt-Σ or SANA pipeline (its tokenizer and text encoder are read from it).
        max_sequence_length: tokens per text.
        prompt_kwargs: further arguments of ``encode_prompt`` (``clean_caption``, ``complex_human_instruction``).
        name, module: the family's name and module, for the token attacks' error message.
        extra_length: added to the mask's sum so that ``length − 2`` is the last word token's row.
        reserved: rows of ``max_sequence_length`` not available to the text's own tokens (SANA's instruction token).
    """

    def __init__(self, pipeline: Any, max_sequence_length: int, prompt_kwargs: dict[str, Any], name: str,
                 module: str, extra_length: int = 0, reserved: int = 0) -> None:
        super().__init__(pipeline.tokenizer, pipeline.text_encoder, max_length=max_sequence_length)
        self.pipeline, self.prompt_kwargs = pipeline, prompt_kwargs
        self.extra_length, self.reserved = extra_length, reserved
        self.no_token_attacks = NO_TOKEN_ATTACKS.format(name=name, module=module)

    def check(self, text: str, role: str) -> None:
        """Raise when the pipeline would truncate ``text`` (its tokens, start/end included, plus the reserved rows
        exceed ``max_sequence_length``)."""
        n = len(self.tokenizer(text, truncation=False).input_ids) + self.reserved
        if n > self.max_length:
            raise RECEError(f"{role} {text!r} is {n - self.reserved} tokens long, more than the "
                            f"{self.max_length - self.reserved} that max_sequence_length {self.max_length} leaves; "
                            "shorten it or raise max_sequence_length")

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        device = next(self.text_encoder.parameters()).device
        embeds, mask = self.pipeline.encode_prompt(todo, do_classifier_free_guidance=False, device=device,
                                                   max_sequence_length=self.max_length, **self.prompt_kwargs)[:2]
        embeds = embeds.detach().to("cpu", torch.float64)
        lengths = (mask.sum(dim=1) + self.extra_length).tolist()
        return [EncodedText(text=text, embedding=embeds[i], length=int(lengths[i])) for i, text in enumerate(todo)]

    # ------------------------------------------------------------------ token level: not available


class CaptionProjectionFamily(ContextEmbedderFamily):
    """Transformers that read one text encoder through ``caption_projection`` (PixArt-Σ, SANA): the edited layer is
    ``caption_projection.linear_1`` (see the module docstring); the width of the text encoder must be what it reads."""

    default_max_sequence_length = 300  # PixArtSigmaPipeline's and SanaPipeline's default

    @classmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """``caption_projection.linear_1`` (a Linear with bias; only its weight is edited). These transformers read
        no pooled embedding."""
        return [linear_layer(denoiser, "caption_projection.linear_1", "to_v", cls.denoiser_name)]

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """By the pipeline's class (``model_index.json``'s ``_class_name``): the components alone (a transformer,
        one text encoder) do not tell these families apart."""
        return type(pipeline).__name__ in cls.pipeline_classes

    def check_width(self, encoder: nn.Module, width: int) -> None:
        """Raise unless ``caption_projection.linear_1`` reads ``width``-d embeddings."""
        reads = int(self.denoiser.config.caption_channels)
        if reads != width:
            raise RECEError(f"the transformer's caption_projection reads {reads}-d text but the text encoder gives "
                            f"{width}-d embeddings; this is not a {self.name} pipeline")


class PixArtSigmaFamily(CaptionProjectionFamily):
    """PixArt-Σ (``PixArtSigmaPipeline``): ``caption_projection.linear_1`` of the transformer (4096 → 1152) reads the
    T5 token embeddings.

    Options: ``max_sequence_length`` — T5 tokens per text (default 300, as the pipeline); the same length is passed to
    the pipeline when it generates. The text is preprocessed as ``__call__`` does by default (``clean_caption``).
    """

    name = "pixart-sigma"
    pipeline_classes = ("PixArtSigmaPipeline",)

    def make_text_encoder(self) -> TextEncoder:
        """T5 through the pipeline's ``encode_prompt``, after checking the widths."""
        pipe = self.pipeline
        self.check_width(pipe.text_encoder, int(pipe.text_encoder.config.d_model))
        clean = call_default(pipe, "clean_caption")
        return PromptEncoder(pipe, self.max_sequence_length, {"clean_caption": clean}, "PixArt-Σ", "pixart")
