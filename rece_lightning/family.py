"""The model-family seam: everything the recipe needs to know about one family of text-to-image pipelines.

A family says (1) how texts become the embeddings its denoiser reads, exactly as the family's diffusers pipeline
makes them (:attr:`ModelFamily.text`: a :class:`~rece_lightning.text.TextEncoder` whose ``encode`` returns the
``(L, d)`` token embeddings and each text's token count, which the official token alignment needs), and (2) which
linear layers read those embeddings directly (:meth:`ModelFamily.text_layers`: the layers the closed form edits).
The closed form, RECE's derivation, the editor, keep-best, the callbacks, the attacks and the exports work on these
two alone and never ask which family they serve.

Supported today: Stable Diffusion 1.x / 2.x (one CLIP text encoder, ``attn2.to_k`` / ``attn2.to_v`` of the UNet),
which also covers the testbed. A new family is a subclass registered in :data:`FAMILIES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn

from rece_lightning.cross_attention import Projection, find_projections
from rece_lightning.errors import RECEError
from rece_lightning.text import TextEncoder

__all__ = ["FAMILIES", "ModelFamily", "StableDiffusionFamily", "family_of"]


class ModelFamily(ABC):
    """How one family of pipelines reads text (see the module docstring).

    Attributes:
        name: a short name shown in messages and recorded with exports.
        pipeline: the diffusers pipeline.
        text: encodes texts into the embeddings the denoiser reads.
    """

    name: ClassVar[str]

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.text: TextEncoder = self.make_text_encoder()

    @classmethod
    @abstractmethod
    def matches(cls, pipeline: Any) -> bool:
        """Whether ``pipeline`` belongs to this family."""

    @abstractmethod
    def make_text_encoder(self) -> TextEncoder:
        """The text side of this family's pipeline."""

    @property
    @abstractmethod
    def denoiser(self) -> nn.Module:
        """The module holding the text-reading layers (its state-dict keys name the exported tensors)."""

    @abstractmethod
    def text_layers(self) -> list[Projection]:
        """The bias-free linear layers that read the text embeddings (all with the same input width)."""


class StableDiffusionFamily(ModelFamily):
    """Stable Diffusion 1.x / 2.x (and the testbed): one text encoder whose last hidden state the UNet's
    cross-attention reads through ``attn2.to_k`` / ``attn2.to_v``."""

    name = "stable-diffusion"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return all(getattr(pipeline, part, None) is not None for part in ("unet", "text_encoder", "tokenizer")) and (
            getattr(pipeline, "text_encoder_2", None) is None
        )

    def make_text_encoder(self) -> TextEncoder:
        """The CLIP (or testbed) text encoder, after checking that the UNet reads its width."""
        width = self.pipeline.unet.config.cross_attention_dim
        hidden = self.pipeline.text_encoder.config.hidden_size
        if width != hidden:
            raise RECEError(
                f"the UNet attends to {width}-d text but the text encoder gives {hidden}-d embeddings; "
                "this is not a Stable Diffusion 1.x/2.x pipeline"
            )
        return TextEncoder(self.pipeline.tokenizer, self.pipeline.text_encoder)

    @property
    def denoiser(self) -> nn.Module:
        """The UNet."""
        return self.pipeline.unet

    def text_layers(self) -> list[Projection]:
        """Every ``attn2.to_k`` / ``attn2.to_v`` of the UNet."""
        return find_projections(self.pipeline.unet)


FAMILIES: list[type[ModelFamily]] = [StableDiffusionFamily]


def family_of(pipeline: Any) -> ModelFamily:
    """The family adapter for ``pipeline``.

    Raises:
        RECEError: no registered family reads text the way this pipeline does; the message names the supported
            families.
    """
    for family in FAMILIES:
        if family.matches(pipeline):
            return family(pipeline)
    supported = ", ".join(f.name for f in FAMILIES)
    raise RECEError(
        f"{type(pipeline).__name__} is not a supported model family (supported: {supported}, i.e. Stable Diffusion "
        "1.x/2.x pipelines with one text encoder and a UNet with attn2 cross-attention)"
    )
