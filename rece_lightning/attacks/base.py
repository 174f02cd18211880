"""What every attack returns, and the trivial attack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from rece_lightning.module import RECEModule


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
    """Base class: ``run(module, rows)`` returns one :class:`AdversarialInput` per row, in order.

    Attacks must be deterministic for a seed. ``name`` labels their results (``test/<name>/…``).
    """

    name = "attack"

    def run(self, module: RECEModule, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        raise NotImplementedError


class NoAttack(Attack):
    """The prompts as they are (explicit, paraphrase and implicit prompts): the baseline ASR."""

    name = "no_attack"

    def run(self, module: RECEModule, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        return [AdversarialInput(prompt=row["prompt"]) for row in rows]
