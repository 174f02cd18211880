"""What ``recipe: robust`` finds inside the run when its settings say ``auto`` (issue 21).

Three settings of :class:`~rece_lightning.recipes.robust.config.RobustConfig` can be left to the run, which finds them on the
*original* model, with the run's own judge (the first metric callback that can tell whether an image shows the
concept: :meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.judge`, e.g. the testbed classifier or NudeNet), before
the first edit:

* ``concept_texts: auto`` — **judge-verified concept expansion**: the first ``auto.pool`` whole words of the
  tokenizer's vocabulary are scored in the model's K/V output space (:func:`~rece_lightning.recipes.robust.expansion.expansion_scores`:
  how much closer the keys and values of ``"a <word>"`` are to the concept's than to any neighbour's), ``auto.chunk``
  words at a time so that memory stays flat whatever the vocabulary; the ``auto.shortlist`` best are generated with
  ``auto.seeds`` seeds and the words whose images the judge labels as the concept at least ``auto.keep`` times are
  erased as concept phrasings (beside the concept's own phrasings given in ``auto.synonyms``).
* ``judged_prompts: auto`` — **judged implicit captions** (:func:`rece_lightning.lightning.judged_prompts.judge_implicit_captions`
  with the run's judge): ``auto.samples`` captions from ``auto.captions`` (the
  testbed's implicit training cues of every attribute, or a CSV with a ``prompt`` column) are generated with
  ``auto.seeds`` seeds; ``shows_concept = 1`` when at least ``auto.keep`` images show the concept, ``0`` when none does
  (the rest is ambiguous and left out). With ``auto.describe`` and a judge that labels every attribute (the testbed
  classifier), each concept prompt gets an anchor describing what the judge saw with the concept's value replaced by
  another one ("a yield sign" drawn as a red outlined triangle → "a red outlined circle").
* ``neighbours: auto`` (and ``context_anchor: auto``) — on the testbed, the world's other values of the concept's
  attribute (the other shapes, colours or patterns); elsewhere nothing (give them).
* ``context_anchor: nearest`` — one of those values (or of the given neighbours) for every caption: the one whose K/V
  outputs on the original model are nearest the concept's (:func:`nearest_value`).

What is found is written into the run folder (``<log_dir>/robust/auto.json`` and ``judged_prompts.csv``), logged in
one line, and cached under ``$RECE_CACHE_DIR/robust/<key>.json`` (default ``~/.cache/rece-lightning``); the key hashes
the model's original K/V weights, the model source, the judge's protocol, the concept, its neighbours and every
setting of the search, so a second run on the same model skips the search and a change of any of them misses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rece_lightning.errors import RECEError
from rece_lightning.files import atomic_path, cache_dir
from rece_lightning.recipes.robust.expansion import output_features, score_vocabulary, vocabulary_words

AUTO = "auto"
"""The value of a robust setting that the run finds itself."""

NEAREST = "nearest"
"""``context_anchor: nearest``: every caption's concept phrase is replaced by one value, the nearest other value in the
model's K/V output space (:func:`nearest_value`)."""

Judge = Callable[[Sequence[Any], Sequence[Mapping[str, Any]]], list[bool]]
"""``judge(images, rows) -> [concept shown?]`` (:meth:`~rece_lightning.lightning.callbacks.metric.ImageMetric.judge`)."""

SEED_OFFSET = 500_000
"""Generation seeds of the search and of the judged prompts start here, far from the evaluation prompts' seeds."""

Generate = Callable[[list[str], list[int]], list[Any]]
"""``generate(prompts, seeds) -> images`` of the original model (:meth:`~rece_lightning.lightning.module.RECEModule.generate`)."""


@dataclass
class AutoSettings:
    """How the ``auto`` settings are searched (see the module docstring).

    Attributes:
        synonyms: the concept's own phrasings, erased beside the words found (``concept_texts: auto``); ``None``:
            the testbed grammar's phrasings of a world value (none elsewhere).
        pool: vocabulary words scored in K/V space (the first ones of the tokenizer, whole words only).
        chunk: words scored at a time (memory).
        shortlist: best-scored words generated and judged.
        template: how a word is prompted (one ``{}`` slot).
        seeds, keep: images per word or caption, and how many must show the concept.
        samples: captions drawn from ``captions`` for ``judged_prompts: auto``.
        captions: ``testbed`` (the world's implicit training cues) or a CSV with a ``prompt`` column.
        describe: give each judged concept prompt an anchor describing what the judge saw without the concept
            (only with a judge that labels every attribute: the testbed classifier).
        batch: images generated per call.
        cache: read and write the cache (``$RECE_CACHE_DIR/robust``).
    """

    synonyms: list[str] | None = None
    pool: int = 9000
    chunk: int = 512
    shortlist: int = 128
    template: str = "a {}"
    seeds: int = 4
    keep: int = 3
    samples: int = 160
    captions: str = "testbed"
    describe: bool = True
    batch: int = 64
    cache: bool = True

    def check(self) -> None:
        """Raise a :class:`RECEError` naming the first invalid setting."""
        for name in ("pool", "chunk", "shortlist", "seeds", "keep", "samples", "batch"):
            if getattr(self, name) < 1:
                raise RECEError(f"robust.auto.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.keep > self.seeds:
            raise RECEError(f"robust.auto.keep ({self.keep}) cannot exceed robust.auto.seeds ({self.seeds})")
        if self.template.count("{}") != 1:
            raise RECEError(f"robust.auto.template {self.template!r} must have exactly one '{{}}' slot")
        if self.captions != "testbed":
            from rece_lightning.files import check_readable_file

            check_readable_file(self.captions, "robust.auto.captions", "give a CSV with a 'prompt' column or 'testbed'")


# ------------------------------------------------------------------------------------------------ the judge
def judged_counts(generate: Generate, judge: Judge, concept: str, prompts: Sequence[str], seeds: int,
                  batch: int = 64, predict: Callable[[list[Any]], list[dict]] | None = None,
                  ) -> tuple[list[int], list[list[dict]]]:
    """How many of ``seeds`` images of each prompt the judge labels as ``concept`` (and, with ``predict``, each
    prompt's per-image predictions of the concept images). Seeds ``SEED_OFFSET + i``, one per (prompt, seed)."""
    expanded = [p for p in prompts for _ in range(seeds)]
    hits: list[bool] = []
    seen: list[dict] = []
    for begin in range(0, len(expanded), batch):
        chunk = expanded[begin:begin + batch]
        seeds_ = [SEED_OFFSET + begin + i for i in range(len(chunk))]
        rows = [{"prompt": p, "seed": s, "row": begin + i, "case_number": begin + i, "concept": concept,
                 "kind": "explicit"} for i, (p, s) in enumerate(zip(chunk, seeds_, strict=True))]
        with torch.no_grad():
            images = generate(chunk, seeds_)
        verdicts = judge(images, rows)
        hits += verdicts
        if predict is not None:
            seen += [p if v else {} for p, v in zip(predict(images), verdicts, strict=True)]
    counts = [sum(hits[i * seeds:(i + 1) * seeds]) for i in range(len(prompts))]
    per_prompt = [[p for p in seen[i * seeds:(i + 1) * seeds] if p] for i in range(len(prompts))] if predict else []
    return counts, per_prompt


# ------------------------------------------------------------------------------------ the world's neighbours
def world_neighbours(concepts: Sequence[str]) -> list[str]:
    """``neighbours: auto``: the testbed world's other values of each concept's attribute (the other shapes,
    colours or patterns); nothing for a concept that is not a value of the world."""
    from rece_lightning.testbed.prompts import TESTBED_CONCEPTS

    out = [v for c in concepts if c in TESTBED_CONCEPTS for v in TESTBED_CONCEPTS[c].neighbours()]
    return [v for v in dict.fromkeys(out) if v not in concepts]


def nearest_value(editor, text, concept: str, candidates: Sequence[str]) -> tuple[str, dict[str, float]]:
    """``context_anchor: nearest``: the candidate whose K/V outputs on the original model are nearest the concept's.

    The distance is ``‖W₀ c − W₀ v‖²`` over all token rows of the bare texts and every edited projection
    (:func:`~rece_lightning.recipes.robust.expansion.output_features`), the quantity UCE's erase term moves. One value
    for every caption gives the concept's token rows one target; values taken in turn (``context_anchor: auto``) give
    them several, and the least squares fits their mean, a blend the testbed draws as its default shape (the circle:
    the circle's own erasure kept 10 % circles). The nearest value is the smallest such change. Returns the value and
    every candidate's distance (ties: the first in ``candidates``).
    """
    if not candidates:
        raise RECEError(f"robust.context_anchor is 'nearest' but {concept!r} has no other value to choose from: "
                        "give robust.neighbours")
    distances = kv_distances(editor, text, concept, candidates)
    return min(candidates, key=distances.__getitem__), distances


def kv_distances(editor, text, reference: str, candidates: Sequence[str]) -> dict[str, float]:
    """``‖W₀ r − W₀ v‖²`` of each candidate text ``v`` from ``reference`` ``r``: the squared distance of their
    original K/V outputs over all token rows (:func:`~rece_lightning.recipes.robust.expansion.output_features`)."""
    text.encode([reference, *candidates])
    own = output_features(editor, text.full(reference), edited=False)
    return {value: float(((own - output_features(editor, text.full(value), edited=False)) ** 2).sum())
            for value in candidates}


def world_phrasings(values: Sequence[str]) -> list[str]:
    """The testbed caption grammar's other phrasings of world values ("triangle" → "three-sided shape",
    "triangular shape"; "striped" → "stripy", …, "with stripes", …); nothing for a value not of the world."""
    from rece_lightning.testbed.captions import COLOR_WORDS, PATTERN_ADJS, PATTERN_PHRASES, SHAPE_WORDS

    out = [w for v in values for table in (SHAPE_WORDS, COLOR_WORDS, PATTERN_ADJS, PATTERN_PHRASES)
           for w in table.get(v, ())]
    return [w for w in dict.fromkeys(out) if w not in values]



def expand_concept(generate: Generate, judge: Judge, editor, text, concept: str, neighbours: Sequence[str],
                   settings: AutoSettings, synonyms: Sequence[str] = ()) -> dict[str, Any]:
    """Judge-verified expansion words of ``concept`` (see the module docstring; the words of the concept, its
    ``synonyms`` and ``neighbours`` are not candidates): ``{"found": [...], "counts": {...}, "shortlist": [[word,
    score], ...], "pool": n}``."""
    exclude = {w.lower() for phrase in [concept, *synonyms, *neighbours] for w in phrase.split()}
    words = [w for w in vocabulary_words(text.tokenizer, settings.pool) if w not in exclude]
    shortlist = score_vocabulary(editor, text, words, concept, neighbours, settings.shortlist, settings.template,
                                 settings.chunk)
    prompts = [settings.template.format(w) for w, _ in shortlist]
    counts, _ = judged_counts(generate, judge, concept, prompts, settings.seeds, settings.batch)
    hits = {w: c for (w, _), c in zip(shortlist, counts, strict=True)}
    found = sorted((w for w, c in hits.items() if c >= settings.keep), key=lambda w: -hits[w])
    return {"found": found, "counts": hits, "shortlist": [[w, round(s, 6)] for w, s in shortlist],
            "pool": len(words)}


# ------------------------------------------------------------------------------------------ judged captions
def read_captions(source: str, n: int, sample_seed: int = 7) -> list[str]:
    """Captions to judge (``robust.auto.captions``): ``testbed`` (the world's implicit training captions, as
    :func:`rece_lightning.lightning.judged_prompts.implicit_captions`) or the first ``n`` distinct prompts of a CSV with a
    ``prompt`` column."""
    if source == "testbed":
        import numpy as np

        from rece_lightning.testbed.captions import IMPLICIT_CUES, implicit_caption, scene_for_cue

        rng = np.random.default_rng(sample_seed)
        cues = [c for c in IMPLICIT_CUES if not c.heldout]
        out = []
        for _ in range(n):
            cue = cues[int(rng.integers(len(cues)))]
            out.append(implicit_caption(cue, scene_for_cue(cue, rng), rng, name_background=rng.random() < 0.5))
        return list(dict.fromkeys(out))
    from rece_lightning.files import read_csv

    _, rows = read_csv(source, "robust.auto.captions")
    return list(dict.fromkeys(r["prompt"] for r in rows if r.get("prompt")))[:n]


# --------------------------------------------------------------------------------------------------- cache
def cache_key(original: Mapping[str, torch.Tensor], about: Mapping[str, Any]) -> str:
    """SHA-256 of the model's original K/V weights bound to the JSON of everything else the search depends on
    (:func:`rece_lightning.files.tensor_sha256`), first 16 hex digits."""
    from rece_lightning.files import tensor_sha256

    return tensor_sha256(original, header=json.dumps(dict(about), sort_keys=True, default=str))[:16]


def read_cache(key: str) -> dict[str, Any] | None:
    """A cached search result, or ``None`` (missing or unreadable entries are ignored)."""
    path = cache_dir() / "robust" / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``document`` as JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")
    return path


def settings_of(settings: AutoSettings) -> dict[str, Any]:
    """The settings that change what the search finds (not ``batch``/``cache``)."""
    return {k: v for k, v in asdict(settings).items() if k not in ("batch", "cache")}
