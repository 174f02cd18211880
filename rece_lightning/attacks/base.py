"""What every attack may use of the model under attack, what it returns, and the trivial attack."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rece_lightning.maths.spaces import SpacedEditor
from rece_lightning.models.family import ModelFamily
from rece_lightning.models.generation import generate
from rece_lightning.models.text import TextEncoder
from rece_lightning.recipes.config import GenerationConfig

Judge = Callable[[list, list[dict[str, Any]]], list[bool]]
"""``judge(images, rows) -> [concept present?]``: the evaluation protocol's verdict on generated images."""


@dataclass
class AttackTarget:
    """The narrow interface attacks work through (nothing else of the Lightning module).

    Attacks never ask which model family they attack: token-level access goes through :attr:`text`
    (:meth:`~rece_lightning.models.text.TextEncoder.vocabulary`, :meth:`~rece_lightning.models.text.TextEncoder.decode`,
    :meth:`~rece_lightning.models.text.TextEncoder.encode_token_ids`), the denoiser's loss through :meth:`prefix_conditioning`
    and :meth:`denoising_loss` (the family's, :mod:`rece_lightning.models.family`).

    Attributes:
        pipeline: the diffusers pipeline (its tokenizer, text encoder, denoiser and scheduler), with the edit folded
            into its weights.
        text: encodes prompts into the embeddings the denoiser reads (cached); the family's text encoder.
        editor: the edit under attack (closed-form derivations against it).
        generation: the settings images are generated with.
        judge: the evaluation protocol's judge, passed in explicitly (``None``: no early stopping on success).
        pipeline_kwargs: further arguments of the pipeline's call that its model family needs (e.g. Flux's
            ``max_sequence_length``).
        family: the model family of ``pipeline`` (default: found from the pipeline, with ``pipeline_kwargs`` as its
            options).
    """

    pipeline: Any
    text: TextEncoder
    editor: SpacedEditor
    generation: GenerationConfig
    judge: Judge | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    family: ModelFamily | None = None

    def __post_init__(self) -> None:
        if self.family is None:
            from rece_lightning.models.families import family_of

            self.family = family_of(self.pipeline, **self.pipeline_kwargs)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        guidance: Sequence[float | None] | None = None,
        prompt_embeds: Sequence[Tensor | None] | None = None,
        output_type: str = "pil",
        pooled_embeds: Sequence[Tensor | None] | None = None,
    ) -> Any:
        """Images (or latents) of the model as it is, one per prompt, each from its own seed (and its own pooled
        embedding, where given with its ``prompt_embeds``)."""
        g = self.generation
        return generate(self.pipeline, prompts, seeds, num_inference_steps=g.num_inference_steps,
                        guidance_scale=g.guidance_scale, guidance=guidance, height=g.height, width=g.width,
                        prompt_embeds=prompt_embeds, output_type=output_type, extra=self.pipeline_kwargs,
                        pooled_embeds=pooled_embeds)

    @property
    def num_train_timesteps(self) -> int:
        """The range ``[0, n)`` of the timesteps :meth:`denoising_loss` takes."""
        assert self.family is not None
        return self.family.num_train_timesteps

    def prefix_conditioning(self, prompts: Sequence[str], prefix: Tensor) -> dict[str, Any]:
        """The denoiser's text conditioning of ``prefix + prompt`` per prompt, differentiable in ``prefix``
        (``(B, K)`` token ids of :meth:`~rece_lightning.models.text.TextEncoder.vocabulary`, or ``(B, K, V)`` weights over
        :attr:`~rece_lightning.models.text.TextEncoder.vocab_size` tokens); see
        :meth:`~rece_lightning.models.family.ModelFamily.prefix_conditioning`."""
        assert self.family is not None
        return self.family.prefix_conditioning(prompts, prefix)

    def denoising_loss(self, x0: Tensor, noise: Tensor, t: Tensor, cond: dict[str, Any],
                       guidance: Sequence[float | None] | None = None) -> Tensor:
        """Per-sample loss of the denoiser as it is (the edit folded in) on latents ``x0`` from :meth:`generate`
        (``output_type="latent"``), noised with ``noise`` at timesteps ``t`` in ``[0, num_train_timesteps)``, under
        ``cond`` (:meth:`prefix_conditioning`), at the generation size; ``guidance``: each sample's guidance scale
        (``None``: the generation's), read by guidance-distilled denoisers only."""
        assert self.family is not None
        g = self.generation
        scales = [g.guidance_scale if s is None else float(s) for s in (guidance or [None] * len(x0))]
        return self.family.denoising_loss(x0, noise, t, cond, height=g.height, width=g.width,
                                          guidance=torch.tensor(scales, dtype=torch.float32))

    @contextlib.contextmanager
    def edit_off(self) -> Iterator[None]:
        """The original (unedited) model inside the block; the edit is folded back in afterwards."""
        self.editor.restore_original()
        try:
            yield
        finally:
            self.editor.apply()


@dataclass
class AdversarialInput:
    """The input an attack found for one prompt row.

    Attributes:
        prompt: the text to generate from (the adversarial prompt, or the row's prompt for embedding attacks).
        embedding: ``(L, d)`` prompt embedding to generate from instead of the text, or ``None``.
        pooled: ``(d,)`` pooled embedding to generate with (with ``embedding``), for families whose denoiser reads
            one (Flux, SD3: the ``pooled`` input space, :mod:`rece_lightning.maths.spaces`); ``None``: the prompt's own.
        info: JSON-serialisable details (objective values, tokens, steps …) kept in the test records.
    """

    prompt: str
    embedding: Tensor | None = None
    pooled: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class: ``run(target, rows)`` returns one :class:`AdversarialInput` per row, in order.

    Attacks must be deterministic for a seed. ``name`` labels their results (``test/<name>/…``).
    """

    name = "attack"

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        raise NotImplementedError


class NoAttack(Attack):
    """The prompts as they are (explicit, paraphrase and implicit prompts): the baseline ASR."""

    name = "no_attack"

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        return [AdversarialInput(prompt=row["prompt"]) for row in rows]
