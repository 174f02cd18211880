"""The robust recipe's selection split (``robust.selection_split``, issue 21): the stopping rule chooses the stage on
half of the validation prompts, and the final metrics are reported on the other half. The rule is
:class:`rece_lightning.recipes.selection.SelectionRule`, its settings :class:`rece_lightning.recipes.robust.config.RobustConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["SelectionSplit"]


class SelectionSplit:
    """The robust stopping rule's own prompts (``robust.selection_split``): half of the validation rows.

    Within each ``kind`` of the validation prompts (explicit, paraphrase, implicit, neighbour, unrelated; files
    without kinds are one group), the rows sorted by prompt (then by row) alternate between the *selection* split
    (0th, 2nd, …), on which the stopping rule chooses the stage, and the *report* split (1st, 3rd, …), on which the
    final metrics are reported: disjoint rows (prompt and seed). Sorting by prompt puts the rows of a repeated prompt
    side by side, so every prompt that appears more than once (an implicit cue with one phrasing: "the sun" × 24)
    is in both splits with different seeds, whatever the file's order. (In file order, a kind whose rows alternate
    between two cues, as the circle's "the sun" / "a gold ring" do, would put each cue in one split only, and the
    rule would choose the stage without ever seeing the cue it is judged on.)
    After each stage every metric callback's records are summarised on each split and logged as ``select/<key>`` and
    ``report/<key>`` (``<key>`` as the callback logs it, e.g. ``concept_rate/implicit``); the rule reads
    ``select/<key>`` of ``concept_metric`` (over all kinds of target prompts) and ``preservation_metric``. Both
    splits' rows and every stage's summaries are written to ``<log_dir>/robust/selection.json``.

    Args:
        margin_images: the rule's margin in images of the selection split (see :class:`rece_lightning.recipes.selection.SelectionRule`).
    """

    def __init__(self, margin_images: int = 1) -> None:
        self.margin_images = margin_images
        self.select: set[int] | None = None
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.stages: list[dict[str, Any]] = []

    @staticmethod
    def split(records: Sequence[Mapping[str, Any]]) -> tuple[set[int], set[int]]:
        """``(selection rows, report rows)`` of one stage's records (see the class docstring)."""
        groups: dict[str, list[int]] = {}
        for record in sorted(records, key=lambda r: (str(r.get("prompt") or ""), int(r["row"]))):
            groups.setdefault(str(record.get("kind") or ""), []).append(int(record["row"]))
        select = {row for rows in groups.values() for row in rows[0::2]}
        report = {row for rows in groups.values() for row in rows[1::2]}
        return select, report

    def update(self, module, selection) -> dict[str, float]:
        """Summarise the stage's records on both splits, log them, write ``selection.json`` and return the
        ``select/…``/``report/…`` summary; the first call sets ``selection.rule``'s margins to ``margin_images``
        images of the selection half."""
        import dataclasses

        from rece_lightning.lightning.callbacks.metric import ImageMetric
        from rece_lightning.lightning.callbacks.run import run_dir
        from rece_lightning.recipes.robust.auto import write_json

        metrics = [cb for cb in module.trainer.callbacks
                   if isinstance(cb, ImageMetric) and getattr(cb, "last_stage", None) == module.stage]
        summary: dict[str, float] = {}
        for metric in metrics:
            records = metric.last_records
            if self.select is None:
                self.select, report = self.split(records)
                self.rows = {name: [{k: r.get(k) for k in ("row", "case_number", "kind", "prompt", "seed")}
                                    for r in records if int(r["row"]) in rows]
                             for name, rows in (("selection", self.select), ("report", report))}
                concept, kept = self.margins(metric, records)
                selection.rule = dataclasses.replace(selection.rule, margin=concept, guard_margin=kept)
            for name in ("select", "report"):
                part = [r for r in records if (int(r["row"]) in self.select) == (name == "select")]
                summary.update({f"{name}/{k}": float(v) for k, v in metric.summarize(part).items() if v is not None})
        for key, value in summary.items():
            module.log(key, value, on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)
        self.stages.append({"stage": module.stage, **summary})
        if module.trainer.is_global_zero:
            rule = selection.rule
            write_json({"rule": {"margin_images": self.margin_images, "margin": rule.margin,
                                 "guard_margin": rule.guard_margin, "metric": rule.metric, "guard": rule.guard,
                                 "max_drop": rule.max_drop, "target": rule.target},
                        "stages": self.stages, **self.rows}, run_dir(module.trainer) / "robust" / "selection.json")
        return summary

    def margins(self, metric, records: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
        """``margin_images`` images of the selection half's target rows and of its preserved rows, as rates."""
        chosen = [r for r in records if int(r["row"]) in (self.select or set())]
        targets = sum(metric.success(r) is not None for r in chosen) or len(chosen)
        kept = sum(r.get("preserved") is not None for r in chosen) or len(chosen)
        return self.margin_images / max(targets, 1), self.margin_images / max(kept, 1)
