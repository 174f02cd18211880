"""Load text-to-image pipelines (a local folder, a Hugging Face Hub id resolved by :mod:`rece_lightning.models.source`,
or the testbed); generation is in :mod:`rece_lightning.models.generation`.

:func:`load_pipeline` loads a whole pipeline of any supported family (chosen from ``model_index.json``);
:func:`load_family` loads only what erasing needs — the text encoders and, read straight from the denoiser's
safetensors files with ``safe_open``, its text-reading layers (:class:`~rece_lightning.models.family.TextLayers`) — so that
erasing SDXL or Flux never holds the denoiser in memory. :func:`attach_denoiser` completes it into the whole pipeline
when images must be generated.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rece_lightning.errors import RECEError
from rece_lightning.models.source import TESTBED, is_testbed, resolve

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (``float32``, ``float16``, ``bfloat16``, ``float64``)."""
    if name not in DTYPES:
        raise RECEError(f"torch_dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def pipeline_folder(pretrained: str) -> tuple[Path, dict[str, Any]]:
    """The folder of ``pretrained`` (a local folder, or a Hub id's snapshot in the Hugging Face cache) and its
    ``model_index.json``.

    Raises:
        RECEError: the folder is missing or is not a diffusers pipeline; the Hub id cannot be resolved.
    """
    path = resolve(pretrained, "model.pretrained").folder
    if path is None or not path.exists():
        raise RECEError(
            f"model folder {pretrained} does not exist; set model.pretrained to a local diffusers folder "
            f"(one holding model_index.json), a Hugging Face Hub id (e.g. CompVis/stable-diffusion-v1-4) or '{TESTBED}'"
        )
    if not (path / "model_index.json").is_file():
        raise RECEError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); "
            "convert single-file checkpoints with diffusers' conversion scripts first"
        )
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise RECEError(f"could not read {path / 'model_index.json'}: {err}") from None
    return path, index


def _from_pretrained(path: Path, index: dict[str, Any], dtype: torch.dtype, **components: Any):
    """Load the pipeline at ``path`` with its own class (``StableDiffusionPipeline`` without safety checker for
    SD 1.x/2.x, as before), some components given or skipped (``None``); components the folder records as absent
    (``[null, null]``, e.g. SD3's ``text_encoder_3`` when saved without T5) are passed as ``None``."""
    from rece_lightning.models.families import StableDiffusionFamily, family_of_index

    family = family_of_index(index, str(path))
    if family is StableDiffusionFamily:
        from diffusers import StableDiffusionPipeline as cls

        extra: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    else:
        from diffusers import DiffusionPipeline as cls

        extra = {}
    # components saved as None (``[null, null]``, e.g. SD3 without T5) must be passed as None to load again
    absent = {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list | tuple)
              and len(v) == 2 and v[0] is None and v[1] is None and k not in extra}
    components = {**absent, **components}
    try:
        with warnings.catch_warnings():  # newer diffusers renamed torch_dtype → dtype; both spell the same request
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **extra, **components)
    except Exception as err:  # diffusers raises many types; report them as one clear error
        raise RECEError(f"could not load a {family.name} pipeline from {path}: {err}") from err


def load_pipeline(pretrained: str, torch_dtype: str = "float32"):
    """A whole pipeline from a local diffusers folder or a Hub id (its family read from ``model_index.json``), or the
    embedded testbed (``"testbed"``).

    The safety checker is not loaded: evaluating what a model generates is the point of this tool.

    Raises:
        RECEError: the folder is missing, is not a diffusers pipeline of a supported family, or fails to load.
    """
    dtype = resolve_dtype(torch_dtype)
    if is_testbed(pretrained):
        from rece_lightning.testbed import load_testbed_pipeline

        return load_testbed_pipeline(dtype=dtype)
    path, index = pipeline_folder(pretrained)
    pipe = _from_pretrained(path, index, dtype)
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
        raise RECEError(f"{path} lacks a text encoder; RECE needs a text-to-image pipeline")
    return pipe


def _safetensors_files(folder: Path) -> dict[str, Path] | None:
    """Which safetensors file holds each tensor of a diffusers model folder (``None`` when it has none)."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in weight_map.items()}
    single = folder / "diffusion_pytorch_model.safetensors"
    files = [single] if single.is_file() else sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for file in files[:1] if len(files) > 1 and not single.is_file() else files:
        with safe_open(str(file), framework="pt") as handle:
            out.update(dict.fromkeys(handle.keys(), file))
    return out


def read_text_layers(folder: Path, family: Any, dtype: torch.dtype):
    """The denoiser's text-reading layers as a :class:`~rece_lightning.models.family.TextLayers` stand-in, reading only
    their tensors from the safetensors files (``safe_open``); ``None`` when the folder has no safetensors files.

    The layers are found by building the denoiser from its ``config.json`` on the meta device (no memory) and asking
    the family (:meth:`~rece_lightning.models.family.ModelFamily.find_layers`), so their order is the module order.
    """
    import diffusers
    from safetensors import safe_open

    from rece_lightning.models.family import TextLayers

    files = _safetensors_files(folder)
    if files is None:
        return None
    config = json.loads((folder / "config.json").read_text())
    model_cls = getattr(diffusers, config["_class_name"])
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skeleton = model_cls.from_config(config)
    layers: list[tuple[str, nn.Linear]] = []
    handles: dict[Path, Any] = {}
    try:
        for projection in family.find_layers(skeleton):
            tensors = {}
            for part in ("weight", "bias"):
                key = f"{projection.name}.{part}"
                if key in files:
                    if files[key] not in handles:
                        handles[files[key]] = safe_open(str(files[key]), framework="pt").__enter__()
                    tensors[part] = handles[files[key]].get_tensor(key).to(dtype)
            if "weight" not in tensors:
                raise RECEError(f"{folder} holds no tensor {projection.name}.weight")
            out_features, in_features = tensors["weight"].shape
            linear = nn.Linear(in_features, out_features, bias="bias" in tensors, device="meta")
            for part, tensor in tensors.items():
                setattr(linear, part, nn.Parameter(tensor, requires_grad=False))
            layers.append((projection.name, linear))
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return TextLayers(layers, config)


def load_family(pretrained: str, torch_dtype: str = "float32", text_only: bool = True, **options: Any):
    """The model-family adapter of ``pretrained``; with ``text_only`` (and a folder with safetensors files) only
    the text encoders and the denoiser's text-reading layers are loaded (:func:`read_text_layers`), not the
    denoiser or the VAE. ``options`` go to the family (e.g. ``max_sequence_length`` for Flux)."""
    from rece_lightning.models.families import family_of, family_of_index

    dtype = resolve_dtype(torch_dtype)
    if is_testbed(pretrained) or not text_only:
        return family_of(load_pipeline(pretrained, torch_dtype), **options)
    path, index = pipeline_folder(pretrained)
    family = family_of_index(index, str(path))
    name = family.denoiser_name
    standin = read_text_layers(path / name, family, dtype) if (path / name / "config.json").is_file() else None
    if standin is None:
        return family_of(load_pipeline(pretrained, torch_dtype), **options)
    skip = {name: None, **({"vae": None} if "vae" in index else {})}
    pipe = _from_pretrained(path, index, dtype, **skip)
    return family(pipe, denoiser=standin, **options)


def attach_denoiser(family: Any, pretrained: str, torch_dtype: str = "float32") -> None:
    """Load the rest of a text-only family's pipeline (denoiser, VAE) around the components already loaded, and
    attach it (:meth:`~rece_lightning.models.family.ModelFamily.attach`); nothing happens when it is complete."""
    if not family.text_only:
        return
    path, index = pipeline_folder(pretrained)
    loaded = {k: v for k, v in family.pipeline.components.items() if v is not None}
    pipe = _from_pretrained(path, index, resolve_dtype(torch_dtype), **loaded)
    family.attach(pipe)
