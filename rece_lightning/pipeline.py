"""Load text-to-image pipelines from local folders only (no model hub); generation is in :mod:`rece_lightning.generation`."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from rece_lightning.errors import RECEError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
TESTBED = "testbed"


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (``float32``, ``float16``, ``bfloat16``, ``float64``)."""
    if name not in DTYPES:
        raise RECEError(f"torch_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_pipeline(pretrained: str, torch_dtype: str = "float32"):
    """A ``StableDiffusionPipeline`` from a local diffusers folder, or the embedded testbed (``"testbed"``).

    The safety checker is not loaded: evaluating what a model generates is the point of this tool.

    Raises:
        RECEError: the folder is missing, is not a diffusers pipeline, or fails to load.
    """
    dtype = resolve_dtype(torch_dtype)
    if pretrained == TESTBED:
        from rece_lightning.testbed import load_testbed_pipeline

        return load_testbed_pipeline(dtype=dtype)
    path = Path(pretrained).expanduser()
    if not path.exists():
        raise RECEError(
            f"model folder {path} does not exist; set model.pretrained to a local diffusers folder "
            "(one holding model_index.json, e.g. a downloaded CompVis/stable-diffusion-v1-4) or to 'testbed'"
        )
    if not (path / "model_index.json").is_file():
        raise RECEError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); "
            "convert single-file checkpoints with diffusers' conversion scripts first"
        )
    from diffusers import StableDiffusionPipeline

    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype → dtype; both spell the same request
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = StableDiffusionPipeline.from_pretrained(
                path,
                torch_dtype=dtype,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            )
    except Exception as err:  # diffusers raises many types; report them as one clear error
        raise RECEError(f"could not load a Stable Diffusion pipeline from {path}: {err}") from err
    if getattr(pipe, "unet", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise RECEError(f"{path} lacks a unet or text_encoder; RECE needs a text-to-image pipeline")
    return pipe


def check_text_width(pipe) -> None:
    """The UNet's cross-attention width must equal the text encoder's hidden size (read from the configs)."""
    width = pipe.unet.config.cross_attention_dim
    hidden = pipe.text_encoder.config.hidden_size
    if width != hidden:
        raise RECEError(
            f"the UNet attends to {width}-d text but the text encoder gives {hidden}-d embeddings; "
            "pipelines with several text encoders (SDXL) are not supported yet"
        )
