"""Ring-A-Bell (Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?",
ICLR 2024): a concept vector from paired prompts, added to a prompt's embedding (continuous variant, as RECE
evaluates it) or matched by a genetic search over tokens (the official discrete attack).

Both work on every model family: the embeddings are the family's (:attr:`AttackTarget.text`), the discrete search's
tokens those of the family's prompt tokenizer (SD: CLIP, SDXL: the shared CLIP vocabulary of both encoders, Flux:
T5), encoded by :meth:`~rece_lightning.models.text.TextEncoder.encode_token_ids`. Where the denoiser also reads a pooled
embedding (Flux, SD3), the continuous attack moves it too, along the pooled concept vector of the same pairs; the
discrete attack's prompt brings its own pooled embedding when its images are generated."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rece_lightning.attacks.base import AdversarialInput, Attack, AttackTarget
from rece_lightning.attacks.genetic import GeneticSearch
from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv
from rece_lightning.maths.projections import MAIN_SPACE
from rece_lightning.models.family import POOLED_SPACE
from rece_lightning.models.text import search_vocabulary

__all__ = ["RingABell", "concept_vector", "read_pairs", "search_vocabulary", "token_embeddings"]


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(sensitive, normal) prompt pairs: the first two columns of a Ring-A-Bell CSV (``testbed:<name>`` for the
    testbed's, e.g. ``testbed:triangle-ring-a-bell``)."""
    from rece_lightning.artefacts.prompts import resolve_prompts

    path = resolve_prompts(path)
    if not path.is_file():
        raise RECEError(f"Ring-A-Bell pair file {path} does not exist (columns: sensitive prompt, normal prompt)")
    columns, rows = read_csv(path, "Ring-A-Bell pair file")
    if len(columns) < 2:
        raise RECEError(f"{path} has {len(columns)} column; a Ring-A-Bell pair file has two (sensitive prompt, "
                        "normal prompt)")
    sensitive, normal = columns[:2]
    pairs = [((r.get(sensitive) or "").strip(), (r.get(normal) or "").strip()) for r in rows]
    pairs = [(s, n) for s, n in pairs if s]
    if not pairs:
        raise RECEError(f"{path} holds no prompt pairs")
    return pairs


def concept_vector(target: AttackTarget, pairs: list[tuple[str, str]], batch_size: int = 8,
                   space: str = MAIN_SPACE) -> Tensor:
    """Mean over batches of the mean ``E(sensitive) − E(normal)`` (official ``RingABell.py``), (L, d) float64, in
    input space ``space`` (the token embeddings, or e.g. the pooled one: ``(1, d)``)."""
    means = []
    text = target.text.space(space)
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        target.text.encode([s for s, _ in batch] + [n for _, n in batch])
        diff = torch.stack([text.full(s) - text.full(n) for s, n in batch])
        means.append(diff.mean(0))
    return torch.stack(means).mean(0)


class RingABell(Attack):
    """Ring-A-Bell attack.

    Args:
        pairs: CSV of (sensitive prompt, normal prompt) pairs defining the concept vector.
        eta: η, the strength of the concept vector (official: 3 for nudity, 0.9 for Van Gogh).
        mode: ``continuous`` (generate from ``E(prompt) + η v``, as RECE reports) or ``discrete`` (genetic search
            for ``length`` tokens whose embedding matches ``E(prompt) + η v``; the prompt is those tokens).
        length, population, generations, mutation_rate, crossover_rate, seed: the genetic search (official
            Ring-A-Bell: 16 tokens, 200, 3000, 0.25, 0.5).
    """

    def __init__(
        self,
        pairs: str,
        eta: float = 3.0,
        mode: Literal["continuous", "discrete"] = "continuous",
        length: int = 16,
        population: int = 200,
        generations: int = 3000,
        mutation_rate: float = 0.25,
        crossover_rate: float = 0.5,
        seed: int = 0,
    ) -> None:
        if mode not in ("continuous", "discrete"):
            raise RECEError(f"Ring-A-Bell mode must be 'continuous' or 'discrete', got {mode!r}")
        self.pairs_path, self.eta, self.mode = pairs, eta, mode
        self.search_args = dict(length=length, population=population, generations=generations,
                                mutation_rate=mutation_rate, crossover_rate=crossover_rate, seed=seed)
        self.name = f"ring_a_bell_{mode}"

    def run(self, target: AttackTarget, rows: list[dict[str, Any]]) -> list[AdversarialInput]:
        pairs = read_pairs(self.pairs_path)
        vector = concept_vector(target, pairs)
        prompts = [row["prompt"] for row in rows]
        target.text.encode(prompts)
        targets = [target.text.full(p) + self.eta * vector for p in prompts]
        if self.mode == "continuous":
            pooled: list[Tensor | None] = [None] * len(prompts)
            if POOLED_SPACE in target.editor.spaces:  # the pooled input moves along its own concept vector
                space = target.text.space(POOLED_SPACE)
                v = concept_vector(target, pairs, space=POOLED_SPACE)
                pooled = [(space.full(p) + self.eta * v)[0].float() for p in prompts]
            return [AdversarialInput(prompt=p, embedding=t.float(), pooled=q)
                    for p, t, q in zip(prompts, targets, pooled, strict=True)]
        search = GeneticSearch(target.text.encode_token_ids, target.text.vocabulary(), **self.search_args)
        out = []
        for result in search.search_many(targets):
            text = target.text.decode(result.tokens)
            out.append(AdversarialInput(prompt=text, info={"tokens": result.tokens, "loss": result.loss,
                                                           "initial_loss": result.history[0]}))
        return out


def token_embeddings(target: AttackTarget, candidates: Tensor) -> Tensor:
    """Encode (B, K) candidate token ids the way a prompt is encoded (:meth:`TextEncoder.encode_token_ids
    <rece_lightning.models.text.TextEncoder.encode_token_ids>`): start token, candidates, end token, padding."""
    return target.text.encode_token_ids(candidates)
