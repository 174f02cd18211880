"""A robust, opt-in erasure recipe (``recipe: robust``): erase the concept in many contexts, keep its neighbours.

The paper recipe erases the concept's own tokens (UCE) and then, each iteration, one derived embedding per concept
(RECE). On the testbed this leaves paraphrases and implicit cues ("a yield sign") largely intact, and running it
longer breaks neighbours. The robust recipe keeps RECE's closed forms but changes *what* is erased and preserved:

* **caption sets** (first edit): every concept phrasing (the concept and ``concept_texts``) is placed in every
  ``templates`` context, and all token rows of each caption are mapped to the anchor's rows — the concept is erased
  in context, not only as a bare word (BERT/CLIP token rows are contextual: every row of "a red triangle" carries
  the triangle);
* **preserved neighbours**: the same templates filled with ``neighbours`` (related concepts that must survive, e.g.
  the other shapes) and with words mined automatically from the tokenizer's vocabulary (``mine_neighbours``:
  the words nearest to the concept in the text encoder's space that are not the concept), preserved with a strong
  scale so that the least-squares edit removes only what tells the concept apart from them;
* **judged prompts** (``judged_prompts``): prompts labelled by a judge on the original model
  (:mod:`rece_lightning.judged_prompts`: the testbed's implicit captions) — those that show the concept are erased, towards an
  anchor describing the judged image without the concept when the file gives one, the others preserved (a discrete,
  caption-level counterpart of the derivation);
* **many derivations per iteration**: RECE's closed-form embedding is derived from every caption and for every
  ``gammas`` value (not one per concept), and all are erased together;
* **concept expansion** (``expand``): vocabulary words whose edited K/V outputs are still closer to the concept's
  original outputs than to any preserved neighbour's are erased as ordinary concepts (a discrete counterpart of the
  continuous derivation);
* **a stopping rule** (:meth:`RobustConfig.selection_rule`, a :class:`~rece_lightning.selection.SelectionRule`):
  iterate until the concept rate of the validation prompts reaches ``stop_concept_rate`` or their preservation falls
  below the first validated stage's by more than ``stop_preservation_drop``; of the stages that kept preservation,
  the one with the lowest concept rate is kept (the earlier on ties).

Everything is written against the public APIs of :class:`~rece_lightning.editor.KVEditor` (``derive``, ``erase``)
and :class:`~rece_lightning.text.TextEncoder` (``encode``, ``full``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rece_lightning.config import MAX_ITERATIONS, MAX_WEIGHT, check_number
from rece_lightning.editor import KVEditor
from rece_lightning.errors import RECEError
from rece_lightning.files import check_readable_file, read_csv
from rece_lightning.prompts import read_prompts
from rece_lightning.robust_auto import (  # noqa: F401 (expansion_scores, output_features: public here too)
    AUTO,
    AutoSettings,
    expansion_scores,
    output_features,
    vocabulary_words,
    world_neighbours,
    world_phrasings,
)
from rece_lightning.selection import SelectionRule
from rece_lightning.text import TextEncoder


@dataclass
class RobustConfig:
    """Settings of ``recipe: robust`` (see the module docstring).

    Attributes:
        iterations: the most derive-and-erase iterations after the first edit (the stopping rule may end earlier).
        concept_texts: other phrasings of the concepts (synonyms), erased like the concepts.
        templates: caption contexts with one ``{}`` slot, filled with every concept phrasing (erased) and every
            neighbour (preserved); ``"{}"`` alone is the bare phrase.
        neighbours: related concepts to keep (e.g. the other shapes); filled into the templates and preserved.
        mine_neighbours: also preserve this many vocabulary words nearest to the concept (in the text encoder's
            input-embedding space) that are not the concept or its phrasings.
        preserve: further texts preserved as they are (all token rows), beside the anchors.
        lamb, erase_scale, preserve_scale: the UCE weights of every robust edit.
        gammas: γ values of RECE's derivation; one embedding per caption and per γ each iteration.
        erase_prompts: prompts showing the concept, erased as captions: a list, a CSV file (``prompt`` column) or
            ``testbed`` (captions of the testbed's training grammar, explicit templates only).
        preserve_prompts: prompts without the concept, preserved (same sources): the model's normal prompts.
        num_prompts: how many prompts ``testbed`` samples (or the most read from a file; 0 = all).
        judged_prompts: a CSV of prompts labelled by a judge on the original model (columns ``prompt``,
            ``shows_concept`` 0/1; :mod:`rece_lightning.judged_prompts` writes one from the model's implicit captions): those
            that show the concept are erased like the captions, towards the file's ``anchor`` column when it has one
            (else the concept's anchor: they name no phrase to replace), the others preserved.
        context_anchor: the anchor of an erased prompt is the prompt with its concept phrase replaced by this text
            (``"shape"``: "a red triangle" → "a red shape"); a list is cycled over the prompts (e.g. the neighbours:
            "a red triangle" → "a red circle", the next one → "… square"); ``None`` maps it to the concept's anchor.
        derive_captions: derive from every caption (``True``) or only from the bare concept phrasings.
        anchor_in_context: a caption's anchor is its template filled with the anchor (``"a red {}"`` → ``"a red"``
            for the anchor ``" "``), so the context survives; ``False`` maps every caption to the bare anchor.
        keep_captions: each iteration erases the captions again beside the derived embeddings (the first edit's
            constraints are re-imposed instead of being relaxed by the next closed form).
        aligned: erase each caption's rows from the concept's last token on, paired with the anchor's rows by the
            official UCE token alignment (``True``), or all rows of the caption onto all rows of its anchor.
        expand: vocabulary words erased per iteration by concept expansion (0 = off).
        expand_pool: candidate words for expansion and mining (the nearest in the text encoder's input space).
        stop_concept_rate: stop when the validation concept rate is at most this.
        stop_preservation_drop: stop (and keep the previous stage) when validation preservation falls below the
            first edit's by more than this.
        concept_metric, preservation_metric: the logged metrics the stopping rule reads (``model.keep_best``, when
            set, must name ``concept_metric``: the two select the same stage).
    """

    iterations: int = 6
    concept_texts: list[str] | str = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: ["{}"])
    neighbours: list[str] | str = field(default_factory=list)
    mine_neighbours: int = 0
    preserve: list[str] = field(default_factory=lambda: [" "])
    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    gammas: list[float] = field(default_factory=lambda: [0.1])
    derive_captions: bool = True
    anchor_in_context: bool = False
    keep_captions: bool = True
    aligned: bool = False
    erase_prompts: list[str] | str | None = None
    preserve_prompts: list[str] | str | None = None
    num_prompts: int = 300
    judged_prompts: str | None = None
    context_anchor: str | list[str] | None = None
    expand: int = 0
    expand_pool: int = 2000
    stop_concept_rate: float = 0.0
    stop_preservation_drop: float = 0.02
    concept_metric: str = "val/concept_rate"
    preservation_metric: str = "val/preservation"
    auto: AutoSettings = field(default_factory=AutoSettings)
    selection_split: bool = False
    stop_margin_images: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.auto, Mapping):  # a plain mapping (hparams, the framework-free API)
            self.auto = AutoSettings(**self.auto)

    def searched(self) -> list[str]:
        """The settings the run has to find itself (``concept_texts``/``judged_prompts`` set to ``auto``)."""
        return [name for name in ("concept_texts", "judged_prompts") if getattr(self, name) == AUTO]

    def check(self) -> None:
        """Raise a :class:`RECEError` naming the first invalid setting."""
        for name in ("concept_texts", "neighbours"):
            if isinstance(getattr(self, name), str) and getattr(self, name) != AUTO:
                raise RECEError(f"robust.{name} must be a list of texts or 'auto', got {getattr(self, name)!r}")
        self.auto.check()
        if self.stop_margin_images < 0:
            raise RECEError(f"robust.stop_margin_images must be ≥ 0, got {self.stop_margin_images}")
        check_number("robust.iterations", self.iterations, integer=True, maximum=MAX_ITERATIONS)
        check_number("robust.lamb (λ)", self.lamb, strict=True, maximum=MAX_WEIGHT)
        check_number("robust.erase_scale", self.erase_scale, maximum=MAX_WEIGHT)
        check_number("robust.preserve_scale", self.preserve_scale, maximum=MAX_WEIGHT)
        if not self.gammas or any(g < 0 for g in self.gammas):
            raise RECEError(f"robust.gammas must be a non-empty list of values ≥ 0, got {self.gammas}")
        if self.judged_prompts not in (None, AUTO):
            check_readable_file(self.judged_prompts, "robust.judged_prompts", "write one with python -m rece_lightning.judged_prompts --concept C --out FILE")
        for t in self.templates:
            if t.count("{}") != 1:
                raise RECEError(f"robust template {t!r} must have exactly one '{{}}' slot")

    def selection_rule(self, mode: Literal["min", "max"] = "min") -> SelectionRule:
        """The stopping rule: rank by ``concept_metric`` (``mode``), stop at ``stop_concept_rate``, guard
        ``preservation_metric`` with ``stop_preservation_drop``; with ``selection_split`` both are read on the
        selection half (``select/<key>``), with a margin of ``stop_margin_images`` set once its size is known."""
        metric, guard = self.concept_metric, self.preservation_metric
        if self.selection_split:
            metric, guard = ("select/" + key.split("/", 1)[-1] for key in (metric, guard))
        return SelectionRule(metric=metric, mode=mode, target=self.stop_concept_rate, guard=guard,
                             max_drop=self.stop_preservation_drop)


def fill(templates: Sequence[str], phrases: Sequence[str]) -> list[str]:
    """Every template filled with every phrase, in order, without duplicates."""
    return list(dict.fromkeys(" ".join(t.format(p).split()) for p in phrases for t in templates))


# ----------------------------------------------------------------------------------------- caption sources
def sample_testbed_captions(concept: str, n: int, *, with_concept: bool, seed: int = 0) -> list[str]:
    """``n`` captions of the testbed's training grammar (explicit templates only, no implicit cue), each showing
    the concept (``with_concept``) or a scene without it — the testbed's counterpart of a caption corpus."""
    import numpy as np

    from rece_lightning.testbed.captions import explicit_caption
    from rece_lightning.testbed.prompts import TESTBED_CONCEPTS
    from rece_lightning.testbed.world import random_scene

    if concept not in TESTBED_CONCEPTS:
        raise RECEError(f"{concept!r} is not a testbed shape, colour or pattern")
    attribute = TESTBED_CONCEPTS[concept].attribute
    rng = np.random.default_rng([seed, sum(map(ord, concept)), int(with_concept)])
    out: list[str] = []
    while len(out) < n:
        scene = random_scene(rng, **({attribute: concept} if with_concept else {}))
        if not with_concept and getattr(scene, attribute) == concept:
            continue
        out.append(explicit_caption(scene, rng, name_pattern=attribute == "pattern" or rng.random() < 0.7,
                                    name_background=rng.random() < 0.5))
    return list(dict.fromkeys(out))


def caption_prompts(source: str | list[str], concept: str, n: int, *, with_concept: bool, seed: int = 0) -> list[str]:
    """The texts of ``erase_prompts``/``preserve_prompts``: a list, a prompt CSV (read by
    :func:`rece_lightning.prompts.read_prompts`, the first ``n`` non-empty prompts; 0 = all) or ``"testbed"``
    (:func:`sample_testbed_captions`)."""
    if isinstance(source, list):
        return list(source)
    if source == "testbed":
        return sample_testbed_captions(concept, n, with_concept=with_concept, seed=seed)
    prompts = [row["prompt"] for row in read_prompts(source, seeds=False) if row["prompt"]]
    return prompts[:n] if n else prompts


def read_judged(path: str) -> tuple[dict[str, str | None], list[str]]:
    """``({prompt that shows the concept: its anchor or None}, [the other prompts])`` of a judged-prompt CSV (columns
    ``prompt``, ``shows_concept`` and optionally ``anchor``)."""
    columns, rows = read_csv(path, "robust.judged_prompts")
    if not {"prompt", "shows_concept"} <= set(columns):
        raise RECEError(f"robust.judged_prompts: {path} needs the columns 'prompt' and 'shows_concept' (0 or 1)")
    bad = [r["shows_concept"] for r in rows if r["shows_concept"] not in ("0", "1")]
    if bad:
        raise RECEError(f"robust.judged_prompts: {path}: shows_concept must be 0 or 1, got {bad[0]!r}")
    shown = {r["prompt"]: (r.get("anchor") or "").strip() or None
             for r in rows if r["shows_concept"] == "1" and r["prompt"].strip()}
    other = [r["prompt"] for r in rows if r["shows_concept"] == "0" and r["prompt"].strip()]
    return shown, other


def replace_phrase(prompt: str, phrases: Sequence[str], replacement: str) -> str | None:
    """``prompt`` with its longest occurrence of one of ``phrases`` replaced (word-bounded), or ``None``."""
    import re

    for phrase in sorted(phrases, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", re.IGNORECASE)
        if pattern.search(prompt):
            return " ".join(pattern.sub(replacement, prompt, count=1).split())
    return None


# -------------------------------------------------------------------------------------------- vocabulary
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

    def preserved_rows(self) -> Tensor:
        """All token rows of the preserved texts, stacked (the preserve term of every robust edit)."""
        return torch.cat([self.text.full(t) for t in self.preserved])

    def _erase(self, blocks: list[tuple[Tensor, Tensor]]) -> None:
        cfg = self.config
        self.editor.erase(blocks, self.preserved_rows(), lamb=cfg.lamb, erase_scale=cfg.erase_scale,
                          preserve_scale=cfg.preserve_scale)

    def first_edit(self) -> None:
        """Erase every caption (all token rows) towards its anchor, preserving the neighbours."""
        self.text.encode(self.texts())
        self._erase(self._caption_blocks())

    def _caption_blocks(self) -> list[tuple[Tensor, Tensor]]:
        if self.config.aligned:
            return [self.text.aligned(c, " " if self.anchor_of(c) == "" else self.anchor_of(c)) for c in self.captions]
        else:
            blocks = [(self.text.full(c), self.text.full(self.anchor_of(c))) for c in self.captions]
        return blocks

    def derive(self) -> list[tuple[Tensor, Tensor]]:
        """RECE's closed-form embeddings of every caption (or phrase) and every γ, paired with their anchors."""
        sources = self.captions if self.config.derive_captions else self.phrases
        sources = [*sources, *self.expanded]
        blocks = []
        for gamma in self.config.gammas:
            derived = self.editor.derive([self.text.full(s) for s in sources], gamma=gamma)
            blocks += [(emb, self.text.full(self.anchor_of(s))) for emb, s in zip(derived, sources, strict=True)]
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
        ``auto`` settings with the run's ``judge`` (:mod:`rece_lightning.robust_auto`), then build the caption sets.
        ``judge_captions``/``write_judged`` are :func:`rece_lightning.judged_prompts.judge_implicit_captions` and
        :func:`~rece_lightning.judged_prompts.write_judged_prompts` (passed in: this module imports no callback)."""
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
        from rece_lightning import robust_auto as auto

        cfg, settings, concept = self.config, self.config.auto, self.concepts[0]
        searched = cfg.searched()
        key = auto.cache_key(self.editor.original, {
            **about, "concept": concept, "neighbours": self.neighbours, "searched": searched,
            "settings": auto.settings_of(settings), "judge": type(judge).__name__,
            "judge_protocol": judge.protocol()})
        found = auto.read_cache(key) if settings.cache else None
        source = "cache" if found is not None else "search"
        if found is None:
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
                auto.write_json(found, auto.cache_root() / "robust" / f"{key}.json")
        folder = Path(folder)
        if "expansion" in found:
            cfg.concept_texts = [*self.synonyms(), *found["expansion"]["found"]]
        if "judged" in found:
            cfg.judged_prompts = str(write_judged(folder / "judged_prompts.csv", found["judged"]))
        auto.write_json({"key": key, "source": source, "concept": concept, "neighbours": self.neighbours,
                         "context_anchor": self.context_anchor, "concept_texts": cfg.concept_texts,
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
