"""The model-family seam: everything the recipe needs to know about one family of text-to-image pipelines.

A family says (1) how texts become the embeddings its denoiser reads, exactly as the family's diffusers pipeline
makes them (:attr:`ModelFamily.text`: a :class:`~rece_lightning.models.text.TextEncoder` whose ``encode`` returns the
``(L, d)`` token embeddings and each text's token count, which the official token alignment needs), and (2) which
linear layers read those embeddings directly (:meth:`ModelFamily.text_layers`: the layers the closed form edits).
The closed form, RECE's derivation, the editor, keep-best, the callbacks, the attacks and the exports work on these
two alone and never ask which family they serve.

Supported: Stable Diffusion 1.x / 2.x (:mod:`rece_lightning.models.families.sd`: one CLIP text encoder, ``attn2.to_k`` /
``attn2.to_v`` of the UNet, which also covers the testbed), SDXL (:mod:`rece_lightning.models.families.sdxl`), Flux
(:mod:`rece_lightning.models.families.flux`) and SD3 / SD3.5 (:mod:`rece_lightning.models.families.sd3`).
A new family is a subclass listed in :data:`rece_lightning.models.families.FAMILIES`.

The token attacks (:mod:`rece_lightning.attacks`: discrete Ring-A-Bell, UnlearnDiffAtk) also go through the family:
its text encoder's token-level methods (:meth:`~rece_lightning.models.text.TextEncoder.vocabulary`,
:meth:`~rece_lightning.models.text.TextEncoder.encode_token_ids`, :meth:`~rece_lightning.models.text.TextEncoder.encode_with_prefix`)
and the family's :meth:`ModelFamily.prefix_conditioning` and :meth:`ModelFamily.denoising_loss` (the denoiser's
training loss on a latent made by the pipeline). UNet families (:class:`UNetFamily`: SD 1.x/2.x, SDXL) share the DDPM
loss; Flux has its flow-matching loss (:mod:`rece_lightning.models.families.flux`). SD3 has none of them: its token
attacks raise an error (:mod:`rece_lightning.models.families.sd3`).

The edit needs only the text encoders and the text-reading layers, so a family can work with a *stand-in* for its
denoiser (:class:`TextLayers`: just those layers, read from the safetensors files,
:func:`rece_lightning.models.pipeline.load_family`); :meth:`ModelFamily.attach` later moves the (edited) layers into the
whole pipeline when images are generated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import MAIN_SPACE, Projection, linear_layer
from rece_lightning.models.text import TextEncoder

POOLED_SPACE = "pooled"
"""The input space of a pooled text embedding (one row per text)."""
POOLED_LAYER = "time_text_embed.text_embedder.linear_1"
"""The layer of Flux's and SD3's transformer that reads the pooled text embedding (``pooled_projections``)."""

__all__ = ["POOLED_LAYER", "POOLED_SPACE", "ContextEmbedderFamily", "ModelFamily", "TextLayers", "UNetFamily"]


class TextLayers(nn.Module):
    """A stand-in for a denoiser that holds only its text-reading linear layers, under their own module paths (so
    state-dict keys, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``, are the
    denoiser's), plus the denoiser's ``config``.

    Args:
        layers: ``(module path, nn.Linear)`` in the denoiser's module order.
        config: the denoiser's configuration (``config.json``), read with attribute access.
    """

    def __init__(self, layers: list[tuple[str, nn.Linear]], config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = SimpleNamespace(**config)
        for path, linear in layers:
            parent: nn.Module = self
            *parents, leaf = path.split(".")
            for part in parents:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, linear)


class ModelFamily(ABC):
    """How one family of pipelines reads text (see the module docstring).

    Args:
        pipeline: the diffusers pipeline (with or without its denoiser).
        denoiser: a stand-in for the denoiser (:class:`TextLayers`) when the pipeline was loaded without it.
        options: family settings (e.g. Flux's ``max_sequence_length``); families ignore those they do not know.

    Attributes:
        name: a short name shown in messages and recorded with exports.
        pipeline_classes: diffusers pipeline class names of this family (``model_index.json``'s ``_class_name``).
        denoiser_name: the pipeline component holding the text-reading layers (``unet`` or ``transformer``).
        pipeline: the diffusers pipeline.
        text: encodes texts into the embeddings the denoiser reads.
    """

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_name: ClassVar[str] = "unet"

    def __init__(self, pipeline: Any, denoiser: nn.Module | None = None, **options: Any) -> None:
        self.pipeline = pipeline
        self._standin = denoiser
        self.options = {k: v for k, v in options.items() if v is not None}
        self.text: TextEncoder = self.make_text_encoder()
        self._layers: list[Projection] | None = None

    @classmethod
    @abstractmethod
    def matches(cls, pipeline: Any) -> bool:
        """Whether ``pipeline`` (or any object with its component attributes) belongs to this family."""

    @classmethod
    def matches_index(cls, index: Mapping[str, Any]) -> bool:
        """Whether a pipeline folder's ``model_index.json`` describes this family: by class name, else by which
        components it lists."""
        if index.get("_class_name") in cls.pipeline_classes:
            return True
        present = {k: (True if isinstance(v, list | tuple) and v and v[0] is not None else None)
                   for k, v in index.items() if not k.startswith("_")}
        return cls.matches(SimpleNamespace(**present))

    @abstractmethod
    def make_text_encoder(self) -> TextEncoder:
        """The text side of this family's pipeline."""

    @classmethod
    @abstractmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """The linear layers of ``denoiser`` (or of its :class:`TextLayers` stand-in) that read the text embeddings,
        in module order; layers of one input space (:attr:`Projection.space
        <rece_lightning.maths.projections.Projection.space>`) have the same input width."""

    @property
    def denoiser(self) -> nn.Module:
        """The module holding the text-reading layers (its state-dict keys name the exported tensors): the
        pipeline's denoiser, or its stand-in while the pipeline has none."""
        real = getattr(self.pipeline, self.denoiser_name, None)
        if real is not None:
            return real
        if self._standin is None:
            raise RECEError(f"the pipeline has no {self.denoiser_name} and no stand-in for it")
        return self._standin

    @property
    def text_only(self) -> bool:
        """Whether the pipeline was loaded without its denoiser (erasing works, generating does not)."""
        return getattr(self.pipeline, self.denoiser_name, None) is None

    @property
    def width(self) -> int:
        """The width of the token embeddings the text-reading layers read."""
        return next(p for p in self.text_layers() if p.space == MAIN_SPACE).module.in_features

    def text_layers(self) -> list[Projection]:
        """The text-reading layers (found once; the same objects stay in the model when the pipeline is attached)."""
        if self._layers is None:
            self._layers = self.find_layers(self.denoiser)
        return self._layers

    def generation_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the pipeline's ``__call__`` that must match the text side (e.g. Flux's
        ``max_sequence_length``)."""
        return {}

    def attach(self, pipeline: Any) -> None:
        """Use the whole ``pipeline`` from now on, moving the text-reading layers (with any edit folded into them)
        into its denoiser in place of its own, so that the editor's layers are the ones the pipeline runs."""
        denoiser = getattr(pipeline, self.denoiser_name)
        for p in self.text_layers():
            current = denoiser.get_submodule(p.name)
            if current.weight.shape != p.module.weight.shape:
                raise RECEError(f"{p.name}: the loaded {self.denoiser_name} has shape {tuple(current.weight.shape)}, "
                                f"the erased layer {tuple(p.module.weight.shape)}")
            denoiser.set_submodule(p.name, p.module.to(current.weight.device))
        self.pipeline = pipeline
        self._standin = None

    # ------------------------------------------------------------------ the denoiser's loss (UnlearnDiffAtk)
    @property
    def num_train_timesteps(self) -> int:
        """Training timesteps of the pipeline's scheduler (the range the denoising loss draws ``t`` from)."""
        return int(self.pipeline.scheduler.config.num_train_timesteps)

    def prefix_conditioning(self, prompts: Sequence[str], prefix: Tensor) -> dict[str, Any]:
        """What :meth:`denoising_loss` reads of the text, for ``prefix + prompt`` per prompt, differentiable with
        respect to ``prefix`` (``(B, K)`` token ids or ``(B, K, V)`` weights over :meth:`TextEncoder.vocab_size
        <rece_lightning.models.text.TextEncoder.vocab_size>` tokens, see
        :meth:`~rece_lightning.models.text.TextEncoder.encode_with_prefix`)."""
        self.text.check_token_attacks()
        raise RECEError(f"the {self.name} family has no prefix conditioning; UnlearnDiffAtk cannot attack it")

    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, cond: dict[str, Any], *, height: int | None = None,
                       width: int | None = None, guidance: Tensor | None = None) -> Tensor:
        """Per-sample training loss of the denoiser: ``x0`` (``(B, …)`` latents as the pipeline returns them with
        ``output_type="latent"``) noised with ``noise`` at integer timesteps ``t`` in ``[0, num_train_timesteps)``,
        the mean squared error of the denoiser's prediction under ``cond`` (:meth:`prefix_conditioning`).
        ``height`` / ``width``: the generated image size (``None``: the pipeline's default); ``guidance``: ``(B,)``
        guidance scales, read by guidance-distilled denoisers (FLUX.1-dev) only."""
        self.text.check_token_attacks()
        raise RECEError(f"the {self.name} family has no denoising loss; UnlearnDiffAtk cannot attack it")


class ContextEmbedderFamily(ModelFamily):
    """Families whose transformer reads the token embeddings only through one linear layer, ``context_embedder``
    (Flux, SD3; its bias is kept, see :mod:`rece_lightning.models.families.flux`), with the T5 rows padded to
    ``max_sequence_length`` — an option that is also passed to the pipeline when it generates — and the pooled text
    embedding only through ``time_text_embed.text_embedder.linear_1`` (:data:`POOLED_LAYER`, in its own input space
    :data:`POOLED_SPACE`; the text encoder puts each text's pooled embedding there).

    Attributes:
        default_max_sequence_length: the pipeline's default ``max_sequence_length``.
    """

    denoiser_name = "transformer"
    default_max_sequence_length: ClassVar[int]

    @staticmethod
    def has_transformer_and_second_encoder(pipeline: Any) -> bool:
        """A transformer denoiser and a second text encoder (Flux's T5, SD3's CLIP-G) with its tokenizer."""
        return all(getattr(pipeline, part, None) is not None
                   for part in ("transformer", "text_encoder_2", "tokenizer_2"))

    @staticmethod
    def has_third_encoder_slot(pipeline: Any) -> bool:
        """SD3's ``text_encoder_3`` / ``tokenizer_3`` slot, present (maybe ``None``) in every SD3 pipeline, never in
        Flux."""
        return hasattr(pipeline, "text_encoder_3") or hasattr(pipeline, "tokenizer_3")

    @property
    def max_sequence_length(self) -> int:
        """T5 tokens per text (the ``max_sequence_length`` option, else the pipeline's default)."""
        return int(self.options.get("max_sequence_length", self.default_max_sequence_length))

    @classmethod
    def find_layers(cls, denoiser: nn.Module) -> list[Projection]:
        """``context_embedder`` (the tokens) and ``time_text_embed.text_embedder.linear_1`` (the pooled embedding;
        the official ``uce_flux_edit.py`` edits both), Linears with bias (only their weights are edited)."""
        return [linear_layer(denoiser, "context_embedder", "to_v", cls.denoiser_name),
                linear_layer(denoiser, POOLED_LAYER, "to_v", cls.denoiser_name, space=POOLED_SPACE)]

    def generation_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}


def ddpm_noised(scheduler: Any, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``√ᾱ_t x₀ + √(1 − ᾱ_t) ε``: the DDPM forward process, restated from ``DDPMScheduler.add_noise`` (same
    operations, so the same bits as DDPM / DDIM / PNDM's ``add_noise``) from the scheduler's ``alphas_cumprod``, which
    every UNet scheduler has (Euler's ``add_noise`` instead works on its inference sigmas)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(device=x0.device).to(dtype=x0.dtype)
    t = t.to(x0.device)
    sqrt_alpha_prod = (alphas_cumprod[t] ** 0.5).flatten()
    while len(sqrt_alpha_prod.shape) < len(x0.shape):
        sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
    sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[t]) ** 0.5).flatten()
    while len(sqrt_one_minus_alpha_prod.shape) < len(x0.shape):
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)
    return sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * noise


class UNetFamily(ModelFamily):
    """Families whose denoiser is a UNet trained with the DDPM forward process (SD 1.x/2.x, SDXL).

    Its loss is ``mean ‖pred(x_t, t, cond) − target‖²`` with ``x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε`` and target ``ε``
    (``prediction_type="epsilon"``), ``√ᾱ_t ε − √(1 − ᾱ_t) x₀`` (``v_prediction``) or ``x₀`` (``sample``). Subclasses
    add what their UNet reads besides the text embeddings (:meth:`added_cond_kwargs`).
    """

    def prefix_conditioning(self, prompts: Sequence[str], prefix: Tensor) -> dict[str, Any]:
        return {"encoder_hidden_states": self.text.encode_with_prefix(prompts, prefix)[0]}

    def added_cond_kwargs(self, cond: dict[str, Any], batch: int, height: int | None, width: int | None,
                          device: torch.device) -> dict[str, Any]:
        """Further keyword arguments of the UNet's call (SDXL: ``added_cond_kwargs``); none for SD 1.x/2.x."""
        return {}

    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, cond: dict[str, Any], *, height: int | None = None,
                       width: int | None = None, guidance: Tensor | None = None) -> Tensor:
        scheduler = self.pipeline.scheduler
        noisy = ddpm_noised(scheduler, x0, noise, t)
        unet = self.pipeline.unet
        extra = self.added_cond_kwargs(cond, len(x0), height, width, noisy.device)
        pred = unet(noisy.to(unet.dtype), t.to(noisy.device),
                    encoder_hidden_states=cond["encoder_hidden_states"].to(unet.dtype), **extra).sample
        kind = getattr(scheduler.config, "prediction_type", "epsilon")
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = ddpm_noised(scheduler, noise, -x0, t)  # √ᾱ ε − √(1 − ᾱ) x₀
        elif kind == "sample":
            target = x0
        else:
            raise RECEError(f"unknown prediction_type {kind!r} of the {self.name} scheduler")
        return (pred.float() - target.float()).flatten(1).square().mean(1)
