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
    token with probability ``mutation_rate``. Each search draws from its own generator seeded with ``seed``, so
    searching many targets at once (:meth:`search_many`) gives what searching them one by one gives.

    The text encoder dominates the cost. Per generation, the children of every search are encoded in one batch
    (chunks of ``batch_size``), a token sequence shared by several searches is encoded once, and a sequence a search
    has already scored (a child identical to a parent, frequent once the population converges) is not re-encoded.

    Args:
        encode: maps a (B, length) batch of candidate token ids to embeddings (B, …) comparable with the target.
        vocabulary: token ids the search may use (special tokens excluded by the caller).
        batch_size: most sequences encoded in one call.
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
        batch_size: int = 512,
    ) -> None:
        if population < 4 or not 0 <= mutation_rate <= 1 or not 0 <= crossover_rate <= 1:
            raise ValueError("population must be ≥ 4 and the rates in [0, 1]")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.encode = encode
        self.vocabulary = torch.as_tensor(vocabulary, dtype=torch.long)
        self.length, self.population, self.generations = length, population, generations
        self.mutation_rate, self.crossover_rate, self.elite, self.seed = mutation_rate, crossover_rate, elite, seed
        self.batch_size = batch_size
        self.encoded = 0  # sequences sent to the encoder so far (the cost the cache saves)

    def _random_tokens(self, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        return self.vocabulary[torch.randint(len(self.vocabulary), shape, generator=generator)]

    @torch.no_grad()
    def _scored(self, populations: list[Tensor], targets: list[Tensor], caches: list[dict[tuple, float]]) -> list[Tensor]:
        """Losses of each search's population, encoding each sequence not yet in that search's cache once."""
        pending: dict[tuple, list[int]] = {}  # sequence -> searches that need its loss
        for i, pop in enumerate(populations):
            for seq in map(tuple, pop.tolist()):
                if seq not in caches[i]:
                    searches = pending.setdefault(seq, [])
                    if i not in searches:
                        searches.append(i)
        sequences = list(pending)
        stacked = torch.stack(targets)
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            emb = self.encode(torch.tensor(chunk, dtype=torch.long)).double().flatten(1)
            self.encoded += len(chunk)
            pairs = [(row, i) for row, seq in enumerate(chunk) for i in pending[seq]]
            rows = torch.tensor([row for row, _ in pairs], device=emb.device)
            searches = torch.tensor([i for _, i in pairs], device=emb.device)
            values = (emb[rows] - stacked.to(emb.device)[searches]).square().mean(1).tolist()
            for (row, i), value in zip(pairs, values, strict=True):
                caches[i][chunk[row]] = value
        return [torch.tensor([caches[i][seq] for seq in map(tuple, pop.tolist())], dtype=torch.float64)
                for i, pop in enumerate(populations)]

    def _children(self, pop: Tensor, g: torch.Generator) -> Tensor:
        """Crossover and mutation of parents drawn from the better half of a sorted population."""
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
        return children

    @torch.no_grad()
    def search_many(self, targets: Sequence[Tensor], initial: Tensor | None = None) -> list[SearchResult]:
        """Run one search per target, in lockstep; ``initial`` (n, length) seeds part of every first population."""
        targets = [t.double().flatten() for t in targets]
        generators = [torch.Generator().manual_seed(self.seed) for _ in targets]
        pops = [self._random_tokens((self.population, self.length), g) for g in generators]
        if initial is not None:
            for pop in pops:
                pop[: len(initial)] = initial[: self.population]
        caches: list[dict[tuple, float]] = [{} for _ in targets]
        losses = self._scored(pops, targets, caches)
        histories: list[list[float]] = [[] for _ in targets]
        for _ in range(self.generations):
            children = []
            for i, g in enumerate(generators):
                order = torch.argsort(losses[i], stable=True)
                pops[i], losses[i] = pops[i][order], losses[i][order]
                histories[i].append(float(losses[i][0]))
                children.append(self._children(pops[i], g))
            child_losses = self._scored(children, targets, caches)
            for i in range(len(targets)):
                pops[i] = torch.cat([pops[i][: self.elite], children[i]])
                losses[i] = torch.cat([losses[i][: self.elite], child_losses[i]])
        results = []
        for pop, loss, history in zip(pops, losses, histories, strict=True):
            best = int(torch.argmin(loss))
            history.append(float(loss[best]))
            results.append(SearchResult(tokens=pop[best].tolist(), loss=float(loss[best]), history=history))
        return results

    def search(self, target: Tensor, initial: Tensor | None = None) -> SearchResult:
        """Run the search towards ``target``; ``initial`` (n, length) seeds part of the first population."""
        return self.search_many([target], initial)[0]
