"""A tiny, real text-to-image testbed for measuring concept erasure on a CPU.

A procedurally rendered world (shapes x colours x patterns x backgrounds, 32x32
RGB) with known ground truth, a small Stable-Diffusion-style model trained on it
(tiny ``AutoencoderKL`` + ``UNet2DConditionModel`` with standard ``attn2``
cross-attention, DDIM scheduler, frozen pretrained all-MiniLM-L6-v2 text
encoder), an attribute classifier that judges generated images, and prompt
CSVs for every shape, colour and pattern (shipped for "triangle", object-like, and "striped", style-like;
generated for the others).

Quick start::

    from rece_lightning.testbed import load_testbed_pipeline, classify
    pipe = load_testbed_pipeline()
    images = pipe(["a red triangle"] * 4, num_inference_steps=20, guidance_scale=5.0).images
    print(classify(images)["shape"])
"""

from __future__ import annotations

from .classifier import AttributeClassifier, classify, load_testbed_classifier
from .pipeline import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    TESTBED_DIR,
    WEIGHTS_DIR,
    generate,
    load_testbed_pipeline,
)
from .prompts import (
    CONCEPTS,
    PROMPTS_DIR,
    TESTBED_CONCEPTS,
    Concept,
    build_prompt_rows,
    load_prompts,
    prompt_csv,
    testbed_concept,
    write_prompt_csv,
)
from .render import render, render_array
from .text import MODEL_MAX_LENGTH, encode_prompts, load_text_encoder, load_tokenizer, minilm_dir
from .world import ATTRIBUTES, BACKGROUNDS, COLORS, IMAGE_SIZE, PATTERNS, SHAPES, Scene, random_scene

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "COLORS",
    "CONCEPTS",
    "DEFAULT_GUIDANCE_SCALE",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "IMAGE_SIZE",
    "MODEL_MAX_LENGTH",
    "PATTERNS",
    "PROMPTS_DIR",
    "SHAPES",
    "TESTBED_CONCEPTS",
    "TESTBED_DIR",
    "WEIGHTS_DIR",
    "AttributeClassifier",
    "Concept",
    "Scene",
    "build_prompt_rows",
    "classify",
    "encode_prompts",
    "generate",
    "load_prompts",
    "load_testbed_classifier",
    "load_testbed_pipeline",
    "load_text_encoder",
    "load_tokenizer",
    "minilm_dir",
    "prompt_csv",
    "random_scene",
    "render",
    "render_array",
    "testbed_concept",
    "write_prompt_csv",
]
