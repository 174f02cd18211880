"""RECE's recipe as a plain class, with no training framework: UCE, then derive-and-erase iterations.

``Recipe`` holds the model family's text side, the :class:`~rece_lightning.maths.editor.KVEditor` and the settings; each
stage is one closed-form edit:

* ``uce`` — UCE (Gandikota et al. 2024, eq. 7): every concept's tokens are mapped to its anchor with the official
  token alignment, preserving ``uce.preserve`` (or the K/V weights of ``uce.weights`` are taken as they are);
* ``rece-N`` — RECE (Gong et al., ECCV 2024): derive the embedding that still regenerates each concept in the edited
  model (eq. 8), and erase it towards the anchor preserving ``rece.preserve`` (eq. 9).

Three lines erase a concept from any supported diffusers pipeline::

    from rece_lightning import erase
    recipe = erase(pipe, concepts=["nudity"])      # the edit is folded into pipe's text-reading layers
    recipe.editor.restore_original()                # … and undone

:class:`~rece_lightning.lightning.module.RECEModule` is the Lightning shell around it (stages as epochs, validation, keep-best,
checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rece_lightning.artefacts.export import load_kv_weights
from rece_lightning.errors import RECEError
from rece_lightning.files import read_csv
from rece_lightning.maths.closed_form import Technique
from rece_lightning.maths.edit_state import EditState
from rece_lightning.maths.projections import MAIN_SPACE, check_kv_weights
from rece_lightning.maths.spaces import SpacedEditor
from rece_lightning.models.families import family_of
from rece_lightning.models.family import ModelFamily
from rece_lightning.recipes.config import (
    MAX_ITERATIONS,
    RECEConfig,
    UCEConfig,
    as_config,
    check_choice,
    check_concepts,
    check_number,
)
from rece_lightning.recipes.robust.config import RobustConfig
from rece_lightning.recipes.robust.recipe import RobustRecipe
from rece_lightning.recipes.selection import SelectionRule

__all__ = ["ORIGINAL", "Recipe", "erase", "fit_epochs", "read_preserve_csv", "selection_rule", "stage_names"]

ORIGINAL = "original"  # the stage name of the unedited model


def read_preserve_csv(path: str | Path, column: str) -> list[str]:
    """The distinct non-empty values of ``column`` in a CSV (e.g. the artists a style erasure preserves).

    Raises:
        RECEError: the file cannot be read as CSV (:func:`~rece_lightning.files.read_csv`) or has no ``column``.
    """
    columns, rows = read_csv(path, "model.preserve_csv")
    if column not in columns:
        raise RECEError(f"model.preserve_csv {path} has no column {column!r} (columns: {columns}); "
                        "set model.preserve_csv_column")
    return list(dict.fromkeys(row[column] for row in rows if row[column]))


def stage_names(method: str = "paper", rece_iterations: int = 1, robust_iterations: int = 0) -> list[str]:
    """The recipe's stages, ``["uce", "rece-1", …]``: one RECE iteration per ``rece.iterations`` (the paper recipe)
    or per ``robust.iterations`` (``method="robust"``). The one source of the stage list: :class:`Recipe`, the
    Lightning module and the trainer's epochs (:func:`fit_epochs`) all read it."""
    iterations = robust_iterations if method == "robust" else rece_iterations
    name = "robust.iterations" if method == "robust" else "rece.iterations"
    check_number(name, iterations, integer=True, maximum=MAX_ITERATIONS)  # before a list of 10⁹ names is built
    return ["uce", *(f"rece-{i + 1}" for i in range(int(iterations)))]


def fit_epochs(method: str, rece_iterations: int, robust_iterations: int, validate_original: bool) -> int:
    """``trainer.max_epochs`` of ``rece fit``: one epoch per stage (the unvalidated original is no stage)."""
    return int(validate_original) + len(stage_names(method, rece_iterations, robust_iterations))


def selection_rule(method: str, keep_best: str | None, mode: str = "min",
                   robust: RobustConfig | None = None) -> SelectionRule | None:
    """How a run chooses its kept stage (:mod:`rece_lightning.recipes.selection`), or ``None`` (the last stage is kept).

    The paper recipe keeps the best stage by ``keep_best`` when it is set. ``recipe: robust`` always selects with its
    stopping rule (:meth:`~rece_lightning.recipes.robust.config.RobustConfig.selection_rule`); ``keep_best`` composes with it when
    it names the rule's metric (``robust.concept_metric``) and sets the mode, and is refused when it names another.
    """
    if method != "robust":
        return SelectionRule(keep_best, mode) if keep_best else None  # type: ignore[arg-type]
    config = robust if robust is not None else RobustConfig()
    if keep_best and keep_best != config.concept_metric:
        raise RECEError(f"model.keep_best {keep_best} differs from robust.concept_metric {config.concept_metric}: "
                        "under recipe: robust the stopping rule keeps the stage by robust.concept_metric; "
                        f"set robust.concept_metric: {keep_best} or drop model.keep_best")
    return config.selection_rule(mode)  # type: ignore[arg-type]


class Recipe:
    """RECE (UCE + derive-and-erase iterations) on one pipeline.

    Args:
        pipeline: a diffusers pipeline of a supported family (:func:`~rece_lightning.models.family.family_of`).
        concepts: texts to erase, e.g. ``["nudity"]``.
        anchor: what each concept is mapped to: one text for all, or one per concept (official default ``" "``).
        uce: the first edit (a :class:`UCEConfig` or a mapping of its fields).
        rece: the RECE iterations (a :class:`RECEConfig` or a mapping of its fields).
        extra_preserve: texts appended to both stages' preserved texts (e.g. other artists); erased concepts are
            dropped from it.
        with_to_k: edit the key projections as well as the values.
        technique: ``replace`` (values of the anchor; one shared map) or ``tensor`` (remove the concept direction).
        method: ``paper`` (UCE + RECE as published, the default) or ``robust`` (opt-in,
            :mod:`rece_lightning.recipes.robust.recipe`: caption sets, many derivations per iteration; ``uce``/``rece`` unused).
        robust: the robust recipe's settings (a :class:`~rece_lightning.recipes.robust.config.RobustConfig` or a mapping).

    Attributes:
        family: the model-family adapter (text side and text-reading layers).
        text: the family's text encoder (cached encodings).
        editor: the edit of the text-reading layers, one per input space
            (:class:`~rece_lightning.maths.spaces.SpacedEditor`); ``editor.apply()`` folds it into the model.
        stages: the stage names, ``["uce", "rece-1", …]``.
        stage: the last stage run (``"original"`` before any).
    """

    def __init__(
        self,
        pipeline: Any,
        concepts: Sequence[str],
        anchor: str | Sequence[str] = " ",
        uce: UCEConfig | dict | None = None,
        rece: RECEConfig | dict | None = None,
        extra_preserve: Sequence[str] = (),
        with_to_k: bool = True,
        technique: Technique = "replace",
        method: str = "paper",
        robust: RobustConfig | dict | None = None,
    ) -> None:
        check_choice("model.recipe", method, ("paper", "robust"))
        self.uce, self.rece = as_config(uce, UCEConfig), as_config(rece, RECEConfig)
        self.concepts, self.anchors = self.check_settings(concepts, anchor, self.uce, self.rece, technique)
        erased = {c.lower() for c in self.concepts}
        self.extra_preserve = [t for t in extra_preserve if t.lower() not in erased]
        self.method = method
        robust_config = robust if isinstance(robust, RobustConfig) else RobustConfig(**(robust or {}))
        if method == "robust":
            robust_config.check()  # before the pipeline is read
        self.stages = stage_names(method, self.rece.iterations, robust_config.iterations)
        self.stage = ORIGINAL
        self.robust: RobustRecipe | None = None

        self.family: ModelFamily = family_of(pipeline)
        self.text = self.family.text
        for concept in self.concepts:
            self.text.check(concept, "model.concepts:")
            self.text.check_known(concept, "model.concepts:")
        for text in self.texts():
            self.text.check(text, "text")
        self.editor = SpacedEditor(self.family.text_layers(), with_to_k=with_to_k, technique=technique)
        if self.uce.weights is not None:
            source = self.uce.weights
            self.editor.set_base(check_kv_weights(self.editor.projections, load_kv_weights(source), source))
        if method == "robust":  # the opt-in recipe (rece_lightning.recipes.robust.recipe) runs the stages instead of the paper's
            # on the token space (the other input spaces, e.g. Flux's pooled embedding, stay unedited)
            self.robust = RobustRecipe(self.editor.main, self.text, self.concepts, self.anchors, robust_config)

    @staticmethod
    def check_settings(concepts: Sequence[str], anchor: str | Sequence[str], uce: UCEConfig, rece: RECEConfig,
                       technique: str) -> tuple[list[str], list[str]]:
        """Check the settings that need no model (before a slow pipeline load); returns concepts and anchors."""
        concepts, anchors = check_concepts(list(concepts), anchor)
        check_choice("technique", technique, ("replace", "tensor"))
        erased = {c.strip().lower(): c for c in concepts}
        preserved = [("uce.preserve", t) for t in uce.preserve] + [("rece.preserve", t) for t in rece.preserve or []]
        clash = next(((name, t) for name, t in preserved if t.strip().lower() in erased), None)
        if clash is not None:
            name, text = clash
            raise RECEError(f"model.{name} holds {text!r}, which model.concepts erases: preserving it would cancel the "
                            f"erasure; remove it from model.{name}")
        targets = rece.derivation_target
        if targets is not None and len(targets) != len(concepts):
            raise RECEError(f"rece.derivation_target needs one text per concept ({len(concepts)}), got {len(targets)}")
        return concepts, anchors

    # ----------------------------------------------------------------------------------------------- texts
    def uce_preserve(self) -> list[str]:
        """Texts preserved by the UCE stage."""
        return [*self.uce.preserve, *self.extra_preserve]

    def rece_preserve(self) -> list[str]:
        """Texts preserved by each RECE stage (default: one anchor per concept, as the official ``train.py``)."""
        base = self.anchors if self.rece.preserve is None else self.rece.preserve
        return [*base, *self.extra_preserve]

    @staticmethod
    def uce_anchor(text: str) -> str:
        """The official ``train_uce.py`` replaces an empty anchor by ``" "``."""
        return " " if text == "" else text

    def texts(self) -> list[str]:
        """Every text the recipe encodes, so that one batched text-encoder pass serves all stages."""
        texts = [*self.concepts, *self.anchors, *map(self.uce_anchor, self.anchors)]
        texts += [*self.uce_preserve(), *self.rece_preserve(), *(self.rece.derivation_target or [])]
        return texts + (self.robust.texts() if self.robust is not None else [])

    def _stack(self, texts: list[str], space: str = MAIN_SPACE) -> Tensor | None:
        return torch.cat([self.text.space(space).full(t) for t in texts]) if texts else None

    # ---------------------------------------------------------------------------------------------- stages
    def uce_step(self) -> None:
        """The first edit: concept → anchor with the official token alignment (UCE ``edit_model``), or with each
        text's last word token (``uce.tokens: last``, the official UCE scripts); in every input space."""
        cfg = self.uce
        if cfg.weights is not None:
            self.editor.reset()  # the base already holds the given K/V weights
            return
        preserve = self.uce_preserve()
        # the official UCE scripts (tokens: last) take an empty anchor as it is; train_uce.py replaces it by " "
        # (the same tokens for CLIP and T5, not for Llama)
        anchors = self.anchors if cfg.tokens == "last" else map(self.uce_anchor, self.anchors)
        pairs = list(zip(self.concepts, anchors, strict=True))
        for space in self.editor.spaces:
            text = self.text.space(space)
            if cfg.tokens == "last":  # official UCE scripts: one row per text, its last word token
                blocks = [(text.last(c), text.last(a)) for c, a in pairs]
                rows = torch.cat([text.last(t) for t in preserve]) if preserve else None
            else:
                blocks = [text.aligned(c, a) for c, a in pairs]
                rows = self._stack(preserve, space)
            self.editor.erase(blocks, rows, space=space, lamb=cfg.lamb, erase_scale=cfg.erase_scale,
                              preserve_scale=cfg.scale_of_preserve(len(preserve)))

    def derive(self, space: str = MAIN_SPACE) -> list[Tensor]:
        """Every concept's embedding in input space ``space`` that still regenerates it against the current edit
        (RECE eq. 8; each space's part of the joint derivation, :mod:`rece_lightning.maths.spaces`)."""
        cfg = self.rece
        text = self.text.space(space)
        targets = cfg.derivation_target or self.anchors
        return self.editor.derive(
            [text.full(concept) for concept in self.concepts],
            space=space,
            gamma=cfg.gamma,
            variant=cfg.derivation,
            targets=[text.full(t) for t in targets] if cfg.derivation == "standard" else None,
            surrogate_item=cfg.surrogate_item,
        )

    def rece_step(self) -> list[Tensor]:
        """One RECE iteration (official ``train.py`` epoch): derive every concept's adversarial embedding, then
        erase all of them (all token rows) towards the anchors, in every input space. Returns the derived token
        embeddings."""
        cfg = self.rece
        derived = {space: self.derive(space) for space in self.editor.spaces}  # all against the same edit
        for space, embeddings in derived.items():
            text = self.text.space(space)
            blocks = [(emb, text.full(anchor)) for emb, anchor in zip(embeddings, self.anchors, strict=True)]
            self.editor.erase(blocks, self._stack(self.rece_preserve(), space), space=space, lamb=cfg.lamb,
                              erase_scale=cfg.erase_scale, preserve_scale=cfg.preserve_scale)
        return derived[MAIN_SPACE]

    def run(self, stage: str, apply: bool = True) -> None:
        """Run ``stage`` on top of the stages before it; fold the edit into the model if ``apply``."""
        if stage not in self.stages:
            raise RECEError(f"unknown stage {stage!r}; the recipe's stages are {self.stages}")
        expected = self.stages[self.stages.index(stage) - 1] if stage != self.stages[0] else ORIGINAL
        if self.stage != expected:
            raise RECEError(f"stage {stage!r} runs after {expected!r}, but the recipe is at {self.stage!r}")
        self.text.encode(self.texts())  # one batch; cached after the first stage
        if self.robust is not None:
            self.robust.run_stage(stage)
        elif stage == "uce":
            self.uce_step()
        else:
            self.rece_step()
        self.stage = stage
        if apply:
            self.editor.apply()

    def erase(self) -> SpacedEditor:
        """Run every remaining stage and fold the result into the model once; returns the editor."""
        start = 0 if self.stage == ORIGINAL else self.stages.index(self.stage) + 1
        for stage in self.stages[start:]:
            self.run(stage, apply=False)
        self.editor.apply()
        return self.editor

    def restore(self, stage: str, state: EditState) -> None:
        """Go back (or forward) to a saved ``stage`` and its edit state, folded into the model."""
        if stage != ORIGINAL and stage not in self.stages:
            raise RECEError(f"unknown stage {stage!r}; the recipe's stages are {self.stages}")
        self.editor.restore_snapshot(state)
        self.stage = stage
        self.editor.apply()


def erase(pipeline: Any, concepts: Sequence[str], anchor: str | Sequence[str] = " ", **settings: Any) -> Recipe:
    """Erase ``concepts`` from ``pipeline`` with the whole recipe (UCE + RECE iterations), folded into its weights.

    ``settings`` are :class:`Recipe`'s other arguments (``uce``, ``rece``, ``with_to_k``, …); the defaults are the
    official RECE settings. Returns the recipe: ``recipe.editor`` exports (:func:`~rece_lightning.artefacts.export.export_edit`)
    or undoes (``restore_original()``) the edit.
    """
    recipe = Recipe(pipeline, concepts, anchor, **settings)
    recipe.erase()
    return recipe
