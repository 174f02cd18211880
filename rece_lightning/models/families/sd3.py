"""Stable Diffusion 3 / 3.5: the transformer reads one joint CLIP + T5 token sequence through ``context_embedder``.

``StableDiffusion3Pipeline.encode_prompt`` (diffusers, ``clip_skip=None``) tokenises each text with both CLIP
tokenizers (padded to 77; SD3's ``tokenizer_2`` pads with ``!``), concatenates the two encoders' penultimate hidden
states (``hidden_states[-2]``: CLIP-L 768 ⊕ OpenCLIP-bigG 1280 = 2048), zero-pads them on the feature axis to T5's
width (4096) and appends, along the sequence, the T5 encoder's last hidden state of the text padded to
``max_sequence_length`` tokens (256 by default): ``prompt_embeds`` is ``(77 + 256, 4096)``. Without ``text_encoder_3``
(T5 dropped to save memory) the T5 rows are zeros of the transformer's ``joint_attention_dim``, as the pipeline makes
them. The pooled embedding is both CLIP encoders' projected outputs (``text_embeds``) concatenated (768 + 1280 =
2048), read only by ``time_text_embed.text_embedder.linear_1`` (2048 → 1536), which is edited in its own input space
as Flux's (:mod:`rece_lightning.maths.spaces`; no official UCE script exists for SD3: the per-layer formula is
``uce_flux_edit.py``'s).

Every joint transformer block reads the token embeddings only through ``context_embedder(prompt_embeds)`` (a Linear
4096 → 1536 for SD3-medium, with a bias), so that layer is what UCE / RECE edit, as for Flux
(:mod:`rece_lightning.models.families.flux`, whose module docstring explains why the bias cancels and ``W' = W T``). RECE
derives its embeddings in that joint 4096-d space.

**Token alignment.** Token counts come from the first CLIP tokenizer, as the official UCE SDXL script counts them, so
``length − 2`` (``tokens: last``) is the row of the last word token in the CLIP part (its CLIP-L ⊕ CLIP-G features,
zero-padded). ``tokens: aligned`` (:func:`rece_lightning.models.text.align_tokens`) shifts the *whole* joint sequence by
the CLIP counts: the 77 CLIP rows pair exactly as in SD / SDXL (word end to word end, then padding to padding), and the
T5 rows keep the same shift, so concept and anchor T5 rows are paired position by position offset by the difference
of their CLIP counts, and at the CLIP/T5 boundary that many rows pair a CLIP padding row with a T5 row. T5 tokens are
not counted separately (the sequence has one alignment); the T5 rows of an anchor such as ``" "`` are ``</s>`` and
padding, so the erased concept's T5 rows are still mapped onto the anchor's.

**Not available: the token attacks** (discrete Ring-A-Bell, UnlearnDiffAtk). Their token-level methods
(:meth:`SD3TextEncoder.vocabulary`, :meth:`~SD3TextEncoder.encode_token_ids`,
:meth:`~SD3TextEncoder.encode_with_prefix`) and the family's prefix conditioning / denoising loss raise a
:class:`~rece_lightning.errors.RECEError`: a candidate prompt would have to be one token sequence for CLIP and T5,
whose vocabularies differ. The embedding-space attacks (which generate from ``prompt_embeds``) and everything else work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rece_lightning.errors import RECEError
from rece_lightning.models.family import POOLED_SPACE, ContextEmbedderFamily
from rece_lightning.models.text import EncodedText, TextEncoder

MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default
NO_TOKEN_ATTACKS = ("the token attacks (Ring-A-Bell's discrete search, UnlearnDiffAtk) are not available for SD3: "
                    "its prompt is one joint CLIP + T5 sequence and the two vocabularies differ (see "
                    "rece_lightning.models.families.sd3); use the embedding-space attacks")


class SD3TextEncoder(TextEncoder):
    """Both CLIP encoders and T5 (optional) of SD3, encoded as ``StableDiffusion3Pipeline.encode_prompt`` does
    (``clip_skip=None``, the same prompt for all three encoders).

    Args:
        tokenizers: the two CLIP tokenizers ``[tokenizer, tokenizer_2]``.
        encoders: the two CLIP text encoders (with projection).
        t5_tokenizer, t5_encoder: ``tokenizer_3`` / ``text_encoder_3``; ``t5_encoder`` ``None`` gives zero T5 rows.
        max_sequence_length: T5 rows per text.
        width: the transformer's ``joint_attention_dim`` (the width of the zero T5 rows without T5).
    """

    no_token_attacks = NO_TOKEN_ATTACKS

    def __init__(self, tokenizers: list[Any], encoders: list[nn.Module], t5_tokenizer, t5_encoder: nn.Module | None,
                 max_sequence_length: int, width: int) -> None:
        super().__init__(tokenizers[0], encoders[0])
        self.tokenizers, self.encoders = tokenizers, encoders
        self.t5_tokenizer, self.t5_encoder = t5_tokenizer, t5_encoder
        self.max_sequence_length, self.width = int(max_sequence_length), int(width)

    def check(self, text: str, role: str) -> None:
        """Raise when CLIP (77 tokens) or T5 (``max_sequence_length``) would truncate ``text``."""
        super().check(text, role)
        if self.t5_encoder is not None:
            n = len(self.t5_tokenizer(text, truncation=False, verbose=False).input_ids)
            if n > self.max_sequence_length:
                raise RECEError(f"{role} {text!r} is {n} T5 tokens long, more than max_sequence_length "
                                f"{self.max_sequence_length}; shorten it or raise max_sequence_length")

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        clip, pooled, lengths = [], [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            tokens = tokenizer(todo, padding="max_length", max_length=self.tokenizers[0].model_max_length,
                               truncation=True, return_tensors="pt")
            if lengths is None:
                lengths = tokens.attention_mask.sum(dim=1).tolist()
            device = next(encoder.parameters()).device
            out = encoder(tokens.input_ids.to(device), output_hidden_states=True)
            pooled.append(out[0].detach().to("cpu", torch.float64))
            clip.append(out.hidden_states[-2].detach().to("cpu", torch.float64))
        if self.t5_encoder is None:
            t5 = torch.zeros(len(todo), self.max_sequence_length, self.width, dtype=torch.float64)
        else:
            tokens = self.t5_tokenizer(todo, padding="max_length", max_length=self.max_sequence_length,
                                       truncation=True, add_special_tokens=True, return_tensors="pt")
            device = next(self.t5_encoder.parameters()).device
            t5 = self.t5_encoder(tokens.input_ids.to(device))[0].detach().to("cpu", torch.float64)
        joint = torch.cat(clip, dim=-1)
        joint = F.pad(joint, (0, t5.shape[-1] - joint.shape[-1]))  # zero feature padding to T5's width
        embedding = torch.cat([joint, t5], dim=-2)
        pooled_all = torch.cat(pooled, dim=-1)
        assert lengths is not None
        return [EncodedText(text=text, embedding=embedding[i], length=int(lengths[i]), pooled=pooled_all[i],
                            spaces={POOLED_SPACE: EncodedText.single_row(text, pooled_all[i])})
                for i, text in enumerate(todo)]

    # ------------------------------------------------------------------ token level: not available for SD3


class StableDiffusion3Family(ContextEmbedderFamily):
    """Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): ``context_embedder`` of the transformer reads the
    joint CLIP-L ⊕ CLIP-G (zero-padded) + T5 sequence (4096-d).

    Options: ``max_sequence_length`` — T5 tokens per text (default 256 as ``StableDiffusion3Pipeline``); the same
    length is passed to the pipeline when it generates.
    """

    name = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    default_max_sequence_length = MAX_SEQUENCE_LENGTH

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """A transformer, two CLIP encoders and a T5 slot: an SD3 pipeline has the attribute ``text_encoder_3``
        (``None`` when loaded without T5), which Flux pipelines (T5 as ``text_encoder_2``) lack; no Llama encoder
        (``text_encoder_4``: HiDream)."""
        return (cls.has_transformer_and_second_encoder(pipeline) and cls.has_third_encoder_slot(pipeline)
                and getattr(pipeline, "text_encoder_4", None) is None)

    def make_text_encoder(self) -> TextEncoder:
        """Both CLIP encoders and T5, after checking that ``context_embedder`` reads T5's width."""
        pipe = self.pipeline
        if getattr(pipe, "text_encoder", None) is None:
            raise RECEError("this SD3 pipeline has no text_encoder (CLIP-L); StableDiffusion3Pipeline needs both "
                            "CLIP encoders")
        width = int(self.denoiser.config.joint_attention_dim)
        t5 = getattr(pipe, "text_encoder_3", None)
        if t5 is not None and int(t5.config.d_model) != width:
            raise RECEError(f"the transformer's context_embedder reads {width}-d text but the T5 encoder gives "
                            f"{int(t5.config.d_model)}-d embeddings; this is not an SD3 pipeline")
        if self.max_sequence_length > 512:
            raise RECEError(f"max_sequence_length is at most 512 for SD3, got {self.max_sequence_length}")
        return SD3TextEncoder([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2],
                              getattr(pipe, "tokenizer_3", None), t5, self.max_sequence_length, width)


