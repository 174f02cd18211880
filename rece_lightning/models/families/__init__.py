"""The supported model families and how a pipeline finds its own (:func:`family_of`).

The seam itself (:class:`~rece_lightning.models.family.ModelFamily`, and what several families share) is in
:mod:`rece_lightning.models.family`; here are the families, one small class each:

* :mod:`~rece_lightning.models.families.sd` — Stable Diffusion 1.x / 2.x (and the testbed): one text encoder, UNet
  ``attn2.to_k`` / ``attn2.to_v`` (768-d / 1024-d);
* :mod:`~rece_lightning.models.families.sdxl` — SDXL: two CLIP encoders, UNet ``attn2.to_k`` / ``attn2.to_v`` (2048-d);
* :mod:`~rece_lightning.models.families.flux` — Flux: T5 token embeddings read by the transformer's ``context_embedder``
  (4096-d), plus the pooled CLIP embedding;
* :mod:`~rece_lightning.models.families.sd3` — Stable Diffusion 3 / 3.5: the joint CLIP-L ⊕ CLIP-G (zero-padded) + T5
  sequence read by the transformer's ``context_embedder`` (4096-d), plus both pooled CLIP embeddings;
* :mod:`~rece_lightning.models.families.hidream` — HiDream-I1: T5 and Llama-3.1 layers read by the transformer's
  ``caption_projection`` layers (one input space per Llama layer, :mod:`rece_lightning.maths.spaces`);
* :mod:`~rece_lightning.models.families.pixart` — PixArt-Σ: T5 token embeddings read by the transformer's
  ``caption_projection.linear_1`` (4096-d);
* :mod:`~rece_lightning.models.families.sana` — SANA: Gemma-2 token embeddings (after the pipeline's instruction) read by the
  transformer's ``caption_projection.linear_1`` (2304-d).

Flux and SD3 both have a transformer and a ``text_encoder_2``; an SD3 pipeline (or its ``model_index.json``) also has
a ``text_encoder_3`` slot (``None`` without T5), which tells them apart (:meth:`FluxFamily.matches` excludes it);
HiDream alone has a Llama encoder (``text_encoder_4``), which SD3's test excludes.
PixArt-Σ and SANA (a transformer, one text encoder) are told apart by their pipeline class only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rece_lightning.errors import RECEError
from rece_lightning.models.families.flux import FluxFamily
from rece_lightning.models.families.hidream import HiDreamFamily
from rece_lightning.models.families.pixart import PixArtSigmaFamily
from rece_lightning.models.families.sana import SanaFamily
from rece_lightning.models.families.sd import StableDiffusionFamily
from rece_lightning.models.families.sd3 import StableDiffusion3Family
from rece_lightning.models.families.sdxl import StableDiffusionXLFamily
from rece_lightning.models.family import ModelFamily

__all__ = ["FAMILIES", "FluxFamily", "HiDreamFamily", "PixArtSigmaFamily", "SanaFamily", "StableDiffusion3Family",
           "StableDiffusionFamily", "StableDiffusionXLFamily", "family_of", "family_of_index"]


FAMILIES: list[type[ModelFamily]] = [StableDiffusionFamily, StableDiffusionXLFamily, FluxFamily,
                                     StableDiffusion3Family, HiDreamFamily, PixArtSigmaFamily, SanaFamily]
"""Every supported family, in the order they are tried."""

SUPPORTED = ("Stable Diffusion 1.x/2.x (one text encoder, UNet attn2.to_k/to_v), SDXL (two CLIP encoders, UNet "
             "attn2.to_k/to_v), Flux (CLIP + T5, transformer context_embedder), SD3 (two CLIP + T5, transformer "
             "context_embedder) and HiDream (T5 + Llama, transformer caption_projection)")


def _unsupported(what: str) -> RECEError:
    names = ", ".join(f.name for f in FAMILIES)
    return RECEError(f"{what} is not a supported model family (supported: {names}, i.e. {SUPPORTED}); "
                     "RECE edits the linear layers that read the text embeddings, and found none it knows")


def family_of(pipeline: Any, **options: Any) -> ModelFamily:
    """The family adapter for ``pipeline`` (an adapter is returned as it is). ``options`` go to the family
    (e.g. ``max_sequence_length`` for Flux).

    Raises:
        RECEError: no registered family reads text the way this pipeline does; the message names the supported
            families.
    """
    if isinstance(pipeline, ModelFamily):
        return pipeline
    for family in FAMILIES:
        if family.matches(pipeline):
            return family(pipeline, **options)
    raise _unsupported(type(pipeline).__name__)


def family_of_index(index: Mapping[str, Any], source: str = "the pipeline") -> type[ModelFamily]:
    """The family class of a pipeline folder from its ``model_index.json``."""
    for family in FAMILIES:
        if family.matches_index(index):
            return family
    raise _unsupported(f"{source} ({index.get('_class_name', 'unknown class')})")
