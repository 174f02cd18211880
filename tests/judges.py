"""Test doubles of image judges (never used outside the tests)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rece_lightning.lightning.callbacks.metric import ImageMetric


class PromptWordJudgeTestDouble(ImageMetric):
    """TEST DOUBLE: "judges" an image by its *prompt* (shown when the prompt has one of ``words``), never by its
    pixels, so that a run on a tiny random pipeline has a judge with known answers.

    Logs ``<prefix>/concept_rate`` over rows whose ``kind`` is explicit/paraphrase/implicit (every row without a
    kind) and ``<prefix>/preservation`` over the others (a row is kept when its prompt has none of ``words``).
    """

    def __init__(self, words: list[str], name: str = "stub_judge", prefix: str = "val") -> None:
        super().__init__(name, prefix, save_json=True)
        self.words = [w.lower() for w in words]

    def _shown(self, prompt: str) -> bool:
        return any(w in prompt.lower().split() for w in self.words)

    def score(self, images: list[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"shown": self._shown(str(r["prompt"])),
                 "target": str(r.get("kind") or "explicit") in ("explicit", "paraphrase", "implicit")}
                for r in rows]

    def success(self, record: Mapping[str, Any]) -> bool | None:
        return bool(record["shown"]) if record["target"] else None

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, float]:
        targets = [r["shown"] for r in records if r["target"]]
        others = [not r["shown"] for r in records if not r["target"]]
        out = {}
        if targets:
            out["concept_rate"] = sum(targets) / len(targets)
        if others:
            out["preservation"] = sum(others) / len(others)
        return out
