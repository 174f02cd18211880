"""Which stage a run keeps: one rule for the module's keep-best, the robust recipe's stopping rule and the reports.

A :class:`SelectionRule` reads the metrics logged after each validated stage of ``rece fit``:

* the candidates are the edited stages (the original model is the baseline, never kept);
* the kept candidate has the best value of ``metric`` (the lowest for ``mode="min"``), the earlier stage on ties;
* ``guard`` (optional) is a metric that must stay within ``max_drop`` of the first validated stage's value (the
  reference: the original model's when it is validated); a stage that falls further ends the run and is not kept;
* ``target`` (optional): the run ends once ``metric`` reaches it (``≤`` for ``min``, ``≥`` for ``max``).

``model.keep_best`` alone is a rule with a metric and a mode; ``recipe: robust`` adds its guard (preservation) and
its target (concept rate): the robust recipe's stopping rule
(:meth:`rece_lightning.recipes.robust.config.RobustConfig.selection_rule`).
:class:`Selection` applies a rule over one run and records which stage it keeps and why; the run writes that record
to ``<run>/kept_stage.json`` (:func:`write_kept_stage`), which the export metadata and ``rece report`` read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rece_lightning.files import atomic_path

__all__ = ["KEPT_STAGE", "Selection", "SelectionRule", "read_kept_stage", "write_kept_stage"]

KEPT_STAGE = "kept_stage.json"
"""The file in a run folder that names the kept stage, the rule that chose it and why."""


@dataclass(frozen=True)
class SelectionRule:
    """How a run chooses its kept stage (see the module docstring).

    Attributes:
        metric: the logged metric that ranks the candidates (e.g. ``val/concept_rate``).
        mode: ``min`` (lower is better) or ``max``.
        target: end the run once ``metric`` reaches this value (``None``: never).
        guard: a logged metric that must not fall more than ``max_drop`` below its reference (``None``: no guard).
        max_drop: the tolerated fall of ``guard``.
        margin, guard_margin: a later stage is better only by more than ``margin``, and the guard fails only below
            its tolerance by more than ``guard_margin`` (0: exact comparisons; the robust recipe's selection split
            sets each to one image of its half, so that a single image cannot flip the choice).
    """

    metric: str
    mode: Literal["min", "max"] = "min"
    target: float | None = None
    guard: str | None = None
    max_drop: float = 0.0
    margin: float = 0.0
    guard_margin: float = 0.0

    def better(self, value: float, than: float) -> bool:
        """``value`` is strictly better than ``than`` by more than ``margin`` (so ties keep the earlier stage)."""
        slack = self.margin + (1e-9 if self.margin else 0.0)
        return value < than - slack if self.mode == "min" else value > than + slack

    def reached(self, value: float) -> bool:
        """``value`` reaches the target."""
        if self.target is None:
            return False
        return value <= self.target if self.mode == "min" else value >= self.target

    def describe(self) -> str:
        """The rule in words, e.g. ``lowest val/concept_rate (earlier on ties), val/preservation within 0.01``."""
        words = f"{'lowest' if self.mode == 'min' else 'highest'} {self.metric} (earlier on ties)"
        if self.guard is not None:
            words += f", {self.guard} within {self.max_drop:g} of the first validated stage"
        if self.target is not None:
            words += f", stop at {self.metric} {'≤' if self.mode == 'min' else '≥'} {self.target:g}"
        return words


@dataclass
class Selection:
    """A :class:`SelectionRule` applied to one run's stages, in order.

    Attributes:
        rule: the rule.
        reference: the guard's reference value (the first validated stage's).
        kept, score: the kept stage and its ``metric`` value (``None`` before any candidate).
        stopped: why the rule ended the run early (``None`` when it did not).
        history: one entry per validated stage: its name, the rule's metric and guard values.
    """

    rule: SelectionRule
    reference: float | None = None
    kept: str | None = None
    score: float | None = None
    stopped: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, stage: str, metrics: Mapping[str, Any], candidate: bool = True) -> bool:
        """Record ``stage``'s logged ``metrics``; returns whether the run stops after it. ``candidate=False`` (the
        original model) only sets the guard's reference."""
        rule = self.rule
        value = _number(metrics.get(rule.metric))
        guarded = _number(metrics.get(rule.guard)) if rule.guard is not None else None
        entry: dict[str, Any] = {"stage": stage, rule.metric: value}
        if rule.guard is not None:
            entry[rule.guard] = guarded
        self.history.append(entry)
        if guarded is not None:
            if self.reference is None:
                self.reference = guarded
            elif guarded < self.reference - rule.max_drop - rule.guard_margin - (1e-9 if rule.guard_margin else 0.0):
                self.stopped = (f"{rule.guard} fell to {guarded:.4g} at {stage}, more than {rule.max_drop:g} below "
                                f"{self.reference:.4g}: {stage} is not kept and the run stopped")
                return True
        if not candidate or value is None:
            return False
        if self.score is None or rule.better(value, self.score):
            self.kept, self.score = stage, value
        if rule.reached(value):
            self.stopped = f"{rule.metric} reached the target {rule.target:g} at {stage}: the run stopped"
            return True
        return False

    def reason(self) -> str:
        """Why the kept stage was kept, in one sentence."""
        if self.kept is None:
            return f"no edited stage logged {self.rule.metric}: the last stage run is kept"
        candidates = [e["stage"] for e in self.history if e["stage"] != "original"]
        why = f"{self.rule.describe()}: {self.rule.metric} = {self.score:.4g} among {', '.join(candidates)}"
        return f"{why}; {self.stopped}" if self.stopped else why

    def state_dict(self) -> dict[str, Any]:
        """The selection's state (plain values: saved in checkpoints, so a resumed run continues it)."""
        return {"reference": self.reference, "kept": self.kept, "score": self.score, "stopped": self.stopped,
                "history": [dict(e) for e in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.reference, self.kept, self.score = state.get("reference"), state.get("kept"), state.get("score")
        self.stopped, self.history = state.get("stopped"), [dict(e) for e in state.get("history", [])]

    def record(self, stages: Sequence[str]) -> dict[str, Any]:
        """What :func:`write_kept_stage` writes: the kept stage, its score, the rule, the reason and the history."""
        return {"stage": self.kept, "score": self.score, "rule": asdict(self.rule), "reason": self.reason(),
                "stopped": self.stopped, "stages": list(stages), "history": self.history}


def _number(value: Any) -> float | None:
    """A logged value (tensor or number) as a float; ``None`` (or NaN) when it was not logged."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def write_kept_stage(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``folder/kept_stage.json`` (atomically); returns the path."""
    path = Path(folder) / KEPT_STAGE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dict(record), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_kept_stage(folder: str | Path) -> dict[str, Any] | None:
    """The ``kept_stage.json`` record of a run folder, or ``None`` when the run wrote none."""
    path = Path(folder) / KEPT_STAGE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
