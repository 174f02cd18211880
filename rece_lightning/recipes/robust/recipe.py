"""A robust, opt-in erasure recipe (``recipe: robust``): erase the concept in many contexts, keep its neighbours.

The paper recipe erases the concept's own tokens (UCE) and then, each iteration, one derived embedding per concept
(RECE). On the testbed this leaves paraphrases and implicit cues ("a yield sign") largely intact, and running it
longer breaks neighbours. The robust recipe keeps RECE's closed forms but changes *what* is erased and preserved:

* **caption sets** (first edit): every concept phrasing (the concept and ``concept_texts``) is placed in every
  ``templates`` context, and all token rows of each caption are mapped to the anchor's rows — the concept is erased
  in context, not only as a bare word (BERT/CLIP token rows are contextual: every row of "a red triangle" carries
  the triangle); with ``context_anchor`` the anchor is the same caption with the concept replaced ("a red circle";
  ``nearest``: by the one other value nearest the concept in K/V space, the same for every caption);
* **preserved neighbours**: the same templates filled with ``neighbours`` (related concepts that must survive, e.g.
  the other shapes) and with words mined automatically from the tokenizer's vocabulary (``mine_neighbours``:
  the words nearest to the concept in the text encoder's space that are not the concept), preserved with a strong
  scale so that the least-squares edit removes only what tells the concept apart from them;
* **judged prompts** (``judged_prompts``): prompts labelled by a judge on the original model
  (:mod:`rece_lightning.lightning.judged_prompts`: the testbed's implicit captions) — those that show the concept are erased, towards an
  anchor describing the judged image without the concept when the file gives one, the others preserved (weighed by
  ``judged_preserve_scale``; a discrete, caption-level counterpart of the derivation);
* **many derivations per iteration**: RECE's closed-form embedding is derived from every caption and for every
  ``gammas`` value (not one per concept), and all are erased together;
* **concept expansion** (``expand``): vocabulary words whose edited K/V outputs are still closer to the concept's
  original outputs than to any preserved neighbour's are erased as ordinary concepts (a discrete counterpart of the
  continuous derivation);
* **a stopping rule** (:meth:`RobustConfig.selection_rule`, a :class:`~rece_lightning.recipes.selection.SelectionRule`):
  iterate until the concept rate of the validation prompts reaches ``stop_concept_rate`` or their preservation falls
  below the first validated stage's by more than ``stop_preservation_drop``; of the stages that kept preservation,
  the one with the lowest concept rate is kept (the earlier on ties).

Everything is written against the public APIs of :class:`~rece_lightning.maths.editor.KVEditor` (``derive``, ``erase``)
and :class:`~rece_lightning.models.text.TextEncoder` (``encode``, ``full``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rece_lightning.errors import RECEError
from rece_lightning.files import cache_dir
from rece_lightning.maths.editor import KVEditor
from rece_lightning.models.text import TextEncoder
from rece_lightning.recipes.robust.auto import AUTO, NEAREST, nearest_value, world_neighbours, world_phrasings
from rece_lightning.recipes.robust.captions import caption_prompts, fill, read_judged, replace_phrase
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.robust.expansion import expansion_scores, nearest_words


# --------------------------------------------------------------------------------------------- the recipe
class RobustRecipe:
    """The steps of ``recipe: robust`` on an editor and a text encoder.

    Args:
        editor, text: the module's :class:`KVEditor` and :class:`TextEncoder`.
        concepts, anchors: the concepts to erase and their anchors (one per concept).
        config: the :class:`RobustConfig`.
    """

    def __init__(self, editor: KVEditor, text: TextEncoder, concepts: Sequence[str], anchors: Sequence[str],
                 config: RobustConfig) -> None:
        config.check()
        self.editor, self.text, self.config = editor, text, config
        self.concepts, self.anchors = list(concepts), list(anchors)
        self.expanded: list[str] = []
        self.found: dict[str, Any] = {}  # what the run found for the ``auto`` settings (robust_auto)
        others = world_neighbours(self.concepts)
        self.neighbours = ([*others, *world_phrasings(others)] if config.neighbours == AUTO
                           else list(config.neighbours))
        self.context_anchor = others if config.context_anchor == AUTO else config.context_anchor
        self.anchor_distances: dict[str, float] = {}  # context_anchor: nearest, every candidate's K/V distance
        if config.context_anchor == NEAREST:
            candidates = others if config.neighbours == AUTO else list(config.neighbours)
            self.context_anchor, self.anchor_distances = nearest_value(editor, text, self.concepts[0], candidates)
            print(f"rece: robust context anchor {self.context_anchor!r}: the nearest to {self.concepts[0]!r} in K/V "
                  "space of " + ", ".join(f"{v} {d:.0f}" for v, d in self.anchor_distances.items()), flush=True)
        self.built = False
        if not config.searched():
            self.build()

    def build(self) -> None:
        """Caption sets, anchors and preserved texts from the (resolved) settings."""
        config, text = self.config, self.text
        if config.searched():
            raise RECEError(f"robust.{config.searched()[0]} is 'auto': the run finds it with its judge before the "
                            "first edit; run `rece fit` with a metric callback that judges images (e.g. "
                            "ClassifierAccuracy, NudeNetMetric), or give the setting")
        phrases = list(dict.fromkeys([*self.concepts, *config.concept_texts]))
        self.phrases = phrases
        self.captions = fill(config.templates, phrases)
        concept = self.concepts[0]
        if config.erase_prompts is not None:
            self.captions += caption_prompts(config.erase_prompts, concept, config.num_prompts, with_concept=True)
        judged_shown, judged_other = ({}, []) if config.judged_prompts is None else read_judged(config.judged_prompts)
        self.captions += [prompt for prompt in judged_shown if prompt not in self.captions]
        self.judged = list(judged_shown)
        self.judged_other = list(judged_other)
        self.caption_anchor: dict[str, str] = {}
        for template in config.templates:
            for phrase in phrases:
                anchor = self._concept_anchor(phrase)
                self.caption_anchor[" ".join(template.format(phrase).split())] = (
                    " ".join(template.format(anchor).split()) or anchor if config.anchor_in_context else anchor)
        if self.context_anchor is not None:
            replacements = ([self.context_anchor] if isinstance(self.context_anchor, str)
                            else list(self.context_anchor))
            for index, caption in enumerate(self.captions):
                replaced = replace_phrase(caption, phrases, replacements[index % len(replacements)])
                if replaced is not None:
                    self.caption_anchor[caption] = replaced or " "
        for prompt, anchor in judged_shown.items():  # the judge's description of the image, without the concept
            if anchor is not None:
                self.caption_anchor[prompt] = anchor
        mined: list[str] = []
        if config.mine_neighbours:
            exclude = [*phrases, *self.neighbours]
            mined = nearest_words(text.tokenizer, text.text_encoder, self.concepts, config.mine_neighbours, exclude)
        self.mined = mined
        self.neighbour_captions = fill(config.templates, [*self.neighbours, *mined])
        extra = [] if config.preserve_prompts is None else caption_prompts(
            config.preserve_prompts, concept, config.num_prompts, with_concept=False)
        self.preserved = list(dict.fromkeys([*config.preserve, *self.anchors, *self.neighbour_captions, *extra,
                                             *judged_other]))
        self.built = True

    def texts(self) -> list[str]:
        """Every text the recipe encodes (one batched text-encoder pass; none before :meth:`build`)."""
        if not self.built:
            return []
        return [*self.captions, *self.preserved, *self.anchors, *self.caption_anchor.values()]

    def _concept_anchor(self, phrase: str) -> str:
        # the anchor of the concept named in the phrase (the first concept's anchor for synonyms)
        for concept, anchor in zip(self.concepts, self.anchors, strict=True):
            if concept in phrase:
                return anchor
        return self.anchors[0]

    def anchor_of(self, text: str) -> str:
        """What ``text`` is erased towards: its caption anchor, else the anchor of the concept it names."""
        return self.caption_anchor.get(text, self._concept_anchor(text))

    def anchor_rows(self, text: str) -> Tensor:
        """All token rows of what ``text`` is erased towards (:meth:`anchor_of`), the targets of its block."""
        return self.text.full(self.anchor_of(text))

    def preserved_rows(self) -> Tensor:
        """All token rows of the preserved texts, stacked (the preserve term of every robust edit); a judged prompt
        that never shows the concept weighed by ``judged_preserve_scale`` (its rows scaled by √w)."""
        root = self.config.judged_preserve_scale ** 0.5
        weighed = set(self.judged_other) if root != 1.0 else set()
        return torch.cat([self.text.full(t) * root if t in weighed else self.text.full(t) for t in self.preserved])

    def _erase(self, blocks: list[tuple[Tensor, Tensor]]) -> None:
        cfg = self.config
        self.editor.erase(blocks, self.preserved_rows(), lamb=cfg.lamb, erase_scale=cfg.erase_scale,
                          preserve_scale=cfg.preserve_scale)

    def first_edit(self) -> None:
        """Erase every caption (all token rows) towards its anchor, preserving the neighbours."""
        self.text.encode(self.texts())
        self._erase(self._caption_blocks())

    def _caption_blocks(self) -> list[tuple[Tensor, Tensor]]:
        """One (rows, anchor rows) block per caption; a judged prompt's block weighed by ``judged_scale`` (both
        scaled by √w: the closed form's sums ``Σ W t cᵀ`` and ``Σ c cᵀ`` take it w times)."""
        if self.config.aligned:
            blocks = [self.text.aligned(c, " " if self.anchor_of(c) == "" else self.anchor_of(c))
                      for c in self.captions]
        else:
            blocks = [(self.text.full(c), self.anchor_rows(c)) for c in self.captions]
        root = self.config.judged_scale ** 0.5
        if root != 1.0:
            judged = set(self.judged)
            blocks = [(rows * root, targets * root) if caption in judged else (rows, targets)
                      for (rows, targets), caption in zip(blocks, self.captions, strict=True)]
        return blocks

    def derive(self) -> list[tuple[Tensor, Tensor]]:
        """RECE's closed-form embeddings of every caption (or phrase) and every γ, paired with their anchors."""
        sources = self.captions if self.config.derive_captions else self.phrases
        sources = [*sources, *self.expanded]
        blocks = []
        for gamma in self.config.gammas:
            derived = self.editor.derive([self.text.full(s) for s in sources], gamma=gamma)
            blocks += [(emb, self.anchor_rows(s)) for emb, s in zip(derived, sources, strict=True)]
        return blocks

    def expand_concepts(self) -> list[str]:
        """Vocabulary words the current edit still reads as the concept (see :func:`expansion_scores`)."""
        cfg = self.config
        if not cfg.expand:
            return []
        if not hasattr(self, "_pool"):
            exclude = [*self.phrases, *self.neighbours, *self.mined]
            self._pool = nearest_words(self.text.tokenizer, self.text.text_encoder, self.concepts, cfg.expand_pool,
                                       exclude)
            self.text.encode(self._pool)
        pool = [w for w in self._pool if w not in self.expanded]
        scores = expansion_scores(self.editor, [self.text.full(w) for w in pool], self.text.full(self.concepts[0]),
                                  [self.text.full(n) for n in [*self.neighbours, *self.mined]])
        order = scores.argsort(descending=True)[: cfg.expand]
        found = [pool[int(i)] for i in order if float(scores[i]) > 0]
        self.expanded += found
        return found

    def run_stage(self, name: str) -> None:
        """Stage ``uce`` is the first edit, ``rece-N`` an iteration; ``original`` edits nothing."""
        if name == "uce":
            self.first_edit()
        elif name.startswith("rece"):
            self.iteration()

    # ------------------------------------------------------------------------------ inside the run (rece fit)
    def prepare(self, generate, judge, folder: str | Path, about: Mapping[str, Any], judge_captions,
                write_judged) -> None:
        """Before the first stage of a fit (``RECEModule.on_fit_start``, the model still original): find the
        ``auto`` settings with the run's ``judge`` (:mod:`rece_lightning.recipes.robust.auto`), then build the caption sets.
        ``judge_captions``/``write_judged`` are :func:`rece_lightning.lightning.judged_prompts.judge_implicit_captions` and
        :func:`~rece_lightning.lightning.judged_prompts.write_judged_prompts` (passed in: this module imports no callback)."""
        if self.built:
            return
        if judge is None:
            self.build()  # raises: naming the setting and the missing judge
        self.resolve_auto(generate, judge, folder, about, judge_captions, write_judged)
        self.build()

    def resolve_auto(self, generate, judge, folder: str | Path, about: Mapping[str, Any], judge_captions,
                     write_judged) -> dict[str, Any]:
        """Find the ``auto`` settings (cached by model hash), write them into ``folder`` and set them in the
        config: ``concept_texts`` = the synonyms and the words found, ``judged_prompts`` = the written CSV."""
        from rece_lightning.recipes.robust import auto as auto

        cfg, settings, concept = self.config, self.config.auto, self.concepts[0]
        searched = cfg.searched()
        key = auto.cache_key(self.editor.original, {
            **about, "concept": concept, "neighbours": self.neighbours, "searched": searched,
            "settings": auto.settings_of(settings), "judge": type(judge).__name__,
            "judge_protocol": judge.protocol()})
        found = auto.read_cache(key) if settings.cache else None
        source = "cache" if found is not None else "search"
        if found is None:
            work = []
            if "concept_texts" in searched:
                work.append(f"concept_texts: scoring up to {settings.pool} vocabulary words in K/V space, then "
                            f"generating the best {settings.shortlist} with {settings.seeds} seeds each")
            if "judged_prompts" in searched:
                work.append(f"judged_prompts: generating {settings.samples} captions with {settings.seeds} seeds each")
            print(f"rece: robust auto: searching on the original model ({'; '.join(work)}); the run's judge labels "
                  "the images and the result is cached by the model's hash", flush=True)
            found = {}
            if "concept_texts" in searched:
                found["expansion"] = auto.expand_concept(generate, judge.judge, self.editor, self.text, concept,
                                                         self.neighbours, settings, self.synonyms())
            if "judged_prompts" in searched:
                judged = judge_captions(generate, concept, seeds=settings.seeds, keep=settings.keep,
                                        anchors=settings.describe, batch=settings.batch, judge=judge,
                                        captions=auto.read_captions(settings.captions, settings.samples))
                found["judged"] = [asdict(r) for r in judged]
            if settings.cache:
                auto.write_json(found, cache_dir() / "robust" / f"{key}.json")
        folder = Path(folder)
        if "expansion" in found:
            cfg.concept_texts = [*self.synonyms(), *found["expansion"]["found"]]
        if "judged" in found:
            cfg.judged_prompts = str(write_judged(folder / "judged_prompts.csv", found["judged"]))
        auto.write_json({"key": key, "source": source, "concept": concept, "neighbours": self.neighbours,
                         "context_anchor": self.context_anchor, "context_anchor_distances": self.anchor_distances,
                         "concept_texts": cfg.concept_texts,
                         "judged_prompts": cfg.judged_prompts, **found}, folder / "auto.json")
        shown = sum(r["shows_concept"] for r in found.get("judged", []))
        print(f"rece: robust auto ({source}, key {key}): {len(found.get('expansion', {}).get('found', []))} "
              f"expansion words, {shown}/{len(found.get('judged', []))} judged captions show {concept!r}, "
              f"neighbours {self.neighbours}; written to {folder / 'auto.json'}")
        self.found = found
        return found

    def synonyms(self) -> list[str]:
        """The concept's own phrasings erased with ``concept_texts: auto``: ``auto.synonyms``, by default the
        testbed grammar's (:func:`world_phrasings`)."""
        given = self.config.auto.synonyms
        return list(given) if given is not None else world_phrasings(self.concepts)

    def iteration(self) -> None:
        """One robust iteration: expand, derive from every source and γ, erase all, preserving the neighbours."""
        self.text.encode(self.texts())
        self.expand_concepts()
        blocks = self.derive()
        blocks += [(self.text.full(w), self.text.full(self.anchors[0])) for w in self.expanded]
        if self.config.keep_captions:  # re-impose the first edit's constraints, so they are not relaxed
            blocks += self._caption_blocks()
        self._erase(blocks)
