"""Write a pipeline folder whose denoiser holds only its text-reading layers (``--size text``).

Erasing reads nothing of the denoiser but the layers its family edits (:func:`rece_lightning.models.pipeline.load_family`
reads their tensors by name with ``safe_open``), so an erase-only benchmark of a model whose denoiser does not fit in
memory (FLUX.1-dev's 12 B-parameter transformer) needs only those: the builder keeps the denoiser on the meta device
(:func:`~rece_lightning.models.random_pipeline.common.make_denoiser`), and here its text-reading layers are materialised
and written with the denoiser's ``config.json``; every other component is written as ``save_pretrained`` writes it.
Such a folder erases (``rece fit`` without validation) but cannot generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rece_lightning.errors import RECEError
from rece_lightning.models.random_pipeline.common import fast_random_init


def save_text_side(pipe: Any, out: Path, seed: int = 0) -> None:
    """Write ``pipe`` to ``out`` with its denoiser reduced to the text-reading layers of its family (random
    weights ``N(0, 0.02)`` where the denoiser is on the meta device, its own weights otherwise)."""
    from rece_lightning.models.families import FAMILIES

    family = next((f for f in FAMILIES if f.matches(pipe)), None)
    if family is None:
        raise RECEError(f"{type(pipe).__name__} is not a supported family")
    name = family.denoiser_name
    denoiser = getattr(pipe, name)
    dtype = next(p.dtype for p in pipe.text_encoder.parameters())
    tensors: dict[str, torch.Tensor] = {}
    for i, projection in enumerate(family.find_layers(denoiser)):
        layer = projection.module
        if layer.weight.is_meta:
            layer = fast_random_init(layer, seed + 100 + i, dtype)
        tensors.update({f"{projection.name}.{k}": v.detach().contiguous() for k, v in layer.state_dict().items()})
    pipe.register_modules(**{name: None})
    pipe.save_pretrained(out, safe_serialization=True)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index[name] = ["diffusers", type(denoiser).__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    denoiser.save_config(out / name)
    save_file(tensors, str(out / name / "diffusion_pytorch_model.safetensors"))
