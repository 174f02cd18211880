"""Generate images with a diffusers text-to-image pipeline, each from its own row's seed.

A leaf module (no import of the rest of the package), used by the Lightning module, the attacks and the testbed.
"""

from __future__ import annotations

from collections.abc import Sequence
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
) -> list[Image.Image] | Tensor:
    """One image per prompt, each from its own seed (and its own guidance scale when given).

    ``prompt_embeds`` (one ``(L, d)`` tensor or ``None`` per prompt) generates from embeddings instead of text, as
    embedding-space attacks do; the unconditional branch of guidance still encodes the empty prompt.
    ``output_type="latent"`` returns the final latents stacked in prompt order instead of images.
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
            dtype = pipe.text_encoder.dtype
            text = {"prompt_embeds": torch.stack([embeds[i] for i in idx]).to(device, dtype)}  # type: ignore[misc]
        out = pipe(
            **text,
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
