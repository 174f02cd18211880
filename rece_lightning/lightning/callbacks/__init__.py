"""Callbacks of rece-lightning (their composable configs live in the top-level ``callbacks/`` folder).

Each callback is imported when it is first named (module ``__getattr__``, PEP 562), so a run imports only the
callbacks its config uses; ``class_path: rece_lightning.lightning.callbacks.NudeNetMetric`` resolves as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "AttackReport": "attack_report",
    "CLIPScoreMetric": "clip_score",
    "CLIPZeroShotJudge": "clip_judge",
    "ClassifierAccuracy": "classifier",
    "ExportEdit": "export",
    "FrechetDistance": "fid",
    "HParamsSummary": "hparams",
    "ImageGridLogger": "image_grid",
    "ImageMetric": "metric",
    "NudeNetMetric": "nudenet",
    "StageReport": "report",
    "TradeoffLayout": "tradeoff",
}

__all__ = [
    "AttackReport",
    "CLIPScoreMetric",
    "CLIPZeroShotJudge",
    "ClassifierAccuracy",
    "ExportEdit",
    "FrechetDistance",
    "HParamsSummary",
    "ImageGridLogger",
    "ImageMetric",
    "NudeNetMetric",
    "StageReport",
    "TradeoffLayout",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:
    from rece_lightning.lightning.callbacks.attack_report import AttackReport
    from rece_lightning.lightning.callbacks.classifier import ClassifierAccuracy
    from rece_lightning.lightning.callbacks.clip_judge import CLIPZeroShotJudge
    from rece_lightning.lightning.callbacks.clip_score import CLIPScoreMetric
    from rece_lightning.lightning.callbacks.export import ExportEdit
    from rece_lightning.lightning.callbacks.fid import FrechetDistance
    from rece_lightning.lightning.callbacks.hparams import HParamsSummary
    from rece_lightning.lightning.callbacks.image_grid import ImageGridLogger
    from rece_lightning.lightning.callbacks.metric import ImageMetric
    from rece_lightning.lightning.callbacks.nudenet import NudeNetMetric
    from rece_lightning.lightning.callbacks.report import StageReport
    from rece_lightning.lightning.callbacks.tradeoff import TradeoffLayout
