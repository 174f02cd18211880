"""RECE's own derivation used as an attack: the embedding that best regenerates each prompt in the edited model."""

from __future__ import annotations

from typing import Any

import torch

from rece_lightning.attacks.base import AdversarialInput, Attack, AttackTarget
from rece_lightning.editor import KVEditor


class EmbeddingInversion(Attack):
    """Closed-form embedding inversion (RECE eq. 8, "regzero"): for each prompt embedding ``c``,
    ``c' = (γI + Σ W'ᵀW')⁻¹ (Σ W'ᵀ W₀) c`` makes the edited model's keys and values mimic the original model's.

    Args:
        gamma: γ, the ridge on ``c'`` (smaller = closer imitation, larger norm).
    """

    name = "inversion"

    def __init__(self, gamma: float = 0.1) -> None:
        self.gamma = gamma

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        prompts = [row["prompt"] for row in rows]
        target.text.encode(prompts)
        derived = target.editor.derive([target.text.full(p) for p in prompts], gamma=self.gamma)
        out = []
        for prompt, emb in zip(prompts, derived, strict=True):
            residual = _regeneration_error(target.editor, target.text.full(prompt), emb)
            out.append(AdversarialInput(prompt=prompt, embedding=emb.float().cpu(),
                                        info={"relative_regeneration_error": residual}))
        return out


@torch.no_grad()
def _regeneration_error(editor: KVEditor, concept: torch.Tensor, candidate: torch.Tensor) -> float:
    """``Σ‖W'c' − W₀c‖ / Σ‖W₀c‖`` over all K/V projections: how well the edited model is fooled."""
    num = den = 0.0
    for p in editor.projections:
        w1 = p.module.weight.double().cpu()
        w0 = editor.original[p.key].double().cpu()
        target = concept.cpu() @ w0.T
        num += float((candidate.cpu() @ w1.T - target).square().sum())
        den += float(target.square().sum())
    return (num / den) ** 0.5 if den else 0.0
