"""Generate images with a diffusers text-to-image pipeline, each from its own row's seed.

A leaf module (no import of the rest of the package), used by the Lightning module, the attacks and the testbed.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    guidance: Sequence[float | None] | None = None,
    height: int | None = None,
    width: int | None = None,
    prompt_embeds: Sequence[Tensor | None] | None = None,
    output_type: str = "pil",
    extra: Mapping[str, Any] | None = None,
    pooled_embeds: Sequence[Tensor | None] | None = None,
) -> list[Image.Image] | Tensor:
    """One image per prompt, each from its own seed (and its own guidance scale when given).

    ``prompt_embeds`` (one ``(L, d)`` tensor or ``None`` per prompt) generates from embeddings instead of text, as
    embedding-space attacks do; the unconditional branch of guidance still encodes the empty prompt.
    Pipelines that also read a pooled text embedding (SDXL, Flux, SD3) get the pooled embedding of the row's prompt with
    its ``prompt_embeds`` (:func:`pooled_embeddings`), or the row's own ``pooled_embeds`` (a ``(d,)`` tensor, e.g. an
    attack's adversarial pooled embedding) where given. ``output_type="latent"`` returns the final latents stacked in
    prompt order instead of images. ``extra`` holds further arguments of the pipeline's call (e.g. Flux's
    ``max_sequence_length``).
    Every image depends only on its row, so batching or sharding over processes does not change results beyond
    floating-point noise of batched kernels.
    """
    scales = [guidance_scale if g is None else float(g) for g in (guidance or [None] * len(prompts))]
    device = pipe._execution_device
    generator_device = "cpu" if device.type == "mps" else device
    images: list[Any] = [None] * len(prompts)
    embeds = list(prompt_embeds) if prompt_embeds is not None else [None] * len(prompts)
    groups = dict.fromkeys((s, e is not None) for s, e in zip(scales, embeds, strict=True))
    for scale, from_embeds in groups:
        idx = [i for i in range(len(prompts)) if scales[i] == scale and (embeds[i] is not None) == from_embeds]
        generators = [torch.Generator(generator_device).manual_seed(int(seeds[i])) for i in idx]
        text: dict = {"prompt": [prompts[i] for i in idx]}
        if from_embeds:
            encoder = pipe.text_encoder_2 if getattr(pipe, "text_encoder_2", None) is not None else pipe.text_encoder
            dtype = encoder.dtype
            text = {"prompt_embeds": torch.stack([embeds[i] for i in idx]).to(device, dtype)}  # type: ignore[misc]
            pooled = pooled_embeddings(pipe, [prompts[i] for i in idx], extra or {})
            own = list(pooled_embeds) if pooled_embeds is not None else [None] * len(prompts)
            if pooled is not None and any(own[i] is not None for i in idx):
                pooled = torch.stack([p if own[i] is None else own[i].to(p) for i, p in zip(idx, pooled, strict=True)])
            if pooled is not None:
                text["pooled_prompt_embeds"] = pooled.to(device, dtype)
        out = pipe(
            **text,
            **dict(extra or {}),
            generator=generators,
            num_inference_steps=num_inference_steps,
            guidance_scale=scale,
            height=height,
            width=width,
            output_type=output_type,
        )
        for i, image in zip(idx, out.images, strict=True):
            images[i] = image
    if output_type == "latent":
        return torch.stack(images)  # type: ignore[arg-type]
    return [im for im in images if im is not None]


@torch.no_grad()
def pooled_embeddings(pipe, prompts: list[str], extra: Mapping[str, Any]) -> Tensor | None:
    """The pooled text embeddings of ``prompts`` as the pipeline's ``encode_prompt`` makes them, for pipelines whose
    call takes ``pooled_prompt_embeds`` (SDXL: second CLIP encoder's projection; Flux: CLIP's pooler output; SD3:
    both CLIP encoders' projections); else ``None``."""
    if "pooled_prompt_embeds" not in inspect.signature(pipe.__call__).parameters:
        return None
    kwargs = {k: v for k, v in extra.items() if k == "max_sequence_length"}
    if "prompt_3" in inspect.signature(pipe.encode_prompt).parameters:  # SD3: as SDXL's four outputs
        return pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False,
                                  **kwargs)[2]
    if getattr(pipe, "transformer", None) is not None:  # Flux: (prompt_embeds, pooled_prompt_embeds, text_ids)
        return pipe.encode_prompt(prompt=prompts, prompt_2=None, **kwargs)[1]
    # SDXL: (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)
    return pipe.encode_prompt(prompt=prompts, do_classifier_free_guidance=False)[2]
