"""What every attack may use of the model under attack, what it returns, and the trivial attack."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rece_lightning.config import GenerationConfig
from rece_lightning.editor import KVEditor
from rece_lightning.generation import generate
from rece_lightning.text import TextEncoder

Judge = Callable[[list, list[dict[str, Any]]], list[bool]]
"""``judge(images, rows) -> [concept present?]``: the evaluation protocol's verdict on generated images."""


@dataclass
class AttackTarget:
    """The narrow interface attacks work through (nothing else of the Lightning module).

    Attributes:
        pipeline: the diffusers pipeline (its tokenizer, text encoder, denoiser and scheduler), with the edit folded
            into its weights.
        text: encodes prompts into the embeddings the denoiser reads (cached).
        editor: the edit under attack (closed-form derivations against it).
        generation: the settings images are generated with.
        judge: the evaluation protocol's judge, passed in explicitly (``None``: no early stopping on success).
        pipeline_kwargs: further arguments of the pipeline's call that its model family needs (e.g. Flux's
            ``max_sequence_length``).
    """

    pipeline: Any
    text: TextEncoder
    editor: KVEditor
    generation: GenerationConfig
    judge: Judge | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        guidance: Sequence[float | None] | None = None,
        prompt_embeds: Sequence[Tensor | None] | None = None,
        output_type: str = "pil",
    ) -> Any:
        """Images (or latents) of the model as it is, one per prompt, each from its own seed."""
        g = self.generation
        return generate(self.pipeline, prompts, seeds, num_inference_steps=g.num_inference_steps,
                        guidance_scale=g.guidance_scale, guidance=guidance, height=g.height, width=g.width,
                        prompt_embeds=prompt_embeds, output_type=output_type, extra=self.pipeline_kwargs)

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
        info: JSON-serialisable details (objective values, tokens, steps …) kept in the test records.
    """

    prompt: str
    embedding: Tensor | None = None
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
