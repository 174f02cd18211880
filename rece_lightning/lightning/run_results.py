"""A run's stages and their metrics, read back from what the evaluation callbacks wrote: ``eval/<stage>/*.json``;
and what a metric's name says about it (a rate shown in %, which way is better).

Every :class:`~rece_lightning.lightning.callbacks.metric.ImageMetric` writes one JSON per stage with its ``summary`` (the
numbers it logged). The trade-off figures, the HParams summary and the model card read those files, so they show the
same numbers as the audit trail, also for the stages of a run that was interrupted and resumed in place.
Lightning-free (the model card and export use it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rece_lightning.errors import RECEError

__all__ = ["RECIPE_KNOBS", "better_direction", "is_fraction", "kept_record", "kept_stage", "markdown_table",
           "recipe_knobs", "stage_metrics"]

_LOWER_IS_BETTER = re.compile(r"(^|_)(rate|asr|fd|fid|distance|images)($|_)")


RECIPE_KNOBS: tuple[str, ...] = ("concepts", "anchor", "uce", "rece", "technique", "with_to_k", "preserve_csv", "recipe",
                                 "keep_best", "keep_best_mode", "generation.num_inference_steps",
                                 "generation.guidance_scale", "pretrained")
"""The module hyper-parameters that shape a run's result (``robust`` too under ``recipe: robust``), as listed in the
model card and the HParams tab; dotted names pick one field of a section."""


def recipe_knobs(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`RECIPE_KNOBS` of ``hparams`` (``RECEModule.hparams``), sections flattened to ``section.field``."""
    names = [*RECIPE_KNOBS, *(["robust"] if hparams.get("recipe") == "robust" else [])]
    out: dict[str, Any] = {}
    for name in names:
        section, _, field = name.partition(".")
        value = hparams.get(section)
        if field:
            if isinstance(value, Mapping) and field in value:
                out[name] = value[field]
        elif isinstance(value, Mapping):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        elif section in hparams:
            out[name] = value
    return out


def stage_metrics(run: str | Path, stages: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``{stage: {metric: value}}`` of ``rece fit``'s stages (not the ``test-…`` folders of ``rece test``) as
    ``rece report`` reads them (:func:`rece_lightning.lightning.report.run_metrics`), in the order of ``stages`` (stages
    without results are left out); finite values only; ``{}`` while nothing can be read."""
    from rece_lightning.lightning.report import run_metrics

    try:
        metrics = run_metrics(run)
    except RECEError:
        return {}
    order = list(stages) if stages is not None else list(metrics)
    return {stage: {k: v for k, v in metrics[stage].items() if math.isfinite(v)}
            for stage in order if stage in metrics and not stage.startswith("test-")}


def kept_record(pl_module: Any) -> dict[str, Any]:
    """The kept-stage record of a module (``RECEModule.kept_stage()``, :mod:`rece_lightning.recipes.selection`: ``stage``,
    ``reason`` …), ``{}`` for other modules."""
    record = pl_module.kept_stage() if callable(getattr(pl_module, "kept_stage", None)) else None
    return dict(record) if isinstance(record, Mapping) else {}


def kept_stage(pl_module: Any) -> str | None:
    """The stage the run keeps (so far): the selection rule's choice, else the last edited stage; ``None`` before
    the first edit and for other modules."""
    stage = kept_record(pl_module).get("stage")
    return None if stage in (None, "original") else str(stage)


def is_fraction(metric: str) -> bool:
    """A rate in ``[0, 1]`` (shown in %), named as ``rece report`` names rates (:data:`rece_lightning.lightning.report.RATE_WORDS`:
    ``val/concept_rate/implicit``, ``val/preservation``, ``test/no_attack/asr``)."""
    from rece_lightning.lightning.report import RATE_WORDS

    return any(word in metric for word in RATE_WORDS)


def better_direction(metric: str) -> str:
    """``"lower"`` for erasure rates, attack success, counts of detected images and distances (FD/FID), else
    ``"higher"`` (preservation, accuracy, CLIP score)."""
    return "lower" if any(_LOWER_IS_BETTER.search(part) for part in metric.split("/")) else "higher"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (as TensorBoard's text tab and model cards render it); ``|`` in cells is
    escaped and line breaks become spaces."""

    def cell(value: Any) -> str:
        return " ".join(str(value).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
