"""A run's stages and their metrics, read back from what the evaluation callbacks wrote: ``eval/<stage>/*.json``;
and what a metric's name says about it (a rate shown in %, which way is better).

Every :class:`~rece_lightning.callbacks.metric.ImageMetric` writes one JSON per stage with its ``summary`` (the
numbers it logged). The trade-off figures, the HParams summary and the model card read those files, so they show the
same numbers as the audit trail, also for the stages of a run that was interrupted and resumed in place.
Lightning-free (the model card and export use it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RECIPE_KNOBS", "better_direction", "is_fraction", "kept_record", "kept_stage", "markdown_table",
           "recipe_knobs", "stage_metrics"]

_FRACTION = re.compile(r"(rate|preservation|accuracy|asr)$")
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
    """``{stage: {metric: value}}`` from ``<run>/eval/<stage>/*.json`` summaries (``rece fit``'s stages, not the
    ``test-…`` folders of ``rece test``), in the order of ``stages`` (stages without results are left out), else in
    the order the folders were written. Non-finite values (written as ``null``) are left out."""
    root = Path(run) / "eval"
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("test-")] if root.is_dir() else []
    if stages is not None:
        by_name = {p.name: p for p in folders}
        folders = [by_name[s] for s in stages if s in by_name]
    else:
        folders.sort(key=lambda p: min((f.stat().st_mtime for f in p.glob("*.json")), default=p.stat().st_mtime))
    out: dict[str, dict[str, float]] = {}
    for folder in folders:
        metrics: dict[str, float] = {}
        for path in sorted(folder.glob("*.json")):
            try:
                summary: Any = json.loads(path.read_text(encoding="utf-8")).get("summary") or {}
            except (OSError, ValueError, AttributeError):
                continue  # not an evaluation document
            for key, value in summary.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    metrics[str(key)] = float(value)
        if metrics:
            out[folder.name] = metrics
    return out


def kept_record(pl_module: Any) -> dict[str, Any]:
    """The kept-stage record of a module (``RECEModule.kept_stage()``, :mod:`rece_lightning.selection`: ``stage``,
    ``reason`` …), ``{}`` for other modules."""
    record = pl_module.kept_stage() if callable(getattr(pl_module, "kept_stage", None)) else None
    return dict(record) if isinstance(record, Mapping) else {}


def kept_stage(pl_module: Any) -> str | None:
    """The stage the run keeps (so far): the selection rule's choice, else the last edited stage; ``None`` before
    the first edit and for other modules."""
    stage = kept_record(pl_module).get("stage")
    return None if stage in (None, "original") else str(stage)


def is_fraction(metric: str) -> bool:
    """A rate in ``[0, 1]`` (shown in %): names ending in ``rate``, ``preservation``, ``accuracy`` or ``asr`` at
    any level (``val/concept_rate/implicit``, ``val/preservation``, ``test/no_attack/asr``)."""
    return any(_FRACTION.search(part) for part in metric.split("/"))


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
