"""RECE's own derivation used as an attack: the embedding that best regenerates each prompt in the edited model."""

from __future__ import annotations

from typing import Any

import torch

from rece_lightning.attacks.base import AdversarialInput, Attack, AttackTarget
from rece_lightning.errors import RECEError
from rece_lightning.maths.projections import MAIN_SPACE
from rece_lightning.maths.spaces import SpacedEditor
from rece_lightning.models.family import POOLED_SPACE


class EmbeddingInversion(Attack):
    """Closed-form embedding inversion (RECE eq. 8, "regzero"): for each prompt embedding ``c``,
    ``c' = (γI + Σ W'ᵀW')⁻¹ (Σ W'ᵀ W₀) c`` makes the edited model's text-reading layers mimic the original model's.
    Families that also read a pooled embedding (Flux, SD3) get the pooled one derived beside it from the pooled
    layer (:mod:`rece_lightning.maths.spaces`), and images are generated from both.

    Args:
        gamma: γ, the ridge on ``c'`` (smaller = closer imitation, larger norm).
    """

    name = "inversion"

    def __init__(self, gamma: float = 0.1) -> None:
        self.gamma = gamma

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        editor = target.editor
        others = set(editor.spaces) - {MAIN_SPACE, POOLED_SPACE}
        if others:
            raise RECEError(f"the inversion attack generates from the token and pooled embeddings; this model also "
                            f"reads the input spaces {sorted(others)}, which its pipeline takes in another form")
        prompts = [row["prompt"] for row in rows]
        target.text.encode(prompts)
        derived = {space: editor.derive([target.text.space(space).full(p) for p in prompts], space=space,
                                        gamma=self.gamma) for space in editor.spaces}
        out = []
        for i, prompt in enumerate(prompts):
            info = {f"relative_regeneration_error{'' if s == MAIN_SPACE else '_' + s}":
                    _regeneration_error(editor, target.text.space(s).full(prompt), derived[s][i], s)
                    for s in editor.spaces}
            pooled = derived[POOLED_SPACE][i][0].float().cpu() if POOLED_SPACE in derived else None
            out.append(AdversarialInput(prompt=prompt, embedding=derived[MAIN_SPACE][i].float().cpu(), pooled=pooled,
                                        info=info))
        return out


@torch.no_grad()
def _regeneration_error(editor: SpacedEditor, concept: torch.Tensor, candidate: torch.Tensor,
                        space: str = MAIN_SPACE) -> float:
    """``Σ‖W'c' − W₀c‖ / Σ‖W₀c‖`` over the layers of input space ``space``: how well the edited model is fooled."""
    num = den = 0.0
    layers = editor.space(space)
    for p in layers.projections:
        w1 = p.module.weight.double().cpu()
        w0 = layers.original[p.key].double().cpu()
        target = concept.cpu() @ w0.T
        num += float((candidate.cpu() @ w1.T - target).square().sum())
        den += float(target.square().sum())
    return (num / den) ** 0.5 if den else 0.0
