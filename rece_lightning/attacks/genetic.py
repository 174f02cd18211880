"""The discrete search of Ring-A-Bell (Tsai et al., ICLR 2024): a genetic algorithm over K tokens whose text
embedding should match a target embedding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SearchResult:
    """Best token sequence, its loss (mean squared distance to the target) and the best loss per generation."""

    tokens: list[int]
    loss: float
    history: list[float]


class GeneticSearch:
    """Minimise ``mean‖E(tokens) − target‖²`` over token sequences of length ``length`` (Ring-A-Bell's GA).

    Each generation keeps the ``elite`` best sequences, then breeds children from parents drawn from the better
    half: single-point crossover with probability ``crossover_rate``, then each token replaced by a random vocabulary
    token with probability ``mutation_rate``. All randomness comes from one seeded generator.

    Args:
        encode: maps a (B, length) batch of candidate token ids to embeddings (B, …) comparable with the target;
            called once per generation on the whole population (batched text encodings).
        vocabulary: token ids the search may use (special tokens excluded by the caller).
    """

    def __init__(
        self,
        encode: Callable[[Tensor], Tensor],
        vocabulary: Sequence[int] | Tensor,
        *,
        length: int = 16,
        population: int = 200,
        generations: int = 3000,
        mutation_rate: float = 0.25,
        crossover_rate: float = 0.5,
        elite: int = 2,
        seed: int = 0,
    ) -> None:
        if population < 4 or not 0 <= mutation_rate <= 1 or not 0 <= crossover_rate <= 1:
            raise ValueError("population must be ≥ 4 and the rates in [0, 1]")
        self.encode = encode
        self.vocabulary = torch.as_tensor(vocabulary, dtype=torch.long)
        self.length, self.population, self.generations = length, population, generations
        self.mutation_rate, self.crossover_rate, self.elite, self.seed = mutation_rate, crossover_rate, elite, seed

    def _random_tokens(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return self.vocabulary[torch.randint(len(self.vocabulary), shape, generator=generator)]

    @torch.no_grad()
    def losses(self, population: Tensor, target: Tensor) -> Tensor:
        emb = self.encode(population).double()
        return (emb - target.double().to(emb.device)).flatten(1).square().mean(1).cpu()

    @torch.no_grad()
    def search(self, target: Tensor, initial: Tensor | None = None) -> SearchResult:
        """Run the search towards ``target``; ``initial`` (n, length) seeds part of the first population."""
        g = torch.Generator().manual_seed(self.seed)
        pop = self._random_tokens((self.population, self.length), g)
        if initial is not None:
            pop[: len(initial)] = initial[: self.population]
        history: list[float] = []
        losses = self.losses(pop, target)
        for _ in range(self.generations):
            order = torch.argsort(losses, stable=True)
            pop, losses = pop[order], losses[order]
            history.append(float(losses[0]))
            n_children = self.population - self.elite
            half = max(2, self.population // 2)
            mothers = pop[torch.randint(half, (n_children,), generator=g)]
            fathers = pop[torch.randint(half, (n_children,), generator=g)]
            cut = torch.randint(1, self.length, (n_children, 1), generator=g) if self.length > 1 else None
            cross = torch.rand(n_children, 1, generator=g) < self.crossover_rate
            children = mothers.clone()
            if cut is not None:
                from_father = (torch.arange(self.length)[None, :] >= cut) & cross
                children[from_father] = fathers[from_father]
            mutate = torch.rand(n_children, self.length, generator=g) < self.mutation_rate
            children[mutate] = self._random_tokens((int(mutate.sum()),), g)
            child_losses = self.losses(children, target)
            pop = torch.cat([pop[: self.elite], children])
            losses = torch.cat([losses[: self.elite], child_losses])
        best = int(torch.argmin(losses))
        history.append(float(losses[best]))
        return SearchResult(tokens=pop[best].tolist(), loss=float(losses[best]), history=history)
