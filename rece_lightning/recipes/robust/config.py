"""The robust recipe's settings (``model.robust``) and its stopping rule (:meth:`RobustConfig.selection_rule`, a
:class:`~rece_lightning.recipes.selection.SelectionRule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from rece_lightning.errors import RECEError
from rece_lightning.files import check_readable_file
from rece_lightning.recipes.config import MAX_ITERATIONS, MAX_WEIGHT, check_number
from rece_lightning.recipes.robust.auto import (
    AUTO,
    NEAREST,
    AutoSettings,
)
from rece_lightning.recipes.selection import SelectionRule


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
        judged_scale: the weight of each judged prompt that shows the concept (``judged_prompts``) among the erased
            captions, relative to the others (1 = the same). Its rows and targets are scaled by √w, which weighs its
            term of the UCE least squares by w: ``w ‖W′c − Wt‖²`` (the same as erasing it w times). The judge saw
            the concept in these prompts' images, so the edit can be told to fit them harder than the many
            template captions that outnumber them.
        judged_preserve_scale: the weight of each judged prompt that never shows the concept among the preserved
            texts (1 = the same as the others), applied the same way (rows scaled by √w: ``w ‖W′c − Wc‖²``). The
            judge saw these prompts drawn without the concept on the original model; they are the world's other
            cues ("a slice of pizza" for the heart), which a broad erasure otherwise changes image by image.
        gammas: γ values of RECE's derivation; one embedding per caption and per γ each iteration.
        erase_prompts: prompts showing the concept, erased as captions: a list, a CSV file (``prompt`` column) or
            ``testbed`` (captions of the testbed's training grammar, explicit templates only).
        preserve_prompts: prompts without the concept, preserved (same sources): the model's normal prompts.
        num_prompts: how many prompts ``testbed`` samples (or the most read from a file; 0 = all).
        judged_prompts: a CSV of prompts labelled by a judge on the original model (columns ``prompt``,
            ``shows_concept`` 0/1; :mod:`rece_lightning.lightning.judged_prompts` writes one from the model's implicit captions): those
            that show the concept are erased like the captions, towards the file's ``anchor`` column when it has one
            (else the concept's anchor: they name no phrase to replace), the others preserved.
        context_anchor: the anchor of an erased prompt is the prompt with its concept phrase replaced by this text
            (``"shape"``: "a red triangle" → "a red shape"); a list is cycled over the prompts (e.g. the neighbours:
            "a red triangle" → "a red circle", the next one → "… square"); ``None`` maps it to the concept's anchor.
            ``auto`` is the world's other values, cycled; ``nearest`` is one of them (or of the given
            ``neighbours``) for every prompt, the one nearest the concept in the model's K/V output space
            (:func:`~rece_lightning.recipes.robust.auto.nearest_value`).
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
    judged_scale: float = 1.0
    judged_preserve_scale: float = 1.0
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
        check_number("robust.judged_scale", self.judged_scale, strict=True, maximum=MAX_WEIGHT)
        check_number("robust.judged_preserve_scale", self.judged_preserve_scale, strict=True, maximum=MAX_WEIGHT)
        if not self.gammas or any(g < 0 for g in self.gammas):
            raise RECEError(f"robust.gammas must be a non-empty list of values ≥ 0, got {self.gammas}")
        if self.context_anchor == NEAREST and isinstance(self.neighbours, list) and not self.neighbours:
            raise RECEError("robust.context_anchor is 'nearest': it chooses among robust.neighbours, which is empty; "
                            "set neighbours: auto (a testbed concept) or give them")
        if self.judged_prompts not in (None, AUTO):
            check_readable_file(self.judged_prompts, "robust.judged_prompts", "write one with python -m rece_lightning.lightning.judged_prompts --concept C --out FILE")
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
