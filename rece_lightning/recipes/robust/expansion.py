"""Concept expansion in the text encoder's and the K/V output space: vocabulary words, their input-embedding
neighbours, and how much closer an edited text's keys and values still are to the concept's than to any
neighbour's (:func:`expansion_scores`), scored a chunk at a time (:func:`score_vocabulary`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from rece_lightning.maths.editor import KVEditor


def input_embedding_table(text_encoder) -> Tensor:
    """The text encoder's token (input) embedding matrix."""
    return text_encoder.get_input_embeddings().weight.detach().to("cpu", torch.float64)


def nearest_words(tokenizer, text_encoder, query: Sequence[str], k: int, exclude: Sequence[str] = ()) -> list[str]:
    """The ``k`` whole words whose input embeddings are most cosine-similar to the mean of ``query``'s tokens."""
    table = input_embedding_table(text_encoder)
    ids = [i for q in query for i in tokenizer(q, add_special_tokens=False).input_ids]
    if not ids:
        return []
    centre = table[ids].mean(0)
    vocab = tokenizer.get_vocab()
    words = vocabulary_words(tokenizer)
    excluded = {w.lower() for e in exclude for w in e.split()}
    words = [w for w in words if w not in excluded]
    rows = torch.tensor([vocab.get(w, vocab.get(w + "</w>", 0)) for w in words])
    sims = torch.nn.functional.cosine_similarity(table[rows], centre[None], dim=1)
    order = sims.argsort(descending=True)[:k]
    return [words[int(i)] for i in order]




def vocabulary_words(tokenizer, limit: int | None = None) -> list[str]:
    """Whole-word alphabetic tokens of a tokenizer's vocabulary (BERT ``##`` pieces and CLIP ``</w>`` handled)."""
    vocab = tokenizer.get_vocab()
    words = []
    for token in sorted(vocab, key=vocab.get):
        word = token.removesuffix("</w>")
        if token.startswith("##") or not word.isalpha() or len(word) < 3 or not word.isascii():
            continue
        if len(tokenizer(word, add_special_tokens=False).input_ids) != 1:
            continue
        words.append(word.lower())
        if limit is not None and len(words) >= limit:
            break
    return list(dict.fromkeys(words))



def output_features(editor: KVEditor, rows: Tensor, edited: bool = True) -> Tensor:
    """Stacked K/V outputs of token rows (n, Σ out): ``W' x`` (edited) or ``W₀ x`` (original), float64."""
    weights = editor.current_weights(torch.float64) if edited else {
        k: v.to(torch.float64) for k, v in editor.original.items()}
    x = rows.to(torch.float64)
    return torch.cat([x @ weights[p.key].to(x.device).T for p in editor.projections], dim=-1)


def expansion_scores(editor: KVEditor, candidates: Sequence[Tensor], concept: Tensor,
                     neighbours: Sequence[Tensor]) -> Tensor:
    """Concept-likeness of each candidate text under the current edit.

    The score of a candidate is the cosine similarity of its edited outputs (all rows, flattened) to the concept's
    original outputs, minus the largest similarity to a neighbour's original outputs: > 0 means the edited model
    still reads the candidate as closer to the concept than to anything that must be kept.
    """
    weights_edit = editor.current_weights(torch.float64)
    weights_orig = {k: v.to(torch.float64) for k, v in editor.original.items()}

    def feats(rows: Sequence[Tensor], w: Mapping[str, Tensor]) -> Tensor:
        x = torch.stack([r.to(torch.float64) for r in rows])  # (n, L, d)
        out = torch.cat([x @ w[p.key].T for p in editor.projections], dim=-1)
        return torch.nn.functional.normalize(out.flatten(1), dim=1)

    cand = feats(candidates, weights_edit)
    ref = feats([concept], weights_orig)
    score = cand @ ref[0]
    if neighbours:
        score = score - (cand @ feats(neighbours, weights_orig).T).max(1).values
    return score



def score_vocabulary(editor, text, words: Sequence[str], concept: str, neighbours: Sequence[str], k: int,
                     template: str = "a {}", chunk: int = 512) -> list[tuple[str, float]]:
    """The ``k`` best of ``words`` by :func:`~rece_lightning.recipes.robust.expansion.expansion_scores` (``template``-filled), scored
    ``chunk`` at a time without caching their encodings, so that peak memory does not grow with the vocabulary."""
    text.encode([template.format(concept), *(template.format(n) for n in neighbours)])
    ref = text.full(template.format(concept))
    others = [text.full(template.format(n)) for n in neighbours]
    best: list[tuple[float, int, str]] = []  # a min-heap of the k best so far
    for begin in range(0, len(words), chunk):
        part = list(words[begin:begin + chunk])
        encoded = text.encode_batch([template.format(w) for w in part])  # not cached
        scores = expansion_scores(editor, [e.embedding for e in encoded], ref, others)
        for offset, (word, score) in enumerate(zip(part, scores.tolist(), strict=True)):
            item = (float(score), -(begin + offset), word)  # ties: the earlier (more frequent) word
            if len(best) < k:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
        del encoded, scores
    return [(word, score) for score, _, word in sorted(best, reverse=True)]
