"""Flux: the transformer reads T5 token embeddings through one linear layer, ``context_embedder`` (4096 → 3072).

``FluxPipeline.encode_prompt`` (diffusers) makes ``prompt_embeds = text_encoder_2(ids)[0]``: the T5 encoder's last
hidden state of the text padded to ``max_sequence_length`` tokens (512; 256 for FLUX.1-schnell), no attention mask,
and ``pooled_prompt_embeds``, the CLIP text encoder's ``pooler_output`` (77 tokens). Every joint transformer block
reads the tokens only through ``context_embedder(prompt_embeds)`` and the pooled embedding only through
``time_text_embed.text_embedder.linear_1`` (768 → 3072), so these two layers are what UCE edits, as the official
``trainscripts/uce_flux_edit.py`` of github.com/rohitgandikota/unified-concept-editing does: each in its own input
space (:mod:`rece_lightning.maths.spaces`: the tokens, 4096-d, and the pooled CLIP embedding, 768-d, one row per text),
concept → anchor with the preserved texts kept, and RECE derives the adversarial pooled embedding beside the token
one. T5 has no start token, so ``length − 2`` (the official index) is the last word token, as for CLIP.

**The bias.** ``context_embedder`` computes ``W c + b`` (and so does the pooled ``linear_1``; everything below holds
for it too, ``tests/test_spaces.py::test_flux_pooled_path_matches_official_uce``). UCE's objective with the bias kept fixed,

    min_W'  λ ‖W' − W‖²  +  s_e Σ ‖(W' c_i + b) − (W c*_i + b)‖²  +  s_p Σ ‖(W' c_p + b) − (W c_p + b)‖²,

has the bias cancel in every term, so its minimiser is the bias-free one, ``W' = W T`` with the same text-side map
``T = N M⁻¹`` as for SD (README, "How it works"): the shared map, RECE's derivation (``Σ W'ᵀW'``; the bias adds the
same ``b`` to the edited and the original output, so it cancels in ``‖W'c' + b − (W c + b)‖²`` too), the exact LoRA
(``W' = W + B A``, bias untouched) all carry over. The official script instead takes the *outputs*
``module(c*) = W c* + b`` as targets for the bias-free prediction ``W' c``, i.e. it solves
``min λ‖W' − W‖² + s Σ ‖W' c − (W c* + b)‖²``, which adds ``b (M⁻¹ σ)ᵀ`` with ``σ = s_e Σ c_i + s_p Σ c_p`` to our
``W T``: the edited layer then outputs ``≈ W c* + 2b`` for an erased text (the bias counted twice). We follow the
objective; ``tests/test_families.py::test_flux_last_token_matches_official_uce`` checks that our edit equals the
official computation when ``b = 0`` and differs from it by exactly that rank-one term otherwise.

**The attacks.** The embedding attacks attack both inputs: the inversion derives the pooled embedding beside the
token one, continuous Ring-A-Bell moves it along the pooled concept vector (:mod:`rece_lightning.attacks`). The
token attacks' tokens are T5 tokens (the text the transformer reads through ``context_embedder``): discrete
Ring-A-Bell searches T5 ids (no start token, ``</s>``, padding to ``max_sequence_length``), UnlearnDiffAtk optimises a
one-hot over T5's vocabulary. During their search the pooled CLIP embedding (``pooled_projections``) is that of the
plain prompt, held fixed: CLIP's vocabulary is not T5's, so a T5 prefix has no CLIP counterpart to differentiate
through; the adversarial prompt's own pooled embedding is used when its images are generated. The loss is flow matching as Flux is trained (:meth:`FluxFamily.denoising_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.models.family import POOLED_SPACE, ContextEmbedderFamily
from rece_lightning.models.text import EncodedText, TextEncoder

MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's default (FLUX.1-dev); FLUX.1-schnell uses 256


class FluxTextEncoder(TextEncoder):
    """T5 token embeddings (``max_sequence_length`` rows) plus the pooled CLIP embedding, as
    ``FluxPipeline.encode_prompt`` makes them."""

    def __init__(self, clip_tokenizer, clip_encoder: nn.Module, t5_tokenizer, t5_encoder: nn.Module,
                 max_sequence_length: int) -> None:
        super().__init__(t5_tokenizer, t5_encoder, max_length=max_sequence_length)
        self.clip_tokenizer, self.clip_encoder = clip_tokenizer, clip_encoder

    def encode_batch(self, todo: list[str]) -> list[EncodedText]:
        tokens = self.tokenizer(todo, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        hidden = self.text_encoder(tokens.input_ids.to(device), output_hidden_states=False)[0]
        hidden = hidden.detach().to("cpu", torch.float64)
        pooled = None
        if self.clip_encoder is not None:
            clip = self.clip_tokenizer(todo, padding="max_length", max_length=self.clip_tokenizer.model_max_length,
                                       truncation=True, return_tensors="pt")
            clip_device = next(self.clip_encoder.parameters()).device
            out = self.clip_encoder(clip.input_ids.to(clip_device), output_hidden_states=False)
            pooled = out.pooler_output.detach().to("cpu", torch.float64)
        lengths = tokens.attention_mask.sum(dim=1).tolist()
        return [EncodedText(text=text, embedding=hidden[i], length=int(lengths[i]),
                            pooled=None if pooled is None else pooled[i],
                            spaces={} if pooled is None else {POOLED_SPACE: EncodedText.single_row(text, pooled[i])})
                for i, text in enumerate(todo)]

    # vocabulary, decode and encode_token_ids: the base class's, on T5 (no start token, ``</s>``, ``<pad>``)

    def encode_with_prefix(self, prompts: Sequence[str], prefix: Tensor) -> tuple[Tensor, Tensor | None]:
        """T5 embeddings with the prefix in the first ``K`` slots (differentiable); the pooled CLIP embedding of the
        plain prompts (fixed: CLIP's vocabulary is not T5's, see the module docstring)."""
        hidden, _ = super().encode_with_prefix(prompts, prefix)
        if self.clip_encoder is None:
            return hidden, None
        pooled = torch.stack([e.pooled for e in self.encode(list(prompts))])
        return hidden, pooled.to(hidden.device, self.clip_encoder.dtype)


class FluxFamily(ContextEmbedderFamily):
    """Flux (FLUX.1-dev / -schnell): ``context_embedder`` of the transformer reads T5 embeddings.

    Options: ``max_sequence_length`` — T5 tokens per text (default 512 as ``FluxPipeline``; 256 for schnell); the
    same length is passed to the pipeline when it generates.
    """

    name = "flux"
    pipeline_classes = ("FluxPipeline",)
    default_max_sequence_length = MAX_SEQUENCE_LENGTH

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """A transformer and T5 as ``text_encoder_2``; not SD3, whose pipelines also have a ``text_encoder_3`` /
        ``tokenizer_3`` slot (even when loaded without T5, where ``text_encoder_2`` is its second CLIP)."""
        return cls.has_transformer_and_second_encoder(pipeline) and not cls.has_third_encoder_slot(pipeline)

    def make_text_encoder(self) -> TextEncoder:
        """T5 and the pooled CLIP encoder, after checking that ``context_embedder`` reads T5's width."""
        pipe = self.pipeline
        if getattr(pipe, "text_encoder", None) is None:
            raise RECEError("this Flux pipeline has no text_encoder (CLIP), whose pooled embedding the transformer's "
                            "time_text_embed.text_embedder.linear_1 reads and the edit maps; load it with the pipeline")
        width = self.denoiser.config.joint_attention_dim
        hidden = int(pipe.text_encoder_2.config.d_model)
        if width != hidden:
            raise RECEError(f"the transformer's context_embedder reads {width}-d text but the T5 encoder gives "
                            f"{hidden}-d embeddings; this is not a Flux pipeline")
        return FluxTextEncoder(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None),
                               pipe.tokenizer_2, pipe.text_encoder_2, self.max_sequence_length)

    def prefix_conditioning(self, prompts: Sequence[str], prefix: Tensor) -> dict[str, Any]:
        hidden, pooled = self.text.encode_with_prefix(prompts, prefix)
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, cond: dict[str, Any], *, height: int | None = None,
                       width: int | None = None, guidance: Tensor | None = None) -> Tensor:
        """Flow matching (``FlowMatchEulerDiscreteScheduler``): ``σ = (t + 1) / num_train_timesteps`` (the
        scheduler's unshifted training sigmas, in ``(0, 1]``), ``x_σ = (1 − σ) x₀ + σ ε``, target ``v = ε − x₀``.

        ``x0`` are the packed ``(B, (h/2)(w/2), 4c)`` latents ``FluxPipeline`` returns with ``output_type="latent"``;
        the transformer is called as the pipeline calls it: ``timestep = σ``, ``guidance`` when the transformer embeds
        it (FLUX.1-dev), ``pooled_projections``, ``encoder_hidden_states``, ``txt_ids`` (zeros) and ``img_ids`` (the
        pipeline's latent grid for ``height`` × ``width``)."""
        pipe = self.pipeline
        transformer = pipe.transformer
        device, dtype = x0.device, transformer.dtype
        sigma = (t.to(device, torch.float64) + 1) / self.num_train_timesteps
        s = sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        noisy = (1 - s) * x0 + s * noise
        height = height or pipe.default_sample_size * pipe.vae_scale_factor
        width = width or pipe.default_sample_size * pipe.vae_scale_factor
        rows = int(height) // (pipe.vae_scale_factor * 2)
        cols = int(width) // (pipe.vae_scale_factor * 2)
        img_ids = pipe._prepare_latent_image_ids(len(x0), rows, cols, device, dtype)
        if x0.ndim != 3 or img_ids.shape[0] != x0.shape[1]:
            raise RECEError(f"Flux latents of shape {tuple(x0.shape)} are not the packed latents of a {height}×{width} "
                            f"image ({img_ids.shape[0]} patches)")
        hidden = cond["encoder_hidden_states"]
        txt_ids = torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype)
        if transformer.config.guidance_embeds:
            if guidance is None:
                raise RECEError("this Flux transformer embeds the guidance scale; pass guidance to the loss")
            guidance = guidance.to(device, torch.float32)
        else:
            guidance = None
        pooled = cond["pooled_projections"]
        pred = transformer(hidden_states=noisy.to(dtype), timestep=sigma.to(dtype), guidance=guidance,
                           pooled_projections=None if pooled is None else pooled.to(dtype),
                           encoder_hidden_states=hidden.to(dtype), txt_ids=txt_ids, img_ids=img_ids,
                           return_dict=False)[0]
        return (pred.float() - (noise - x0).float()).flatten(1).square().mean(1)
