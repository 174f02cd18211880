"""Stable Diffusion 1.x / 2.x (and the testbed): the UNet's cross-attention reads the last hidden state of one text
encoder through every ``attn2.to_k`` / ``attn2.to_v`` — the layers and embeddings of the paper's recipe and of the
official RECE code (``train.py``, ``train_uce.py`` of github.com/CharlesGong12/RECE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import Projection, find_projections
from rece_lightning.models.family import UNetFamily
from rece_lightning.models.text import TextEncoder


class StableDiffusionFamily(UNetFamily):
    """Stable Diffusion 1.x / 2.x (and the testbed): one text encoder whose last hidden state the UNet's
    cross-attention reads through ``attn2.to_k`` / ``attn2.to_v``."""

    name = "stable-diffusion"
    pipeline_classes = ("StableDiffusionPipeline",)

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return all(getattr(pipeline, part, None) is not None for part in ("unet", "text_encoder", "tokenizer")) and (
            getattr(pipeline, "text_encoder_2", None) is None
        )

    @classmethod
    def matches_index(cls, index: Mapping[str, Any]) -> bool:
        return index.get("_class_name") in cls.pipeline_classes or (
            "text_encoder_2" not in index and super().matches_index(index))

    def make_text_encoder(self) -> TextEncoder:
        """The CLIP (or testbed) text encoder, after checking that the UNet reads its width."""
        width = self.denoiser.config.cross_attention_dim
        hidden = self.pipeline.text_encoder.config.hidden_size
        if width != hidden:
            raise RECEError(
                f"the UNet attends to {width}-d text but the text encoder gives {hidden}-d embeddings; "
                "this is not a Stable Diffusion 1.x/2.x pipeline"
            )
        return TextEncoder(self.pipeline.tokenizer, self.pipeline.text_encoder)

    @classmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """Every ``attn2.to_k`` / ``attn2.to_v`` of the UNet."""
        return find_projections(denoiser)
