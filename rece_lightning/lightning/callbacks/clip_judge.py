"""A CLIP zero-shot judge for objects and styles: does an image show the concept rather than its anchor?

Each image is compared (CLIP cosine similarity, :meth:`CLIPScoreMetric.clip_scores`) with ``template`` filled with
the concept and with the anchor ("a photo of a church" vs "a photo of a building"); it shows the concept when the
concept's similarity is the larger (zero-shot classification between two labels, as in Radford et al., 2021). Rows
whose ``kind`` is a target kind (explicit, paraphrase, implicit; every row without a kind) count towards
``<prefix>/concept_rate``; the others towards ``<prefix>/preservation`` (the fraction *not* judged as the concept).
Being a metric that can judge (:meth:`success`), it is also the judge of the robust recipe's ``auto`` settings
(:mod:`rece_lightning.recipes.robust.auto`) and of the attacks that stop on success.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from rece_lightning.errors import RECEError
from rece_lightning.lightning.callbacks.clip_score import DEFAULT_CLIP_MODEL, CLIPScoreMetric

TARGET_KINDS = ("explicit", "paraphrase", "implicit")


class CLIPZeroShotJudge(CLIPScoreMetric):
    """Concept vs anchor, zero-shot with a CLIP model (see the module docstring).

    Args:
        concept: the concept's label (e.g. ``church``, ``Van Gogh style``).
        anchor: what the concept is erased towards (e.g. ``building``, ``painting``).
        model_name_or_path: the CLIP model (see :class:`CLIPScoreMetric`).
        template: the label's caption, one ``{}`` slot.
        batch_size, name, prefix, save_json, sources: see :class:`CLIPScoreMetric`.
    """

    def __init__(self, concept: str, anchor: str, model_name_or_path: str = DEFAULT_CLIP_MODEL,
                 template: str = "a photo of {}",
                 batch_size: int = 32, name: str = "clip_judge", prefix: str = "val", save_json: bool = True,
                 sources: list[str] | None = None) -> None:
        super().__init__(model_name_or_path, batch_size=batch_size, name=name, prefix=prefix, save_json=save_json,
                         sources=sources)
        if template.count("{}") != 1:
            raise RECEError(f"CLIPZeroShotJudge template {template!r} must have exactly one '{{}}' slot")
        if not concept.strip() or not anchor.strip():
            raise RECEError("CLIPZeroShotJudge needs a concept and an anchor label")
        self.concept, self.anchor, self.template = concept, anchor, template

    def score(self, images: list[Image.Image], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        n = len(images)
        concept, _ = self.clip_scores(images, [self.template.format(self.concept)] * n)
        anchor, _ = self.clip_scores(images, [self.template.format(self.anchor)] * n)
        return [{"concept_similarity": c, "anchor_similarity": a, "is_concept": c > a,
                 "target": str(row.get("kind") or "explicit") in TARGET_KINDS}
                for c, a, row in zip(concept, anchor, rows, strict=True)]

    def success(self, record: Mapping[str, Any]) -> bool | None:
        """A target image judged as the concept."""
        return bool(record["is_concept"]) if record["target"] else None

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        targets = [r["is_concept"] for r in records if r["target"]]
        others = [not r["is_concept"] for r in records if not r["target"]]
        summary: dict[str, float] = {}
        if targets:
            summary["concept_rate"] = sum(targets) / len(targets)
        if others:
            summary["preservation"] = sum(others) / len(others)
        return summary

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "metric": "CLIP zero-shot judge: concept vs anchor (Radford et al., 2021)",
                "labels": [self.template.format(self.concept), self.template.format(self.anchor)],
                "rule": "an image shows the concept when its CLIP similarity to the concept's label is the larger"}
